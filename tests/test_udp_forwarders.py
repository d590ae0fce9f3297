"""udp:// forwarders through the whole service: peers reach clients, faults reach forwarder health."""

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import replace

from aggregator.config import ForwarderConfig
from aggregator.forwarder import ForwarderState
from aggregator.service import Service
from aggregator.upstream_reply import FailureKind
from tests.fake_clock import FakeClock
from tests.fake_tracker import FakeTracker, compact_peer
from tests.fake_udp_tracker import FakeUdpTracker, Reply
from tests.test_service import announce, announce_query, base_settings, compact_endpoints, running

UDP_PEER = compact_peer("10.7.7.7", 7777)
HTTP_PEER = compact_peer("10.8.8.8", 8888)


@asynccontextmanager
async def udp_and_http(**overrides: object) -> AsyncIterator[tuple[Service, object, str, FakeUdpTracker, FakeClock]]:
    udp = FakeUdpTracker(peers=UDP_PEER)
    http = FakeTracker(reply={b"interval": 1800, b"peers": HTTP_PEER})
    await udp.start()
    await http.start()
    clock = FakeClock()
    settings = base_settings([http], upstream_timeout_s=0.3, upstream_udp_tries=2, **overrides)
    settings = replace(
        settings,
        forwarders=(*settings.forwarders, ForwarderConfig(uri=udp.uri, name="udp0", ip=None, host=None)),
    )
    try:
        async with running(settings, clock) as (service, session, url):
            yield service, session, url, udp, clock
    finally:
        await udp.stop()
        await http.stop()


async def test_udp_forwarder_peers_reach_client() -> None:
    async with udp_and_http() as (service, session, url, udp, clock):
        await announce(session, url, announce_query(7001))  # type: ignore[arg-type]
        assert service.dispatcher is not None
        await service.dispatcher.wait_until_idle()

        _, reply = await announce(session, url, announce_query(7002))  # type: ignore[arg-type]

        assert {UDP_PEER, HTTP_PEER} <= compact_endpoints(reply[b"peers"])
        assert len(udp.connects) == 1
        assert len(udp.announces) == 1
        assert udp.announces[0].port == 7001
        assert udp.announces[0].event == 2  # started
        assert service.registry[1].succeeded == 1


async def test_udp_forwarder_coalesces_and_refreshes() -> None:
    async with udp_and_http(peer_ttl=100_000) as (service, session, url, udp, clock):
        for port in range(7001, 7051):
            await announce(session, url, announce_query(port))  # type: ignore[arg-type]
        assert len(udp.announces) == 1

        clock.advance(1800.0)
        assert service.dispatcher is not None
        service.dispatcher.wake()
        await udp.wait_for(lambda tracker: len(tracker.announces) == 2)

        assert udp.announces[1].event == 0
        assert len(udp.connects) == 1  # the connection id was reused within a minute of real time


async def test_silent_udp_forwarder_times_out() -> None:
    async with udp_and_http() as (service, session, url, udp, clock):
        udp.on_connect = Reply.SILENT

        _, reply = await announce(session, url, announce_query(7001))  # type: ignore[arg-type]

        assert HTTP_PEER in compact_endpoints(reply[b"peers"])
        assert service.dispatcher is not None
        await service.dispatcher.wait_until_idle()
        health = service.registry[1]
        assert health.last_failure_kind is FailureKind.TIMEOUT
        assert health.state is ForwarderState.ACTIVE
        assert len(udp.connects) == 2  # upstream_udp_tries


async def test_udp_error_packet_defers_pair_only() -> None:
    async with udp_and_http() as (service, session, url, udp, clock):
        udp.on_announce = Reply.ERROR

        await announce(session, url, announce_query(7001))  # type: ignore[arg-type]
        assert service.dispatcher is not None
        await service.dispatcher.wait_until_idle()

        health = service.registry[1]
        assert health.last_failure_kind is FailureKind.TRACKER_FAILURE
        assert health.state is ForwarderState.ACTIVE
        torrent = service.table.get(bytes(range(0x20, 0x34)))
        assert torrent is not None
        udp_batch = next(batch for batch in torrent.batches if batch.forwarder_index == 1)
        assert udp_batch.due_s == clock() + 6 * 3600.0


async def test_short_udp_reply_is_bad_reply() -> None:
    async with udp_and_http() as (service, session, url, udp, clock):
        udp.on_announce = Reply.SHORT

        await announce(session, url, announce_query(7001))  # type: ignore[arg-type]
        assert service.dispatcher is not None
        await service.dispatcher.wait_until_idle()

        assert service.registry[1].last_failure_kind is FailureKind.BAD_REPLY
