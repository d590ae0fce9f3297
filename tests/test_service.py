"""The whole pipeline in one process: HTTP announces in, coalesced upstream announces out."""

import asyncio
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

import aiohttp
import bencode2
import pytest
from aiohttp import web

from aggregator.config import Settings
from aggregator.service import Service
from aggregator.upstream_reply import FailureKind
from tests.fake_clock import FakeClock
from tests.fake_tracker import FakeTracker, compact_peer
from tests.service_harness import announce_query as harness_announce_query
from tests.service_harness import fake_trackers, serving, settings_for

INFO_HASH = bytes(range(0x20, 0x34))  # contains 0x20 and 0x2B, the bytes '+' handling breaks


def base_settings(trackers: list[FakeTracker], **overrides: object) -> Settings:
    return settings_for(trackers, **overrides)


@asynccontextmanager
async def running(
    settings: Settings, clock: Callable[[], float] | None = None
) -> AsyncIterator[tuple[Service, aiohttp.ClientSession, str]]:
    """Like service_harness.serving, but yield the announce URL."""
    async with serving(settings, clock) as (service, session, base):
        yield service, session, f"{base}/announce"


def announce_query(port: int, info_hash: bytes = INFO_HASH, **extra: str) -> str:
    return harness_announce_query(port, info_hash, **extra)


async def announce(session: aiohttp.ClientSession, url: str, query: str) -> tuple[int, dict[bytes, object]]:
    async with session.get(f"{url}?{query}") as response:
        body = await response.read()
        reply = bencode2.bdecode(body)
        assert isinstance(reply, dict)

        return response.status, reply


def compact_endpoints(data: object, width: int = 6) -> set[bytes]:
    assert isinstance(data, bytes)
    return {data[offset : offset + width] for offset in range(0, len(data), width)}


async def test_thousand_peers_coalesce_into_one_upstream_announce() -> None:
    async with fake_trackers(3) as trackers, running(base_settings(trackers)) as (service, session, url):
        replies = await asyncio.gather(*(announce(session, url, announce_query(10000 + n)) for n in range(1000)))

        assert all(status == 200 for status, _ in replies)
        assert all(b"failure reason" not in reply for _, reply in replies)
        for tracker in trackers:
            assert len(tracker.announces) == 1
            assert tracker.announces[0].fields["event"] == b"started"
        assert service.dispatcher is not None
        assert service.dispatcher.dispatched == 3
        assert len(service.index) == 3
        assert service.table.batch_count == 3
        assert service.tracker.coalesced >= 997
        assert service.swarms.peer_count == 1000


async def test_refresh_waits_for_upstream_interval() -> None:
    clock = FakeClock()
    arrivals: list[tuple[float, bytes]] = []
    async with fake_trackers(2) as trackers:
        for tracker in trackers:
            tracker.reply = {b"interval": 1200, b"min interval": 600, b"peers": b""}
            tracker.on_announce = lambda recorded: arrivals.append((clock(), recorded.fields.get("event", b"")))

        async with running(base_settings(trackers, peer_ttl=100_000), clock) as (service, session, url):
            await announce(session, url, announce_query(7001))
            for tracker in trackers:
                await tracker.wait_for_announces(1)

            for step_s in (600.0, 599.0):
                clock.advance(step_s)
                await announce(session, url, announce_query(7002))  # a peer announcing does not trigger upstream
            clock.advance(1.0)
            assert service.dispatcher is not None
            service.dispatcher.wake()
            for tracker in trackers:
                await tracker.wait_for_announces(2)

    assert [event for _, event in arrivals] == [b"started", b"started", b"", b""]
    assert all(arrived_s == 1000.0 for arrived_s, _ in arrivals[:2])
    assert all(arrived_s == 2200.0 for arrived_s, _ in arrivals[2:])


