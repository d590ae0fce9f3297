"""Check the real-component fixtures against opentracker and aria2c alone, without the aggregator."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable

import pytest

from tests.realworld import (
    LOOPBACK,
    Aria2,
    OpenTracker,
    decode_compact_peers,
    make_torrent,
    random_peer_id,
    sha256_of_file,
)

pytestmark = pytest.mark.realworld

PAYLOAD_BYTES = 8 * 1024 * 1024
DOWNLOAD_TIMEOUT_S = 90.0
TEST_PEER_PORT = 40001


def test_announce_returns_interval_and_own_peer(opentracker: OpenTracker) -> None:
    infohash = os.urandom(20)
    opentracker.allow(infohash)

    reply = opentracker.announce(infohash, peer_id=random_peer_id(), port=TEST_PEER_PORT, left=1000)

    assert b"failure reason" not in reply, reply
    assert isinstance(reply[b"interval"], int), reply
    assert reply[b"interval"] > 0, reply
    # opentracker lists the requesting peer too. The probe peer of allow() has left
    # with event=stopped, so ours is the only one.
    assert decode_compact_peers(reply[b"peers"]) == [(LOOPBACK, TEST_PEER_PORT)]


def test_announce_for_unlisted_hash_rejected(opentracker: OpenTracker) -> None:
    reply = opentracker.announce(os.urandom(20), peer_id=random_peer_id(), port=TEST_PEER_PORT, left=1000)

    assert b"failure reason" in reply, reply


def test_download_through_opentracker(
    opentracker: OpenTracker,
    aria2: Aria2,
    tmp_path: Path,
    record_property: Callable[[str, Any], None],
) -> None:
    torrent = make_torrent(tmp_path, PAYLOAD_BYTES, opentracker.announce_url)
    opentracker.allow(torrent.infohash)
    seeder = aria2.start_seeder(torrent)
    opentracker.wait_for_seeders(torrent.infohash, watched=[seeder])

    leecher_torrent = torrent.with_announce(opentracker.announce_url)
    result = aria2.run_leecher(
        torrent,
        leecher_torrent,
        timeout_s=DOWNLOAD_TIMEOUT_S,
        watched=[seeder, opentracker.process],
    )

    assert sha256_of_file(result.downloaded_path) == torrent.content_sha256, result.process.describe()
    record_property("download_seconds", round(result.elapsed_s, 3))
    print(f"\n8 MiB download through opentracker took {result.elapsed_s:.2f} s")
