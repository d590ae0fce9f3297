"""Tests for the bencoded replies sent to clients (aggregator.replies), decoded with bencode2."""

import ipaddress
from typing import Any

import bencode2
from hypothesis import given
from hypothesis import strategies as st

from aggregator.endpoints import make_endpoint, pack_ip
from aggregator.replies import encode_announce_reply, encode_failure
from aggregator.swarm import Swarm
from aggregator.tracker import AnnounceResult

V4_A = make_endpoint(pack_ip("192.0.2.1"), 6881)
V4_B = make_endpoint(pack_ip("198.51.100.7"), 51413)
V4_UPSTREAM = make_endpoint(pack_ip("203.0.113.9"), 1)
V6_A = make_endpoint(pack_ip("2001:db8::1"), 6882)
V6_UPSTREAM = make_endpoint(pack_ip("2001:db8:ffff::2"), 65535)
PEER_ID_A = b"-AA0001-aaaaaaaaaaaa"
PEER_ID_B = b"-BB0001-bbbbbbbbbbbb"
PEER_ID_V6 = b"-CC0001-cccccccccccc"


def make_result(
    local: list[tuple[bytes, bytes]] | None = None,
    upstream: list[bytes] | None = None,
    interval: int = 1800,
    min_interval: int = 900,
    complete: int = 3,
    incomplete: int = 4,
) -> AnnounceResult:
    swarm = Swarm()
    for endpoint, peer_id in local or []:
        swarm.upsert(endpoint, peer_id, 1, 0.0)
    endpoints = [endpoint for endpoint, _ in local or []] + list(upstream or [])

    return AnnounceResult(
        interval=interval,
        min_interval=min_interval,
        complete=complete,
        incomplete=incomplete,
        peers4=b"".join(endpoint for endpoint in endpoints if len(endpoint) == 6),
        peers6=b"".join(endpoint for endpoint in endpoints if len(endpoint) == 18),
        swarm=swarm,
    )


def decode_reply(
    result: AnnounceResult, compact: bool = True, no_peer_id: bool = False, tracker_id: bytes | None = None
) -> dict[bytes, Any]:
    reply = bencode2.bdecode(encode_announce_reply(result, compact, no_peer_id, tracker_id))
    assert isinstance(reply, dict)

    return reply


def chunks(data: bytes, width: int) -> list[bytes]:
    return [data[offset : offset + width] for offset in range(0, len(data), width)]


# Compact replies


def test_compact_splits_families() -> None:
    result = make_result(local=[(V4_A, PEER_ID_A), (V6_A, PEER_ID_V6)], upstream=[V4_UPSTREAM, V6_UPSTREAM])

    reply = decode_reply(result)

    assert len(reply[b"peers"]) == 12
    assert chunks(reply[b"peers"], 6) == [V4_A, V4_UPSTREAM]
    assert len(reply[b"peers6"]) == 36
    assert chunks(reply[b"peers6"], 18) == [V6_A, V6_UPSTREAM]


def test_compact_peers6_only_v6() -> None:
    result = make_result(local=[(V4_A, PEER_ID_A), (V6_A, PEER_ID_V6), (V4_B, PEER_ID_B)])

    reply = decode_reply(result)

    assert reply[b"peers6"] == V6_A
    assert V4_A not in chunks(reply[b"peers6"], 18)
    assert V4_B not in chunks(reply[b"peers6"], 18)


def test_compact_no_peers6_key() -> None:
    reply = decode_reply(make_result(local=[(V4_A, PEER_ID_A)], upstream=[V4_B]))

    assert b"peers6" not in reply
    assert reply[b"peers"] == V4_A + V4_B


def test_compact_empty_peers() -> None:
    reply = decode_reply(make_result())

    assert reply[b"peers"] == b""
    assert b"peers6" not in reply


def test_compact_v6_only() -> None:
    reply = decode_reply(make_result(upstream=[V6_UPSTREAM]))

    assert reply[b"peers"] == b""
    assert reply[b"peers6"] == V6_UPSTREAM


# Dictionary replies (compact=0)


def test_dict_local_peers() -> None:
    result = make_result(local=[(V4_A, PEER_ID_A), (V6_A, PEER_ID_V6)])

    reply = decode_reply(result, compact=False)

    assert reply[b"peers"] == [
        {b"ip": b"192.0.2.1", b"port": 6881, b"peer id": PEER_ID_A},
        {b"ip": b"2001:db8::1", b"port": 6882, b"peer id": PEER_ID_V6},
    ]
    assert b"peers6" not in reply


