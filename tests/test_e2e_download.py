"""End-to-end tests of the aggregator between real aria2c clients and a real opentracker.

The seeder announces only to opentracker, and the leecher's torrent names only the
aggregator, so the leecher can find the seeder only through the peers that the
aggregator harvests from opentracker.
"""

from __future__ import annotations

import concurrent.futures
import os
import time
from pathlib import Path
from typing import Any, Callable

import pytest

from tests.realworld import (
    LOOPBACK,
    Aria2,
    OpenTracker,
    RunningService,
    decode_compact_peers,
    http_announce,
    make_torrent,
    random_peer_id,
    sha256_of_file,
    start_aggregator,
    wait_until,
)

pytestmark = pytest.mark.realworld

PAYLOAD_BYTES = 8 * 1024 * 1024
DOWNLOAD_TIMEOUT_S = 90.0
CLIENT_COUNT = 20
CONCURRENT_CLIENT_COUNT = 10
FIRST_CLIENT_PORT = 41001
OBSERVER_PORT = 42001
UPSTREAM_ANNOUNCE_TIMEOUT_S = 10.0
QUIET_WINDOW_S = 2.0


def aggregator_config(opentracker: OpenTracker, transport: str = "http") -> dict[str, Any]:
    uri = opentracker.udp_announce_url if transport == "udp" else opentracker.announce_url
    return {
        "listen": f"{LOOPBACK}:0",
        "forwarders": [{"uri": uri, "name": "opentracker"}],
        "first_announce_wait_ms": 3000,
    }


@pytest.mark.parametrize("transport", ["http", "udp"])
def test_download_through_aggregator(
    opentracker: OpenTracker,
    aria2: Aria2,
    tmp_path: Path,
    record_property: Callable[[str, Any], None],
    transport: str,
) -> None:
    torrent = make_torrent(tmp_path, PAYLOAD_BYTES, opentracker.announce_url)
    opentracker.allow(torrent.infohash)
    seeder = aria2.start_seeder(torrent)
    opentracker.wait_for_seeders(torrent.infohash, watched=[seeder])

    with start_aggregator(tmp_path, aggregator_config(opentracker, transport)) as service:
        leecher_torrent = torrent.with_announce(service.announce_url)
        # No --bt-tracker-interval: the leecher re-announces only at the interval the
        # aggregator returns, so the seeder must be in the aggregator's first reply.
        # first_announce_wait_ms lets the aggregator hold that reply until opentracker replies.
        result = aria2.run_leecher(
            torrent,
            leecher_torrent,
            timeout_s=DOWNLOAD_TIMEOUT_S,
            watched=[service, seeder, opentracker.process],
        )

        assert sha256_of_file(result.downloaded_path) == torrent.content_sha256, result.process.describe()

    record_property("download_seconds", round(result.elapsed_s, 3))
    print(f"\n8 MiB download through the aggregator ({transport} forwarder) took {result.elapsed_s:.2f} s")


def announce_client(service: RunningService, infohash: bytes, port: int) -> dict[bytes, Any]:
    return http_announce(
        service.announce_url,
        infohash,
        peer_id=random_peer_id(),
        port=port,
        left=PAYLOAD_BYTES,
        event="started",
    )


def test_aggregator_announces_once_per_interval(opentracker: OpenTracker, tmp_path: Path) -> None:
    """Twenty local clients of one infohash make the aggregator announce to opentracker once, not twenty times.

    Two views of opentracker prove the count. Its /stats page counts every HTTP
    announce it handles, for any infohash and whatever the outcome. Nothing but the
    aggregator talks to opentracker between two readings of that counter, so their
    difference is the number of upstream announces. opentracker also keys peers by
    IP address and port, and the aggregator announces with the port of its most
    recent client. Twenty upstream announces would therefore leave up to twenty
    peers of 127.0.0.1 in the swarm, where one announce leaves one.
    """
    # The leading bytes need percent-encoding on both hops. A 0x20 byte sent as "+"
    # would reach opentracker as a different infohash.
    infohash = b" +&=%/?#" + os.urandom(12)
    opentracker.allow(infohash)
    client_ports = [FIRST_CLIENT_PORT + index for index in range(CLIENT_COUNT)]

    with start_aggregator(tmp_path, aggregator_config(opentracker)) as service:
        announces_before = opentracker.announce_count()

        # The first clients arrive together, while the first upstream announce is
        # still pending. The rest arrive one after another.
        concurrent_ports = client_ports[:CONCURRENT_CLIENT_COUNT]
        with concurrent.futures.ThreadPoolExecutor(max_workers=CONCURRENT_CLIENT_COUNT) as pool:
            replies = list(pool.map(lambda port: announce_client(service, infohash, port), concurrent_ports))
        for port in client_ports[CONCURRENT_CLIENT_COUNT:]:
            replies.append(announce_client(service, infohash, port))

        for port, reply in zip(client_ports, replies, strict=True):
            assert b"failure reason" not in reply, f"client on port {port} got {reply!r}\n{service.describe()}"
            assert b"interval" in reply, f"client on port {port} got {reply!r}\n{service.describe()}"

        # The aggregator may announce upstream in the background, so wait for the first one.
        wait_until(
            lambda: opentracker.announce_count() > announces_before,
            UPSTREAM_ANNOUNCE_TIMEOUT_S,
            "the aggregator's announce to opentracker",
            watched=[service],
        )
        # Nothing signals that no further announce is coming, so watch the counter
        # for a fixed window. The window length is an estimate: an upstream announce
        # over the loopback interface takes milliseconds.
        quiet_until = time.monotonic() + QUIET_WINDOW_S
        upstream_announces = opentracker.announce_count() - announces_before
        while time.monotonic() < quiet_until and upstream_announces == 1:
            time.sleep(0.1)
            upstream_announces = opentracker.announce_count() - announces_before

        assert upstream_announces == 1, (
            f"opentracker received {upstream_announces} announces from the aggregator "
            f"for {CLIENT_COUNT} clients, expected 1\n{service.describe()}"
        )

        swarm = opentracker.scrape(infohash)
        swarm_size = swarm.get(b"complete", 0) + swarm.get(b"incomplete", 0)
        assert swarm_size == 1, f"opentracker lists {swarm_size} peers for the infohash, expected 1: {swarm!r}"

        # opentracker returns the aggregator to a fresh peer as 127.0.0.1 with the port of one of its clients.
        observer_reply = opentracker.announce(infohash, peer_id=random_peer_id(), port=OBSERVER_PORT, left=1)
        assert b"failure reason" not in observer_reply, observer_reply
        others = [peer for peer in decode_compact_peers(observer_reply[b"peers"]) if peer[1] != OBSERVER_PORT]
        assert len(others) == 1, f"opentracker lists {others} besides the observer, expected the aggregator alone"
        aggregator_address, aggregator_port = others[0]
        assert aggregator_address == LOOPBACK
        assert aggregator_port in client_ports, (
            f"the aggregator announced port {aggregator_port}, expected the port of one of its clients"
        )
