"""Tests for parsing upstream announce replies (aggregator.upstream_reply)."""

import bencode2
import pytest
from hypothesis import given
from hypothesis import strategies as st

from aggregator.endpoints import make_endpoint, pack_ip
from aggregator.upstream_reply import (
    DEFAULT_INTERVAL_S,
    MIN_INTERVAL_FLOOR_S,
    FailureKind,
    UpstreamFailure,
    UpstreamReply,
    parse_announce_reply,
)

V4_A = make_endpoint(pack_ip("192.0.2.1"), 6881)
V4_B = make_endpoint(pack_ip("198.51.100.7"), 51413)
V6_A = make_endpoint(pack_ip("2001:db8::1"), 6882)
V6_B = make_endpoint(pack_ip("2001:db8::2"), 1)


def parse_failure(body: bytes) -> UpstreamFailure:
    with pytest.raises(UpstreamFailure) as caught:
        parse_announce_reply(body)

    return caught.value


# Peers


def test_reply_compact_peers() -> None:
    body = bencode2.bencode({b"interval": 900, b"peers": V4_A + V4_B, b"complete": 5, b"incomplete": 7})

    reply = parse_announce_reply(body)

    assert reply.endpoints == [V4_A, V4_B]
    assert reply.interval_s == 900
    assert reply.complete == 5
    assert reply.incomplete == 7


def test_reply_dict_peers() -> None:
    peers = [
        {b"ip": b"192.0.2.1", b"port": 6881, b"peer id": b"x" * 20},
        {b"ip": b"tracker.example.org", b"port": 6881},
        {b"ip": b"198.51.100.7", b"port": 0},
        {b"ip": b"2001:db8::1", b"port": 6882},
        {b"ip": b"198.51.100.7", b"port": 51413},
    ]
    body = bencode2.bencode({b"interval": 900, b"peers": peers})

    reply = parse_announce_reply(body)

    assert reply.endpoints == [V4_A, V6_A, V4_B]


def test_reply_dict_peers_malformed() -> None:
    peers = [
        b"not a dict",
        {b"port": 6881},
        {b"ip": b"192.0.2.1"},
        {b"ip": b"192.0.2.1", b"port": b"6881"},
        {b"ip": b"192.0.2.1", b"port": 70000},
        {b"ip": b"192.0.2.1", b"port": -1},
        {b"ip": b"\xff\xfe", b"port": 6881},
        {b"ip": b"::ffff:192.0.2.1", b"port": 6881},
    ]
    body = bencode2.bencode({b"interval": 900, b"peers": peers})

    reply = parse_announce_reply(body)

    # Only the v4-mapped entry is usable, and it becomes a plain IPv4 endpoint.
    assert reply.endpoints == [V4_A]


def test_reply_peers6() -> None:
    body = bencode2.bencode({b"interval": 900, b"peers": V4_A, b"peers6": V6_A + V6_B})

    reply = parse_announce_reply(body)

    assert reply.endpoints == [V4_A, V6_A, V6_B]


def test_reply_partial_entry_dropped() -> None:
    body = bencode2.bencode({b"interval": 900, b"peers": V4_A + V4_B[:4], b"peers6": V6_A + V6_B[:17]})

    reply = parse_announce_reply(body)

    assert reply.endpoints == [V4_A, V6_A]


def test_reply_port_zero_dropped() -> None:
    v4_port_zero = make_endpoint(pack_ip("192.0.2.99"), 0)
    v6_port_zero = make_endpoint(pack_ip("2001:db8::99"), 0)
    body = bencode2.bencode({b"interval": 900, b"peers": v4_port_zero + V4_A, b"peers6": V6_A + v6_port_zero})

    reply = parse_announce_reply(body)

    assert reply.endpoints == [V4_A, V6_A]


def test_reply_no_peers() -> None:
    reply = parse_announce_reply(bencode2.bencode({b"interval": 900}))

    assert reply.endpoints == []
    assert reply.complete == 0
    assert reply.incomplete == 0


# Failures


def test_reply_failure_reason() -> None:
    failure = parse_failure(bencode2.bencode({b"failure reason": b"unregistered torrent"}))

    assert failure.kind is FailureKind.TRACKER_FAILURE
    assert failure.detail == "unregistered torrent"
    assert "unregistered torrent" in str(failure)
    assert failure.retry_in_min is None


def test_reply_failure_wins_over_peers() -> None:
    failure = parse_failure(bencode2.bencode({b"failure reason": b"banned", b"interval": 900, b"peers": V4_A}))

    assert failure.kind is FailureKind.TRACKER_FAILURE


def test_reply_retry_in_minutes() -> None:
    failure = parse_failure(bencode2.bencode({b"failure reason": b"busy", b"retry in": 30}))

    assert failure.kind is FailureKind.TRACKER_FAILURE
    assert failure.retry_in_min == 30


def test_reply_retry_in_never() -> None:
    failure = parse_failure(bencode2.bencode({b"failure reason": b"gone", b"retry in": b"never"}))

    assert failure.kind is FailureKind.TRACKER_FAILURE
    assert failure.retry_in_min == -1


def test_reply_retry_in_digit_string() -> None:
    failure = parse_failure(bencode2.bencode({b"failure reason": b"busy", b"retry in": b"15"}))

    assert failure.retry_in_min == 15