async def test_first_announce_gets_upstream_peers() -> None:
    async with fake_trackers(2) as trackers:
        trackers[0].reply = {b"interval": 1800, b"peers": compact_peer("10.1.1.1", 6000)}
        trackers[1].reply = {b"interval": 1800, b"peers": compact_peer("10.2.2.2", 6001) + compact_peer("10.1.1.1", 6000)}
        gate = asyncio.Event()
        trackers[1].hold = gate  # the second upstream replies late

        async with running(base_settings(trackers)) as (service, session, url):
            status, reply = await announce(session, url, announce_query(7001))
            assert status == 200
            assert compact_endpoints(reply[b"peers"]) == {compact_peer("10.1.1.1", 6000)}
            assert reply[b"interval"] == 1800

            gate.set()
            assert service.dispatcher is not None
            await service.dispatcher.wait_until_idle()
            assert service.worker.succeeded == 2

            status, reply = await announce(session, url, announce_query(7002))
            expected = {compact_peer("10.1.1.1", 6000), compact_peer("10.2.2.2", 6001), compact_peer("127.0.0.1", 7001)}
            assert compact_endpoints(reply[b"peers"]) == expected


async def test_failed_upstream_gives_short_interval() -> None:
    async with fake_trackers(1) as trackers:
        trackers[0].reply = lambda recorded: web.Response(status=502, text="bad gateway")

        async with running(base_settings(trackers, first_interval=45)) as (service, session, url):
            status, reply = await announce(session, url, announce_query(7001))

            assert status == 200
            assert reply[b"interval"] == 45
            assert reply[b"min interval"] == 45
            assert service.worker.failed == 1
            assert service.registry[0].failed == 1
            assert service.registry[0].last_failure_kind is FailureKind.SERVER_ERROR
            batch = service.table.get(INFO_HASH).batches[0]  # type: ignore[union-attr]
            assert batch.failures == 1
            assert batch.in_index


async def test_failed_refresh_keeps_cached_peers() -> None:
    clock = FakeClock()
    async with fake_trackers(1) as trackers:
        trackers[0].reply = {b"interval": 1800, b"peers": compact_peer("10.1.1.1", 6000)}
        settings = base_settings(trackers, peer_ttl=100_000, upstream_peer_ttl=4000)

        async with running(settings, clock) as (service, session, url):
            await announce(session, url, announce_query(7001))
            trackers[0].reply = b"<html>maintenance</html>"
            clock.advance(1800.0)
            assert service.dispatcher is not None
            service.dispatcher.wake()
            await trackers[0].wait_for_announces(2)
            await service.dispatcher.wait_until_idle()
            assert service.worker.failed == 1

            _, reply = await announce(session, url, announce_query(7002))

            assert compact_peer("10.1.1.1", 6000) in compact_endpoints(reply[b"peers"])


async def test_upstream_announce_carries_client_port_and_tracker_id() -> None:
    clock = FakeClock()
    async with fake_trackers(1) as trackers:
        trackers[0].reply = {b"interval": 1800, b"peers": b"", b"tracker id": b"tid-1"}

        async with running(base_settings(trackers, peer_ttl=100_000), clock) as (service, session, url):
            await announce(session, url, announce_query(7001))
            await announce(session, url, announce_query(7002, left="0"))
            clock.advance(1800.0)
            assert service.dispatcher is not None
            service.dispatcher.wake()
            announces = await trackers[0].wait_for_announces(2)

    first, second = announces[0].fields, announces[1].fields
    assert first["info_hash"] == INFO_HASH
    assert first["port"] == b"7001"
    assert first["left"] == b"1000"
    assert first["compact"] == b"1"
    assert first["numwant"] == b"200"
    assert "trackerid" not in first
    assert second["port"] == b"7002"
    assert second["trackerid"] == b"tid-1"
    assert second["left"] == b"1000"  # one local leecher remains, so the aggregator is still a leecher
    assert "event" not in second
    assert second["peer_id"] == first["peer_id"]
    assert second["key"] == first["key"]


