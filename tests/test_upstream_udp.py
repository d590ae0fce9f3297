"""Tests for BEP 15 UDP upstream announces (aggregator.upstream_udp).

Most tests run against FakeUdpTracker on 127.0.0.1 or ::1. The tests marked realworld run
against Debian's opentracker and the webtorrent bittorrent-tracker, both on the loopback
interface.
"""

import asyncio
import os
import socket
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import pytest_asyncio

from aggregator.batch import UpstreamEvent
from aggregator.upstream_http import HttpTarget, HttpUpstream, UpstreamAnnounce, UpstreamIdentity
from aggregator.upstream_reply import FailureKind, UpstreamFailure, UpstreamReply
from aggregator.upstream_udp import UdpTarget, UdpUpstream
from tests.fake_clock import FakeClock
from tests.fake_udp_tracker import FakeUdpTracker, Reply, compact_peer
from tests.realworld import LOOPBACK, OpenTracker, WebtorrentTracker, webtorrent_tracker

__all__ = ["webtorrent_tracker"]  # imported so that pytest finds the fixture

INFO_HASH = bytes(range(20))
# Long enough for a reply on the loopback interface even on a busy machine. A test that gets its
# reply returns at once, so only tests that wait for silence would pay this.
REPLY_TIMEOUT_S = 5.0
# For tests that expect no matching reply: each try waits this long.
SILENCE_TIMEOUT_S = 0.2
TRIES = 3
DNS_TTL_S = 300.0
CALL_BOUND_S = 30.0  # Upper bound on one announce, so that a hang fails the test instead of blocking the run.


def make_announce(
    info_hash: bytes = INFO_HASH,
    event: UpstreamEvent = UpstreamEvent.NONE,
    port: int = 6881,
    left: int = 12345,
    numwant: int = 80,
) -> UpstreamAnnounce:
    return UpstreamAnnounce(info_hash=info_hash, port=port, left=left, event=event, numwant=numwant, tracker_id=None)


async def announce_within_bound(upstream: UdpUpstream, target: UdpTarget, announce: UpstreamAnnounce) -> UpstreamReply:
    return await asyncio.wait_for(upstream.announce(target, announce), CALL_BOUND_S)


async def expect_failure(upstream: UdpUpstream, target: UdpTarget, announce: UpstreamAnnounce) -> UpstreamFailure:
    with pytest.raises(UpstreamFailure) as caught:
        await announce_within_bound(upstream, target, announce)

    return caught.value


def target_of(tracker: FakeUdpTracker, url_data: bytes = b"/announce") -> UdpTarget:
    return UdpTarget(tracker.host, tracker.port, url_data)


