"""One service listening on 127.0.0.1 and ::1 at once, with IPv4 and IPv6 peers in one swarm."""

import ipaddress
import socket

import aiohttp
import pytest

from aggregator.config import ListenAddress
from aggregator.endpoints import IPV4_ENDPOINT_BYTES, IPV6_ENDPOINT_BYTES
from tests.fake_tracker import compact_peer
from tests.service_harness import (
    announce_query,
    base_url,
    fake_trackers,
    get_bencoded,
    serving,
    settings_for,
    split_compact,
)

INFO_HASH = bytes(range(0x61, 0x75))


def has_ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as probe:
            probe.bind(("::1", 0))
    except OSError:
        return False

    return True


def v6_endpoint(address: str, port: int) -> bytes:
    return ipaddress.IPv6Address(address).packed + port.to_bytes(2, "big")


pytestmark = pytest.mark.skipif(not has_ipv6_loopback(), reason="this machine has no IPv6 loopback (::1)")


async def test_serves_ipv4_and_ipv6_at_once() -> None:
    upstream_v4 = compact_peer("10.1.1.1", 6000)
    upstream_v6 = v6_endpoint("2001:db8::1", 6001)
    # The upstream also lists the IPv6 client itself, which must not come back to it.
    upstream_self = v6_endpoint("::1", 7002)

    async with fake_trackers(1) as trackers:
        trackers[0].reply = {b"interval": 1800, b"peers": upstream_v4, b"peers6": upstream_v6 + upstream_self}
        listen = (ListenAddress("127.0.0.1", 0), ListenAddress("::1", 0))

        async with serving(settings_for(trackers, listen=listen)) as (service, session, url_v4):
            hosts = {host for host, _ in service.bound}
            assert hosts == {"127.0.0.1", "::1"}
            url_v6 = base_url(*next(bound for bound in service.bound if bound[0] == "::1"))
            assert url_v6.startswith("http://[::1]:")

            await get_bencoded(session, f"{url_v4}/announce?{announce_query(7001, INFO_HASH)}")
            await get_bencoded(session, f"{url_v6}/announce?{announce_query(7002, INFO_HASH)}")
            await get_bencoded(session, f"{url_v6}/announce?{announce_query(7003, INFO_HASH)}")

            status, to_v4 = await get_bencoded(session, f"{url_v4}/announce?{announce_query(7004, INFO_HASH)}")
            status, to_v6 = await get_bencoded(session, f"{url_v6}/announce?{announce_query(7002, INFO_HASH)}")
            status, dictionaries = await get_bencoded(
                session, f"{url_v6}/announce?{announce_query(7003, INFO_HASH, compact='0')}"
            )

    assert status == 200

    # An IPv4 client gets IPv4 peers in `peers` (6 bytes each) and IPv6 peers in `peers6` (18 bytes each).
    peers = split_compact(to_v4[b"peers"], IPV4_ENDPOINT_BYTES)
    peers6 = split_compact(to_v4[b"peers6"], IPV6_ENDPOINT_BYTES)
    assert len(to_v4[b"peers"]) == IPV4_ENDPOINT_BYTES * 2
    # The upstream copy of [::1]:7002 is the local peer itself, so it is listed once.
    assert len(to_v4[b"peers6"]) == IPV6_ENDPOINT_BYTES * 3
    assert set(peers) == {compact_peer("127.0.0.1", 7001), upstream_v4}
    assert set(peers6) == {upstream_self, v6_endpoint("::1", 7003), upstream_v6}

    # The IPv6 client never gets its own address back, neither from the local swarm nor from upstream.
    peers6_of_v6 = split_compact(to_v6[b"peers6"], IPV6_ENDPOINT_BYTES)
    assert v6_endpoint("::1", 7002) not in peers6_of_v6
    assert set(peers6_of_v6) == {v6_endpoint("::1", 7003), upstream_v6}
    assert set(split_compact(to_v6[b"peers"], IPV4_ENDPOINT_BYTES)) == {
        compact_peer("127.0.0.1", 7001),
        compact_peer("127.0.0.1", 7004),
        upstream_v4,
    }

    listed = {(peer[b"ip"], peer[b"port"]) for peer in dictionaries[b"peers"]}
    assert (b"::1", 7003) not in listed
    assert (b"::1", 7002) in listed
    assert (b"127.0.0.1", 7001) in listed


async def test_ipv6_listener_is_ipv6_only() -> None:
    # IPV6_V6ONLY: the ::1 socket must not take IPv4 connections, so both listeners can share a port.
    listen = (ListenAddress("::1", 0),)
    async with serving(settings_for([], listen=listen)) as (service, session, url):
        _, port = service.bound[0]
        with pytest.raises(aiohttp.ClientConnectionError):
            await get_bencoded(session, f"http://127.0.0.1:{port}/announce?{announce_query(7001, INFO_HASH)}")