async def test_emptied_swarm_sends_upstream_stopped() -> None:
    async with fake_trackers(2) as trackers, running(base_settings(trackers)) as (service, session, url):
        await announce(session, url, announce_query(7001))
        await announce(session, url, announce_query(7002))
        for tracker in trackers:
            await tracker.wait_for_announces(1)

        await announce(session, url, announce_query(7001, event="stopped"))
        assert service.swarms.peer_count == 1
        await announce(session, url, announce_query(7002, event="stopped"))

        for tracker in trackers:
            announces = await tracker.wait_for_announces(2)
            assert [recorded.fields.get("event") for recorded in announces] == [b"started", b"stopped"]
        assert service.dispatcher is not None
        await service.dispatcher.wait_until_idle()
        assert service.table.batch_count == 0
        assert service.table.get(INFO_HASH) is None
        assert len(service.swarms) == 0


async def test_expired_swarm_sends_upstream_stopped() -> None:
    clock = FakeClock()
    async with fake_trackers(1) as trackers:
        async with running(base_settings(trackers, peer_ttl=600), clock) as (service, session, url):
            await announce(session, url, announce_query(7001))
            await trackers[0].wait_for_announces(1)

            clock.advance(500.0)
            service.sweep_expired()
            assert service.swarms.peer_count == 1

            clock.advance(200.0)
            service.sweep_expired()
            assert service.swarms.peer_count == 0
            announces = await trackers[0].wait_for_announces(2)

    assert announces[1].fields["event"] == b"stopped"
    assert announces[1].fields["numwant"] == b"0"


async def test_completed_is_forwarded_once() -> None:
    async with fake_trackers(1) as trackers, running(base_settings(trackers)) as (service, session, url):
        await announce(session, url, announce_query(7001))
        await announce(session, url, announce_query(7001, event="completed", left="0"))
        await announce(session, url, announce_query(7002, event="completed", left="0"))

        announces = await trackers[0].wait_for_announces(2)
        assert [recorded.fields.get("event") for recorded in announces] == [b"started", b"completed"]
        assert announces[1].fields["left"] == b"0"


@pytest.mark.parametrize(
    ("query", "parameter"),
    [
        ("info_hash=" + "ab" * 20 + "&peer_id=" + "A" * 20 + "&port=1", "info_hash"),
        ("info_hash=" + "%ab" * 20 + "&port=1", "peer_id"),
        ("info_hash=" + "%ab" * 20 + "&peer_id=" + "A" * 20 + "&port=0", "port"),
        ("info_hash=" + "%ab" * 20 + "&peer_id=" + "A" * 20 + "&port=1&event=bogus", "event"),
        ("info_hash=" + "%ab" * 20 + "&peer_id=" + "A" * 20 + "&port=1&left=-5", "left"),
        ("", "info_hash"),
    ],
)
async def test_bad_announce_gets_failure_reason(query: str, parameter: str) -> None:
    async with fake_trackers(1) as trackers, running(base_settings(trackers)) as (service, session, url):
        status, reply = await announce(session, url, query)

        assert status == 200
        reason = reply[b"failure reason"]
        assert isinstance(reason, bytes)
        assert reason.startswith(f"invalid {parameter}:".encode())
        assert isinstance(reply[b"interval"], int)
        assert len(service.swarms) == 0
        assert trackers[0].announces == []


async def test_no_forwarders_runs_as_local_tracker() -> None:
    async with running(base_settings([])) as (service, session, url):
        await announce(session, url, announce_query(7001, left="0"))
        status, reply = await announce(session, url, announce_query(7002, compact="0"))

        assert status == 200
        assert reply[b"interval"] == 1800
        assert reply[b"complete"] == 1
        assert reply[b"incomplete"] == 1
        peers = reply[b"peers"]
        assert isinstance(peers, list)
        assert peers == [{b"ip": b"127.0.0.1", b"port": 7001, b"peer id": b"-TR4000-" + (7001).to_bytes(12, "big")}]
        assert len(service.index) == 0



async def test_denied_infohash_is_never_forwarded() -> None:
    async with fake_trackers(1) as trackers, running(base_settings(trackers)) as (service, session, url):
        service.tracker.is_allowed = lambda info_hash: info_hash != INFO_HASH

        status, reply = await announce(session, url, announce_query(7001))

        assert status == 200
        assert reply[b"failure reason"] == f"info_hash {INFO_HASH.hex()} is not allowed on this tracker".encode()
        assert len(service.swarms) == 0
        assert len(service.index) == 0
        assert trackers[0].announces == []