def test_dict_no_peer_id() -> None:
    result = make_result(local=[(V4_A, PEER_ID_A), (V4_B, PEER_ID_B)])

    reply = decode_reply(result, compact=False, no_peer_id=True)

    assert reply[b"peers"] == [
        {b"ip": b"192.0.2.1", b"port": 6881},
        {b"ip": b"198.51.100.7", b"port": 51413},
    ]


def test_dict_upstream_without_peer_id() -> None:
    result = make_result(local=[(V4_A, PEER_ID_A)], upstream=[V4_UPSTREAM, V6_UPSTREAM])

    reply = decode_reply(result, compact=False)

    peers = reply[b"peers"]
    assert len(peers) == 3
    assert peers[0][b"peer id"] == PEER_ID_A
    assert peers[1] == {b"ip": b"203.0.113.9", b"port": 1}
    assert peers[2] == {b"ip": b"2001:db8:ffff::2", b"port": 65535}


# Other keys


def test_reply_tracker_id_given() -> None:
    reply = decode_reply(make_result(), tracker_id=b"tid-1")

    assert reply[b"tracker id"] == b"tid-1"


def test_reply_tracker_id_absent() -> None:
    reply = decode_reply(make_result())

    assert b"tracker id" not in reply


def test_reply_counts_and_intervals() -> None:
    result = make_result(interval=1234, min_interval=567, complete=8, incomplete=9)

    reply = decode_reply(result)

    assert reply[b"interval"] == 1234
    assert reply[b"min interval"] == 567
    assert reply[b"complete"] == 8
    assert reply[b"incomplete"] == 9


def test_reply_dict_counts() -> None:
    reply = decode_reply(make_result(complete=0, incomplete=2), compact=False)

    assert reply[b"complete"] == 0
    assert reply[b"incomplete"] == 2
    assert reply[b"peers"] == []


def test_failure_reply() -> None:
    reply = bencode2.bdecode(encode_failure("invalid port: expected an integer from 1 to 65535, got '0'", 1800))

    assert reply[b"failure reason"] == b"invalid port: expected an integer from 1 to 65535, got '0'"
    assert reply[b"interval"] == 1800
    assert set(reply) == {b"failure reason", b"interval"}


def test_failure_reply_utf8() -> None:
    reply = bencode2.bdecode(encode_failure("invalid key: ü", 60))

    assert reply[b"failure reason"] == "invalid key: ü".encode()


# Round trip


def v4_endpoints() -> st.SearchStrategy[bytes]:
    return st.builds(
        lambda address, port: make_endpoint(ipaddress.IPv4Address(address).packed, port),
        st.integers(0, 2**32 - 1),
        st.integers(1, 65535),
    )


def v6_endpoints() -> st.SearchStrategy[bytes]:
    return st.builds(
        lambda address, port: make_endpoint(ipaddress.IPv6Address(address).packed, port),
        st.integers(0, 2**128 - 1),
        st.integers(1, 65535),
    )


@given(
    st.lists(st.tuples(st.one_of(v4_endpoints(), v6_endpoints()), st.binary(min_size=20, max_size=20)), max_size=20),
    st.lists(st.one_of(v4_endpoints(), v6_endpoints()), max_size=20),
)
def test_compact_round_trip(local: list[tuple[bytes, bytes]], upstream: list[bytes]) -> None:
    reply = decode_reply(make_result(local=local, upstream=upstream))

    endpoints = [endpoint for endpoint, _ in local] + upstream
    expected_v4 = [endpoint for endpoint in endpoints if len(endpoint) == 6]
    expected_v6 = [endpoint for endpoint in endpoints if len(endpoint) == 18]
    assert chunks(reply[b"peers"], 6) == expected_v4
    assert chunks(reply.get(b"peers6", b""), 18) == expected_v6
    assert (b"peers6" in reply) == bool(expected_v6)


@given(st.lists(st.one_of(v4_endpoints(), v6_endpoints()), max_size=20))
def test_dict_round_trip(upstream: list[bytes]) -> None:
    reply = decode_reply(make_result(upstream=upstream), compact=False)

    decoded = [
        make_endpoint(ipaddress.ip_address(peer[b"ip"].decode()).packed, peer[b"port"]) for peer in reply[b"peers"]
    ]
    # IPv4 peers come first, as in a compact reply's `peers` before `peers6`.
    assert decoded == [e for e in upstream if len(e) == 6] + [e for e in upstream if len(e) == 18]
