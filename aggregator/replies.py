"""Bencoded tracker replies for HTTP clients (BEP 3, BEP 23 compact, BEP 7 peers6, BEP 48 scrape)."""

from collections.abc import Mapping
from typing import Any

from aggregator import bencoding
from aggregator.endpoints import IPV4_ENDPOINT_BYTES, IPV6_ENDPOINT_BYTES, endpoint_ip_text, endpoint_port, split_compact
from aggregator.tracker import AnnounceResult, ScrapeCounts


def encode_announce_reply(
    result: AnnounceResult, compact: bool, no_peer_id: bool, tracker_id: bytes | None
) -> bytes:
    """Encode an announce reply: compact `peers`/`peers6` strings, or BEP 3 peer dictionaries."""
    if not compact:
        return _encode_peer_dicts(result, no_peer_id, tracker_id)

    # Written directly rather than through the bencoder: this runs once per announce, and the
    # keys are fixed and already in the sorted order bencode requires.
    reply = b"d8:completei%de10:incompletei%de8:intervali%de12:min intervali%de5:peers%d:%s" % (
        result.complete,
        result.incomplete,
        result.interval,
        result.min_interval,
        len(result.peers4),
        result.peers4,
    )
    if result.peers6:
        reply += b"6:peers6%d:%s" % (len(result.peers6), result.peers6)
    if tracker_id is not None:
        reply += b"10:tracker id%d:%s" % (len(tracker_id), tracker_id)

    return reply + b"e"


def _encode_peer_dicts(result: AnnounceResult, no_peer_id: bool, tracker_id: bytes | None) -> bytes:
    reply: dict[bytes, Any] = {
        b"interval": result.interval,
        b"min interval": result.min_interval,
        b"complete": result.complete,
        b"incomplete": result.incomplete,
    }
    if tracker_id is not None:
        reply[b"tracker id"] = tracker_id

    peers: list[dict[bytes, Any]] = []
    endpoints = split_compact(result.peers4, IPV4_ENDPOINT_BYTES) + split_compact(result.peers6, IPV6_ENDPOINT_BYTES)
    for endpoint in endpoints:
        entry = _peer_dict(endpoint)
        # Upstream trackers reply in compact form, so their peers have no peer id to give.
        peer_id = result.swarm.peer_id_of(endpoint) if result.swarm is not None and not no_peer_id else None
        if peer_id is not None:
            entry[b"peer id"] = peer_id
        peers.append(entry)
    reply[b"peers"] = peers

    return bencoding.encode(reply)


def encode_scrape_reply(files: Mapping[bytes, ScrapeCounts]) -> bytes:
    """Encode a BEP 48 scrape reply: `files` maps each raw 20-byte infohash to its three counts.

    The keys stay raw bytes. Decoding them as text and encoding the text as UTF-8 would turn
    every byte of 0x80 and above into two bytes, and clients would no longer find their hash.
    """
    entries = {
        info_hash: {b"complete": counts.complete, b"downloaded": counts.downloaded, b"incomplete": counts.incomplete}
        for info_hash, counts in files.items()
    }

    return bencoding.encode({b"files": entries})


def encode_failure(reason: str, interval: int, retry_in_min: int | None = None) -> bytes:
    """Encode a `failure reason` reply; `interval` is for clients that retry on a failure.

    `retry_in_min` adds BEP 31 `retry in`; libtorrent ignores it, hence the interval as well.
    """
    reply: dict[bytes, Any] = {b"failure reason": reason, b"interval": interval}
    if retry_in_min is not None:
        reply[b"retry in"] = retry_in_min

    return bencoding.encode(reply)


def _peer_dict(endpoint: bytes) -> dict[bytes, Any]:
    return {b"ip": endpoint_ip_text(endpoint), b"port": endpoint_port(endpoint)}