def test_reply_html_body() -> None:
    failure = parse_failure(b"<html><body><h1>502 Bad Gateway</h1></body></html>")

    assert failure.kind is FailureKind.NOT_A_TRACKER
    assert "<html>" in failure.detail


def test_reply_bencoded_list() -> None:
    failure = parse_failure(bencode2.bencode([b"interval", 1800]))

    assert failure.kind is FailureKind.NOT_A_TRACKER
    assert "list" in failure.detail


def test_reply_empty_body() -> None:
    failure = parse_failure(b"")

    assert failure.kind is FailureKind.NOT_A_TRACKER


def test_reply_truncated_body() -> None:
    body = bencode2.bencode({b"interval": 900, b"peers": V4_A + V4_B})

    failure = parse_failure(body[:-3])

    assert failure.kind is FailureKind.NOT_A_TRACKER


def test_reply_trailing_garbage() -> None:
    body = bencode2.bencode({b"interval": 900, b"peers": V4_A})

    failure = parse_failure(body + b"<br>")

    assert failure.kind is FailureKind.NOT_A_TRACKER


# Sloppy encoders


def test_reply_unsorted_keys() -> None:
    body = b"d8:intervali900e5:peers6:" + V4_A + b"8:completei2ee"

    reply = parse_announce_reply(body)

    assert reply.interval_s == 900
    assert reply.endpoints == [V4_A]
    assert reply.complete == 2


def test_reply_duplicate_keys() -> None:
    body = b"d8:completei1e8:completei2e8:intervali900e5:peers6:" + V4_A + b"e"

    reply = parse_announce_reply(body)

    assert reply.interval_s == 900
    assert reply.endpoints == [V4_A]
    assert reply.complete == 2  # bencoding.decode keeps the last of duplicate keys


# Intervals and other keys


def test_reply_interval_missing() -> None:
    reply = parse_announce_reply(bencode2.bencode({b"peers": V4_A}))

    assert reply.interval_s == DEFAULT_INTERVAL_S
    assert reply.interval_s == 1800


def test_reply_interval_floor() -> None:
    reply = parse_announce_reply(bencode2.bencode({b"interval": 5, b"peers": V4_A}))

    assert reply.interval_s == MIN_INTERVAL_FLOOR_S
    assert reply.interval_s == 60


def test_reply_interval_ceiling() -> None:
    reply = parse_announce_reply(bencode2.bencode({b"interval": 10**9, b"peers": b""}))

    assert reply.interval_s == 86400


@pytest.mark.parametrize("interval", [0, -5, b"900"])
def test_reply_interval_invalid(interval: int | bytes) -> None:
    reply = parse_announce_reply(bencode2.bencode({b"interval": interval, b"peers": b""}))

    assert reply.interval_s == DEFAULT_INTERVAL_S


def test_reply_min_interval() -> None:
    reply = parse_announce_reply(bencode2.bencode({b"interval": 1800, b"min interval": 300, b"peers": b""}))

    assert reply.min_interval_s == 300


def test_reply_tracker_id_and_warning() -> None:
    body = bencode2.bencode(
        {b"interval": 900, b"peers": b"", b"tracker id": b"abc123", b"warning message": b"slow down"}
    )

    reply = parse_announce_reply(body)

    assert reply.tracker_id == b"abc123"
    assert reply.warning == "slow down"


def test_reply_tracker_id_absent() -> None:
    reply = parse_announce_reply(bencode2.bencode({b"interval": 900, b"peers": b""}))

    assert reply.tracker_id is None
    assert reply.warning is None


def test_reply_tracker_id_empty() -> None:
    reply = parse_announce_reply(bencode2.bencode({b"interval": 900, b"peers": b"", b"tracker id": b""}))

    assert reply.tracker_id is None


def test_reply_negative_counts() -> None:
    reply = parse_announce_reply(bencode2.bencode({b"interval": 900, b"complete": -3, b"incomplete": b"4"}))

    assert reply.complete == 0
    assert reply.incomplete == 0


# Property test


@given(st.binary(max_size=300))
def test_reply_any_bytes(body: bytes) -> None:
    try:
        reply = parse_announce_reply(body)
    except UpstreamFailure as failure:
        assert isinstance(failure.kind, FailureKind)
        return

    assert isinstance(reply, UpstreamReply)
    assert MIN_INTERVAL_FLOOR_S <= reply.interval_s <= 86400
    assert all(len(endpoint) in (6, 18) for endpoint in reply.endpoints)


BENCODE_PIECES = st.sampled_from(
    [
        b"d",
        b"l",
        b"e",
        b"i",
        b"i-1e",
        b"i0e",
        b"i99999999999999999999e",
        b"0:",
        b"6:",
        b"8:interval",
        b"5:peers",
        b"6:peers6",
        b"14:failure reason",
        b"8:retry in",
        b"5:never",
        b"2:ip",
        b"4:port",
        b"10:tracker id",
        b"15:warning message",
        b"8:complete",
    ]
)


@given(st.lists(st.one_of(BENCODE_PIECES, st.binary(max_size=4)), max_size=40).map(b"".join))
def test_reply_bencode_like_bytes(body: bytes) -> None:
    try:
        reply = parse_announce_reply(body)
    except UpstreamFailure as failure:
        assert isinstance(failure.kind, FailureKind)
        return

    assert isinstance(reply, UpstreamReply)
    assert all(len(endpoint) in (6, 18) for endpoint in reply.endpoints)