def closed_udp_port(host: str = LOOPBACK) -> int:
    """Return a UDP port on `host` that had no socket a moment ago."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_DGRAM) as probe:
        probe.bind((host, 0))
        port: int = probe.getsockname()[1]
        return port


class FakeResolver:
    """Stand-in for getaddrinfo that returns the listed addresses and raises EAI_NONAME for other names.

    The system resolver may send a query for an unknown name to a DNS server on another host,
    which no test may contact, so tests of names that do not resolve use this instead.
    """

    def __init__(self, names: dict[str, list[tuple[int, tuple[Any, ...]]]] | None = None) -> None:
        self.names = names or {}
        self.lookups: list[str] = []

    async def __call__(self, host: str, port: int) -> list[tuple[int, tuple[Any, ...]]]:
        self.lookups.append(host)
        if host not in self.names:
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")

        return self.names[host]


@pytest_asyncio.fixture
async def tracker() -> AsyncIterator[FakeUdpTracker]:
    fake = FakeUdpTracker()
    await fake.start()
    yield fake
    await fake.stop()


@pytest_asyncio.fixture
async def tracker6() -> AsyncIterator[FakeUdpTracker]:
    fake = FakeUdpTracker(host="::1")
    await fake.start()
    yield fake
    await fake.stop()


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def identity() -> UpstreamIdentity:
    return UpstreamIdentity()


UpstreamFactory = Callable[..., Awaitable[UdpUpstream]]


@pytest_asyncio.fixture
async def make_upstream(clock: FakeClock, identity: UpstreamIdentity) -> AsyncIterator[UpstreamFactory]:
    """Build started UdpUpstream clients on the fake clock, and close them at teardown."""
    clients: list[UdpUpstream] = []

    async def build(timeout_s: float = REPLY_TIMEOUT_S, tries: int = TRIES, **options: Any) -> UdpUpstream:
        client = UdpUpstream(identity, timeout_s, tries, DNS_TTL_S, clock, **options)
        await client.start()
        clients.append(client)
        return client

    yield build
    for client in clients:
        await client.close()


@pytest_asyncio.fixture
async def upstream(make_upstream: UpstreamFactory) -> UdpUpstream:
    return await make_upstream()


# ---------------------------------------------------------------- target parsing


@pytest.mark.parametrize(
    ("uri", "host", "port", "url_data"),
    [
        ("udp://tracker.example:6969/announce", "tracker.example", 6969, b"/announce"),
        ("udp://tracker.example:80/dir?a=b&c=d", "tracker.example", 80, b"/dir?a=b&c=d"),
        ("udp://tracker.example:6969", "tracker.example", 6969, b""),
        ("udp://tracker.example:6969/", "tracker.example", 6969, b"/"),
        ("udp://[::1]:6969/announce", "::1", 6969, b"/announce"),
        ("UDP://192.0.2.1:1337/?auth=0x00%2F", "192.0.2.1", 1337, b"/?auth=0x00%2F"),
    ],
)
def test_target_from_uri(uri: str, host: str, port: int, url_data: bytes) -> None:
    target = UdpTarget.from_uri(uri)

    assert target == UdpTarget(host, port, url_data)


@pytest.mark.parametrize(
    ("uri", "problem"),
    [
        ("http://tracker.example:6969/announce", "expected a udp:// URI"),
        ("udp://tracker.example/announce", "missing port"),
        ("udp://tracker.example:0/announce", "missing port"),
        ("udp://tracker.example:99999/announce", "invalid port"),
        ("udp://:6969/announce", "missing host"),
    ],
)
def test_target_from_uri_rejects(uri: str, problem: str) -> None:
    with pytest.raises(ValueError, match=problem):
        UdpTarget.from_uri(uri)


# ---------------------------------------------------------------- packets sent


@pytest.mark.parametrize(
    ("event", "code"),
    [
        (UpstreamEvent.NONE, 0),
        (UpstreamEvent.COMPLETED, 1),
        (UpstreamEvent.STARTED, 2),
        (UpstreamEvent.STOPPED, 3),
    ],
)
async def test_announce_packet_fields(
    upstream: UdpUpstream, tracker: FakeUdpTracker, identity: UpstreamIdentity, event: UpstreamEvent, code: int
) -> None:
    await announce_within_bound(upstream, target_of(tracker), make_announce(event=event, port=51413, left=777))

    assert len(tracker.connects) == 1
    connect = tracker.connects[0]
    assert connect.protocol_id == 0x41727101980
    assert len(tracker.announces) == 1
    sent = tracker.announces[0]
    assert sent.connection_id == connect.issued_connection_id
    assert sent.info_hash == INFO_HASH
    assert sent.peer_id == identity.peer_id
    assert sent.downloaded == 0
    assert sent.left == 777
    assert sent.uploaded == 0
    assert sent.event == code
    assert sent.ip == 0
    assert sent.key == int(identity.key_for(INFO_HASH), 16)
    assert sent.num_want == 80
    assert sent.port == 51413
    assert sent.source[1] == upstream.local_port(socket.AF_INET)


async def test_connect_and_announce_share_one_socket(upstream: UdpUpstream, tracker: FakeUdpTracker) -> None:
    await announce_within_bound(upstream, target_of(tracker), make_announce())
    await announce_within_bound(upstream, target_of(tracker), make_announce(info_hash=bytes(20)))

    expected = (LOOPBACK, upstream.local_port(socket.AF_INET))
    assert {request.source for request in tracker.connects} == {expected}
    assert {request.source for request in tracker.announces} == {expected}


async def test_url_data_sent_as_bep41_options(upstream: UdpUpstream, tracker: FakeUdpTracker) -> None:
    await announce_within_bound(upstream, target_of(tracker, b"/dir?a=b&c=d"), make_announce())

    sent = tracker.announces[0]
    assert sent.options == [(2, b"/dir?a=b&c=d"), (0, b"")]
    assert sent.url_data == b"/dir?a=b&c=d"


async def test_long_url_data_split_into_chunks(upstream: UdpUpstream, tracker: FakeUdpTracker) -> None:
    url_data = b"/announce?token=" + b"x" * 600

    await announce_within_bound(upstream, target_of(tracker, url_data), make_announce())

    sent = tracker.announces[0]
    assert [len(value) for kind, value in sent.options if kind == 2] == [255, 255, 106]
    assert sent.options[-1] == (0, b"")
    assert sent.url_data == url_data


async def test_no_options_without_url_data(upstream: UdpUpstream, tracker: FakeUdpTracker) -> None:
    await announce_within_bound(upstream, target_of(tracker, b""), make_announce())

    assert len(tracker.announces[0].packet) == 98


# ---------------------------------------------------------------- replies


async def test_reply_parsed(upstream: UdpUpstream, tracker: FakeUdpTracker) -> None:
    tracker.interval = 1200
    tracker.seeders = 11
    tracker.leechers = 4
    tracker.peers = (
        compact_peer("192.0.2.1", 6881)
        + compact_peer("192.0.2.2", 0)  # no peer listens on port 0
        + compact_peer("198.51.100.3", 51413)
        + b"\x01\x02\x03"  # a trailing partial entry
    )

    reply = await announce_within_bound(upstream, target_of(tracker), make_announce())

    assert reply == UpstreamReply(
        interval_s=1200,
        min_interval_s=0,
        endpoints=[compact_peer("192.0.2.1", 6881), compact_peer("198.51.100.3", 51413)],
        complete=11,
        incomplete=4,
        downloaded=0,
        tracker_id=None,
        warning=None,
    )
    assert upstream.pending_requests == 0


@pytest.mark.parametrize(("sent", "used"), [(900, 900), (10, 60), (10**7, 86400), (0, 1800), (-5, 1800)])
async def test_interval_bounded_like_http(upstream: UdpUpstream, tracker: FakeUdpTracker, sent: int, used: int) -> None:
    tracker.interval = sent

    reply = await announce_within_bound(upstream, target_of(tracker), make_announce())

    assert reply.interval_s == used


async def test_negative_counts_become_zero(upstream: UdpUpstream, tracker: FakeUdpTracker) -> None:
    tracker.seeders = -1
    tracker.leechers = -2

    reply = await announce_within_bound(upstream, target_of(tracker), make_announce())

    assert reply.complete == 0
    assert reply.incomplete == 0


async def test_ipv6_upstream_gives_18_byte_peers(upstream: UdpUpstream, tracker6: FakeUdpTracker) -> None:
    tracker6.peers = (
        compact_peer("2001:db8::1", 6881)
        + compact_peer("::ffff:192.0.2.7", 6882)  # v4-mapped: stored as an IPv4 peer
        + compact_peer("2001:db8::2", 0)
    )

    reply = await announce_within_bound(upstream, UdpTarget.from_uri(tracker6.uri), make_announce())

    assert reply.endpoints == [compact_peer("2001:db8::1", 6881), compact_peer("192.0.2.7", 6882)]
    assert len(reply.endpoints[0]) == 18
    assert tracker6.announces[0].source[0] == "::1"
    assert tracker6.announces[0].source[1] == upstream.local_port(socket.AF_INET6)


# ---------------------------------------------------------------- connection ids


async def test_connection_id_reused_within_60_s(
    upstream: UdpUpstream, tracker: FakeUdpTracker, clock: FakeClock
) -> None:
    await announce_within_bound(upstream, target_of(tracker), make_announce())
    clock.advance(59.9)
    await announce_within_bound(upstream, target_of(tracker), make_announce())

    assert len(tracker.connects) == 1
    assert tracker.announces[1].connection_id == tracker.announces[0].connection_id


async def test_connection_id_renewed_after_60_s(
    upstream: UdpUpstream, tracker: FakeUdpTracker, clock: FakeClock
) -> None:
    await announce_within_bound(upstream, target_of(tracker), make_announce())
    clock.advance(60.0)
    await announce_within_bound(upstream, target_of(tracker), make_announce())

    assert len(tracker.connects) == 2
    assert tracker.announces[1].connection_id != tracker.announces[0].connection_id


async def test_concurrent_announces_share_one_connect(upstream: UdpUpstream, tracker: FakeUdpTracker) -> None:
    hashes = [bytes([index]) * 20 for index in range(3)]

    await asyncio.gather(
        *(announce_within_bound(upstream, target_of(tracker), make_announce(info_hash=value)) for value in hashes)
    )

    assert len(tracker.connects) == 1
    assert sorted(request.info_hash for request in tracker.announces) == hashes


async def test_connection_id_cache_drops_expired_entries(
    upstream: UdpUpstream, tracker: FakeUdpTracker, tracker6: FakeUdpTracker, clock: FakeClock
) -> None:
    await announce_within_bound(upstream, target_of(tracker), make_announce())
    assert upstream.cached_connection_ids == 1

    clock.advance(61.0)
    await announce_within_bound(upstream, target_of(tracker6), make_announce())

    assert upstream.cached_connection_ids == 1


async def test_stale_connection_id_reconnects_once(upstream: UdpUpstream, tracker: FakeUdpTracker) -> None:
    await announce_within_bound(upstream, target_of(tracker), make_announce())
    tracker.expire_connection_ids()

    reply = await announce_within_bound(upstream, target_of(tracker), make_announce())

    assert reply.complete == tracker.seeders
    assert len(tracker.connects) == 2
    assert len(tracker.announces) == 3
    assert tracker.announces[1].connection_id == tracker.announces[0].connection_id  # the cached, stale one
    assert tracker.announces[2].connection_id != tracker.announces[1].connection_id


async def test_error_twice_is_tracker_failure(upstream: UdpUpstream, tracker: FakeUdpTracker) -> None:
    await announce_within_bound(upstream, target_of(tracker), make_announce())
    tracker.on_announce = Reply.ERROR

    failure = await expect_failure(upstream, target_of(tracker), make_announce())

    assert failure.kind is FailureKind.TRACKER_FAILURE
    assert failure.detail == "tracker says no"  # the trailing NUL is stripped
    assert len(tracker.connects) == 2
    assert len(tracker.announces) == 3


async def test_error_with_fresh_id_not_retried(upstream: UdpUpstream, tracker: FakeUdpTracker) -> None:
    tracker.on_announce = Reply.ERROR

    failure = await expect_failure(upstream, target_of(tracker), make_announce())

    assert failure.kind is FailureKind.TRACKER_FAILURE
    assert failure.detail == "tracker says no"
    assert len(tracker.connects) == 1
    assert len(tracker.announces) == 1


async def test_error_reply_to_connect(upstream: UdpUpstream, tracker: FakeUdpTracker) -> None:
    tracker.on_connect = Reply.ERROR
    tracker.error_message = "überlastet".encode()

    failure = await expect_failure(upstream, target_of(tracker), make_announce())

    assert failure.kind is FailureKind.TRACKER_FAILURE
    assert failure.detail == "überlastet"
    assert tracker.announces == []


# ---------------------------------------------------------------- bad replies


async def test_short_announce_reply_is_bad_reply(upstream: UdpUpstream, tracker: FakeUdpTracker) -> None:
    tracker.on_announce = Reply.SHORT

    failure = await expect_failure(upstream, target_of(tracker), make_announce())

    assert failure.kind is FailureKind.BAD_REPLY
    assert "8 bytes" in failure.detail


async def test_short_connect_reply_is_bad_reply(upstream: UdpUpstream, tracker: FakeUdpTracker) -> None:
    tracker.on_connect = Reply.SHORT

    failure = await expect_failure(upstream, target_of(tracker), make_announce())

    assert failure.kind is FailureKind.BAD_REPLY
    assert "8 bytes" in failure.detail


@pytest.mark.parametrize("request_kind", ["connect", "announce"])
async def test_wrong_action_is_bad_reply(upstream: UdpUpstream, tracker: FakeUdpTracker, request_kind: str) -> None:
    setattr(tracker, f"on_{request_kind}", Reply.WRONG_ACTION)

    failure = await expect_failure(upstream, target_of(tracker), make_announce())

    assert failure.kind is FailureKind.BAD_REPLY
    assert "action 2" in failure.detail


# ---------------------------------------------------------------- retransmission and matching


async def test_connect_sent_tries_times_then_timeout(make_upstream: UpstreamFactory, tracker: FakeUdpTracker) -> None:
    upstream = await make_upstream(timeout_s=SILENCE_TIMEOUT_S)
    tracker.on_connect = Reply.SILENT

    failure = await expect_failure(upstream, target_of(tracker), make_announce())

    assert failure.kind is FailureKind.TIMEOUT
    assert len(tracker.connects) == TRIES
    assert len({request.transaction_id for request in tracker.connects}) == 1  # the same request each time
    assert upstream.pending_requests == 0


async def test_announce_sent_tries_times_then_timeout(
    make_upstream: UpstreamFactory, tracker: FakeUdpTracker
) -> None:
    upstream = await make_upstream(timeout_s=SILENCE_TIMEOUT_S)
    tracker.on_announce = Reply.SILENT

    failure = await expect_failure(upstream, target_of(tracker), make_announce())

    assert failure.kind is FailureKind.TIMEOUT
    assert len(tracker.connects) == 1
    assert len(tracker.announces) == TRIES
    assert len({request.packet for request in tracker.announces}) == 1
    assert upstream.pending_requests == 0


async def test_timeout_with_cached_id_reconnects_next_time(
    make_upstream: UpstreamFactory, tracker: FakeUdpTracker
) -> None:
    upstream = await make_upstream(timeout_s=SILENCE_TIMEOUT_S, tries=1)
    await announce_within_bound(upstream, target_of(tracker), make_announce())
    tracker.on_announce = Reply.SILENT
    await expect_failure(upstream, target_of(tracker), make_announce())
    tracker.on_announce = Reply.NORMAL

    await announce_within_bound(upstream, target_of(tracker), make_announce())

    assert len(tracker.connects) == 2


async def test_wrong_transaction_id_ignored(make_upstream: UpstreamFactory, tracker: FakeUdpTracker) -> None:
    upstream = await make_upstream(timeout_s=SILENCE_TIMEOUT_S)
    tracker.on_connect = Reply.WRONG_TRANSACTION_ID

    failure = await expect_failure(upstream, target_of(tracker), make_announce())

    assert failure.kind is FailureKind.TIMEOUT
    assert tracker.replies_sent == TRIES
    assert upstream.unmatched_datagrams == TRIES


async def test_reply_from_other_port_ignored(make_upstream: UpstreamFactory, tracker: FakeUdpTracker) -> None:
    upstream = await make_upstream(timeout_s=SILENCE_TIMEOUT_S)
    tracker.on_connect = Reply.OTHER_SOURCE

    failure = await expect_failure(upstream, target_of(tracker), make_announce())

    assert failure.kind is FailureKind.TIMEOUT
    assert tracker.replies_sent == TRIES
    assert upstream.unmatched_datagrams == TRIES


async def test_close_fails_waiting_announce(make_upstream: UpstreamFactory, tracker: FakeUdpTracker) -> None:
    upstream = await make_upstream()
    tracker.on_connect = Reply.SILENT
    task = asyncio.create_task(upstream.announce(target_of(tracker), make_announce()))
    await tracker.wait_for(lambda fake: len(fake.connects) >= 1)

    await upstream.close()

    with pytest.raises(UpstreamFailure) as caught:
        await asyncio.wait_for(task, CALL_BOUND_S)
    assert caught.value.kind is FailureKind.CONNECTION
    assert upstream.pending_requests == 0


# ---------------------------------------------------------------- closed ports


async def test_closed_port_refused(make_upstream: UpstreamFactory) -> None:
    # The timeout is long, so a REFUSED that arrives within it comes from the ICMP error.
    upstream = await make_upstream(timeout_s=REPLY_TIMEOUT_S, tries=1)

    failure = await expect_failure(upstream, UdpTarget(LOOPBACK, closed_udp_port(), b""), make_announce())

    if sys.platform == "linux":
        assert failure.kind is FailureKind.REFUSED, failure
    else:
        # Without IP_RECVERR the ICMP error may never reach the unconnected socket, so the request times out.
        assert failure.kind in (FailureKind.REFUSED, FailureKind.TIMEOUT), failure


@pytest.mark.skipif(sys.platform != "linux", reason="ICMP errors on unconnected sockets need Linux's IP_RECVERR")
async def test_refused_fails_only_its_destination(upstream: UdpUpstream, tracker: FakeUdpTracker) -> None:
    # The second connect usually goes out after the ICMP error of the first has arrived, and
    # Linux then reports that error on the send of the second.
    closed = UdpTarget(LOOPBACK, closed_udp_port(), b"")

    results = await asyncio.gather(
        announce_within_bound(upstream, closed, make_announce()),
        announce_within_bound(upstream, target_of(tracker), make_announce()),
        return_exceptions=True,
    )

    assert isinstance(results[0], UpstreamFailure)
    assert results[0].kind is FailureKind.REFUSED
    assert isinstance(results[1], UpstreamReply)


@pytest.mark.skipif(sys.platform != "linux", reason="ICMP errors on unconnected sockets need Linux's IP_RECVERR")
async def test_closed_ipv6_port_refused(upstream: UdpUpstream) -> None:
    failure = await expect_failure(upstream, UdpTarget("::1", closed_udp_port("::1"), b""), make_announce())

    assert failure.kind is FailureKind.REFUSED, failure


def test_refused_and_success_under_uvloop(identity: UpstreamIdentity) -> None:
    """The service runs on uvloop when it is installed; ICMP errors must work there too."""
    uvloop = pytest.importorskip("uvloop")

    async def scenario() -> tuple[UpstreamFailure | None, UpstreamReply]:
        fake = FakeUdpTracker()
        await fake.start()
        upstream = UdpUpstream(identity, REPLY_TIMEOUT_S, 1, DNS_TTL_S)
        await upstream.start()
        try:
            refused = None
            try:
                await upstream.announce(UdpTarget(LOOPBACK, closed_udp_port(), b""), make_announce())
            except UpstreamFailure as failure:
                refused = failure
            reply = await upstream.announce(target_of(fake), make_announce())
        finally:
            await upstream.close()
            await fake.stop()
        return refused, reply

    refused, reply = uvloop.run(asyncio.wait_for(scenario(), CALL_BOUND_S))

    assert refused is not None
    if sys.platform == "linux":
        assert refused.kind is FailureKind.REFUSED, refused
    assert reply.complete == FakeUdpTracker.seeders


# ---------------------------------------------------------------- host names


async def test_unresolvable_host_is_dns_failure(make_upstream: UpstreamFactory) -> None:
    resolver = FakeResolver()
    upstream = await make_upstream(resolver=resolver)

    failure = await expect_failure(upstream, UdpTarget("tracker.invalid", 6969, b""), make_announce())

    assert failure.kind is FailureKind.DNS
    assert "tracker.invalid" in failure.detail
    assert resolver.lookups == ["tracker.invalid"]


async def test_host_name_cached_for_ttl(
    make_upstream: UpstreamFactory, tracker: FakeUdpTracker, clock: FakeClock
) -> None:
    resolver = FakeResolver({"tracker.test": [(socket.AF_INET, (LOOPBACK, tracker.port))]})
    upstream = await make_upstream(resolver=resolver)
    target = UdpTarget("tracker.test", tracker.port, b"/announce")

    await announce_within_bound(upstream, target, make_announce())
    clock.advance(DNS_TTL_S - 1)
    await announce_within_bound(upstream, target, make_announce())
    assert resolver.lookups == ["tracker.test"]

    clock.advance(1)
    await announce_within_bound(upstream, target, make_announce())
    assert resolver.lookups == ["tracker.test", "tracker.test"]
    assert upstream.cached_hosts == 1


async def test_first_resolved_family_used(
    make_upstream: UpstreamFactory, tracker: FakeUdpTracker, tracker6: FakeUdpTracker
) -> None:
    resolver = FakeResolver(
        {"dual.test": [(socket.AF_INET6, ("::1", tracker6.port, 0, 0)), (socket.AF_INET, (LOOPBACK, tracker.port))]}
    )
    upstream = await make_upstream(resolver=resolver)

    await announce_within_bound(upstream, UdpTarget("dual.test", tracker6.port, b""), make_announce())

    assert len(tracker6.announces) == 1
    assert tracker.connects == []


def hosts_file_names_localhost() -> bool:
    try:
        lines = Path("/etc/hosts").read_text().splitlines()
    except OSError:
        return False
    return any("localhost" in line.split("#", 1)[0].split()[1:] for line in lines)


@pytest.mark.skipif(
    not hosts_file_names_localhost(), reason="without a localhost line in /etc/hosts the lookup would query DNS"
)
async def test_localhost_resolved_by_getaddrinfo(upstream: UdpUpstream) -> None:
    _, _, _, _, sockaddr = socket.getaddrinfo("localhost", None, type=socket.SOCK_DGRAM)[0]
    fake = FakeUdpTracker(host=str(sockaddr[0]))
    await fake.start()
    try:
        reply = await announce_within_bound(upstream, UdpTarget("localhost", fake.port, b""), make_announce())
    finally:
        await fake.stop()

    assert reply.complete == fake.seeders
    assert upstream.cached_hosts == 1


# ---------------------------------------------------------------- real trackers


def own_endpoint(port: int) -> bytes:
    return compact_peer(LOOPBACK, port)


@pytest.mark.realworld
async def test_opentracker_udp_returns_own_endpoint(upstream: UdpUpstream, opentracker: OpenTracker) -> None:
    info_hash = os.urandom(20)
    opentracker.allow(info_hash)

    target = UdpTarget.from_uri(opentracker.udp_announce_url)

    first = await announce_within_bound(
        upstream, target, make_announce(info_hash=info_hash, event=UpstreamEvent.STARTED, port=40002, left=1)
    )
    # The second announce reuses the cached connection id.
    second = await announce_within_bound(upstream, target, make_announce(info_hash=info_hash, port=40002, left=1))

    assert first.endpoints == [own_endpoint(40002)], first
    assert first.incomplete == 1, first
    assert first.interval_s >= 60, first
    assert second.endpoints == [own_endpoint(40002)], second
    counters = opentracker.udp_counters()
    assert counters["connect"] == 1, counters
    assert counters["announce"] == 2, counters
    assert counters["missmatch"] == 0, counters
    print(f"\nopentracker UDP replies: {first}, {second}")


@pytest.mark.realworld
async def test_opentracker_udp_unlisted_hash(upstream: UdpUpstream, opentracker: OpenTracker) -> None:
    failure = await expect_failure(
        upstream, UdpTarget.from_uri(opentracker.udp_announce_url), make_announce(info_hash=os.urandom(20))
    )

    # opentracker replies to an infohash outside its whitelist with the 8-byte header only.
    assert failure.kind is FailureKind.BAD_REPLY, failure
    assert "8 bytes" in failure.detail, failure


@pytest.mark.realworld
async def test_webtorrent_udp_returns_own_endpoint(
    upstream: UdpUpstream, webtorrent_tracker: WebtorrentTracker
) -> None:
    info_hash = os.urandom(20)

    reply = await announce_within_bound(
        upstream,
        UdpTarget.from_uri(webtorrent_tracker.udp_announce_url),
        make_announce(info_hash=info_hash, event=UpstreamEvent.STARTED, port=40003),
    )

    assert reply.endpoints == [own_endpoint(40003)], reply
    assert reply.incomplete == 1, reply
    assert reply.interval_s >= 60, reply
    print(f"\nbittorrent-tracker UDP reply: {reply}")


@pytest.mark.realworld
async def test_webtorrent_udp6_reply_lacks_ipv6_peers(
    upstream: UdpUpstream, webtorrent_tracker: WebtorrentTracker
) -> None:
    info_hash = os.urandom(20)

    reply = await announce_within_bound(
        upstream,
        UdpTarget.from_uri(webtorrent_tracker.udp6_announce_url),
        make_announce(info_hash=info_hash, event=UpstreamEvent.STARTED, port=40005),
    )

    # bittorrent-tracker 11.2.3 counts the IPv6 peer but builds UDP replies from its IPv4
    # peers only, also over IPv6, so our own [::1]:40005 does not come back.
    assert reply.endpoints == [], reply
    assert reply.incomplete == 1, reply
    print(f"\nbittorrent-tracker UDP reply over IPv6: {reply}")


@pytest.mark.realworld
async def test_webtorrent_http_returns_own_endpoint(
    identity: UpstreamIdentity, webtorrent_tracker: WebtorrentTracker
) -> None:
    info_hash = os.urandom(20)
    target = HttpTarget(webtorrent_tracker.http_announce_url, ip=None, host=None)

    async with aiohttp.ClientSession() as session:
        http = HttpUpstream(session, identity, REPLY_TIMEOUT_S, 262144)
        reply = await asyncio.wait_for(
            http.announce(target, make_announce(info_hash=info_hash, event=UpstreamEvent.STARTED, port=40004)),
            CALL_BOUND_S,
        )

    assert reply.endpoints == [own_endpoint(40004)], reply
    assert reply.incomplete == 1, reply
    print(f"\nbittorrent-tracker HTTP reply: {reply}")
