"""Forwarder and batch outcomes for each upstream fault, through the whole service.

Each test runs the service with a fake clock, one or more scriptable fake trackers, and checks
the forwarder state, the batch's next due time, the peer cache and the client replies.
"""

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import replace

import aiohttp
import pytest
from aiohttp import web

from aggregator.batch import Batch
from aggregator.config import Settings
from aggregator.faults import PAIR_FAILURE_DEFER_S
from aggregator.forwarder import ForwarderState
from aggregator.service import Service
from aggregator.upstream_reply import FailureKind
from tests import misbehaving
from tests.fake_clock import FakeClock
from tests.fake_tracker import FakeTracker, compact_peer
from tests.test_service import INFO_HASH, announce, announce_query, base_settings, compact_endpoints, running

START_S = 1000.0
GOOD_PEER = compact_peer("10.9.9.9", 6000)


@asynccontextmanager
async def scenario(
    tracker_count: int = 1, **overrides: object
) -> AsyncIterator[tuple[Service, aiohttp.ClientSession, str, list[FakeTracker], FakeClock]]:
    clock = FakeClock(START_S)
    trackers = [FakeTracker(reply={b"interval": 1800, b"peers": GOOD_PEER}) for _ in range(tracker_count)]
    for tracker in trackers:
        await tracker.start()
    settings: Settings = replace(
        base_settings(trackers, peer_ttl=100_000, upstream_peer_ttl=100_000, upstream_timeout_s=2.0),
        **overrides,  # type: ignore[arg-type]
    )
    try:
        async with running(settings, clock) as (service, session, url):
            yield service, session, url, trackers, clock
    finally:
        for tracker in trackers:
            await tracker.stop()


def only_batch(service: Service, info_hash: bytes = INFO_HASH) -> Batch:
    torrent = service.table.get(info_hash)
    assert torrent is not None
    assert len(torrent.batches) == 1

    return torrent.batches[0]


async def refresh(service: Service, clock: FakeClock, tracker: FakeTracker, seconds: float) -> None:
    """Move the clock, let the due batch run against the tracker, and wait until it is handled."""
    count = len(tracker.announces)
    clock.advance(seconds)
    assert service.dispatcher is not None
    service.dispatcher.wake()
    await tracker.wait_for_announces(count + 1)
    await service.dispatcher.wait_until_idle()


@pytest.mark.parametrize(
    ("reply", "kind"),
    [
        (misbehaving.status(500), FailureKind.SERVER_ERROR),
        (misbehaving.html_page(), FailureKind.NOT_A_TRACKER),
        (misbehaving.truncated_bencode(), FailureKind.NOT_A_TRACKER),
        (misbehaving.huge_body(), FailureKind.BODY_TOO_LARGE),
    ],
)
async def test_retryable_fault_backs_off_and_keeps_peers(reply: object, kind: FailureKind) -> None:
    async with scenario() as (service, session, url, trackers, clock):
        await announce(session, url, announce_query(7001))
        trackers[0].reply = reply

        await refresh(service, clock, trackers[0], 1800.0)

        health = service.registry[0]
        batch = only_batch(service)
        now_s = START_S + 1800.0
        assert health.state is ForwarderState.ACTIVE
        assert health.last_failure_kind is kind
        assert health.consecutive_failures == 1
        assert now_s + 15.0 <= batch.due_s <= now_s + 30.0
        _, client_reply = await announce(session, url, announce_query(7002))
        assert GOOD_PEER in compact_endpoints(client_reply[b"peers"])


async def test_gzip_reply_is_decoded() -> None:
    async with scenario() as (service, session, url, trackers, clock):
        trackers[0].reply = misbehaving.gzip_reply({b"interval": 1800, b"peers": compact_peer("10.3.3.3", 6003)})

        _, reply = await announce(session, url, announce_query(7001))

        assert compact_endpoints(reply[b"peers"]) == {compact_peer("10.3.3.3", 6003)}
        assert service.registry[0].succeeded == 1


async def test_redirect_to_other_port_is_followed() -> None:
    async with scenario(tracker_count=1) as (service, session, url, trackers, clock):
        moved = FakeTracker(reply={b"interval": 1800, b"peers": compact_peer("10.4.4.4", 6004)})
        await moved.start()
        try:
            trackers[0].reply = misbehaving.redirect_to(moved.announce_url)

            _, reply = await announce(session, url, announce_query(7001))

            assert compact_endpoints(reply[b"peers"]) == {compact_peer("10.4.4.4", 6004)}
            assert len(moved.announces) == 1
        finally:
            await moved.stop()


@pytest.mark.parametrize(("retry_after", "suspended_s"), [("120", 120.0), (None, 300.0)])
@pytest.mark.parametrize("code", [429, 503])
async def test_rate_limit_suspends_forwarder(code: int, retry_after: str | None, suspended_s: float) -> None:
    other_hash = b"\x77" * 20
    async with scenario() as (service, session, url, trackers, clock):
        await announce(session, url, announce_query(7001))
        await announce(session, url, announce_query(7002, info_hash=other_hash))
        trackers[0].reply = misbehaving.status(code, retry_after)
        other = only_batch(service, other_hash)
        service.index.schedule(other, START_S + 1800.0 + 1.0)  # due just after the first refresh

        await refresh(service, clock, trackers[0], 1800.0)

        health = service.registry[0]
        until_s = START_S + 1800.0 + suspended_s
        assert health.state is ForwarderState.SUSPENDED
        assert health.until_s == until_s
        assert only_batch(service).due_s == until_s

        # The other infohash's batch is due during the suspension: it is moved, not sent.
        clock.advance(1.0)
        assert service.dispatcher is not None
        service.dispatcher.wake()
        await asyncio.wait_for(_until(lambda: other.due_s == until_s), 5.0)
        assert len(trackers[0].announces) == 3
        assert other.in_index

        _, reply = await announce(session, url, announce_query(7003))
        assert GOOD_PEER in compact_endpoints(reply[b"peers"])

        # After the suspension both batches go out, and one success makes the forwarder active.
        trackers[0].reply = {b"interval": 1800, b"peers": GOOD_PEER}
        clock.now_s = until_s
        service.dispatcher.wake()
        await trackers[0].wait_for_announces(5)
        await service.dispatcher.wait_until_idle()
        assert health.state is ForwarderState.ACTIVE


@pytest.mark.parametrize(("retry_in", "defer_s"), [(5, 300.0), (None, PAIR_FAILURE_DEFER_S)])
async def test_tracker_failure_defers_pair_only(retry_in: int | None, defer_s: float) -> None:
    async with scenario() as (service, session, url, trackers, clock):
        await announce(session, url, announce_query(7001))
        failure: dict[bytes, object] = {b"failure reason": b"torrent not registered"}
        if retry_in is not None:
            failure[b"retry in"] = retry_in
        trackers[0].reply = failure

        await refresh(service, clock, trackers[0], 1800.0)

        assert service.registry[0].state is ForwarderState.ACTIVE
        assert service.registry[0].consecutive_failures == 0
        assert only_batch(service).due_s == START_S + 1800.0 + defer_s


async def test_retry_in_never_stops_pair_for_good() -> None:
    async with scenario() as (service, session, url, trackers, clock):
        trackers[0].reply = {b"failure reason": b"unregistered torrent", b"retry in": b"never"}
        await announce(session, url, announce_query(7001))
        assert service.dispatcher is not None
        await service.dispatcher.wait_until_idle()

        assert service.table.get(INFO_HASH) is None
        assert len(service.index) == 0
        assert service.registry[0].state is ForwarderState.ACTIVE

        # The swarm empties and refills: the pair stays stopped.
        await announce(session, url, announce_query(7001, event="stopped"))
        await announce(session, url, announce_query(7002))
        await service.dispatcher.wait_until_idle()
        assert len(trackers[0].announces) == 1
        assert len(service.index) == 0


async def test_short_interval_is_raised_to_floor() -> None:
    async with scenario() as (service, session, url, trackers, clock):
        trackers[0].reply = {b"interval": 10, b"min interval": 5, b"peers": GOOD_PEER}
        await announce(session, url, announce_query(7001))

        assert only_batch(service).due_s == START_S + 60.0


async def test_refused_connection_disables_then_probe_recovers() -> None:
    async with scenario(probe_base_s=60.0, probe_max_s=600.0) as (service, session, url, trackers, clock):
        await announce(session, url, announce_query(7001))
        good_port = trackers[0].port
        await trackers[0].stop()  # the port now refuses connections

        clock.advance(1800.0)
        assert service.dispatcher is not None
        service.dispatcher.wake()
        await asyncio.wait_for(_until(lambda: service.registry[0].state is ForwarderState.DISABLED), 5.0)
        await service.dispatcher.wait_until_idle()

        health = service.registry[0]
        probe_s = START_S + 1800.0 + 60.0
        assert health.last_failure_kind is FailureKind.REFUSED
        assert health.until_s == probe_s
        assert only_batch(service).due_s == probe_s

        # A failed probe doubles the wait.
        clock.now_s = probe_s
        service.dispatcher.wake()
        await asyncio.wait_for(_until(lambda: health.until_s == probe_s + 120.0), 5.0)
        assert health.state is ForwarderState.DISABLED

        # The tracker comes back on the same port; the next probe re-enables the forwarder.
        revived = FakeTracker(reply={b"interval": 1800, b"peers": GOOD_PEER}, port=good_port)
        await revived.start()
        try:
            clock.now_s = probe_s + 120.0
            service.dispatcher.wake()
            await revived.wait_for_announces(1)
            await service.dispatcher.wait_until_idle()
            assert health.state is ForwarderState.ACTIVE
            assert only_batch(service).due_s == probe_s + 120.0 + 1800.0
        finally:
            await revived.stop()


async def test_consecutive_failures_disable_forwarder() -> None:
    async with scenario(disable_after_failures=3, retry_base_s=1.0, retry_max_s=1.0) as (
        service,
        session,
        url,
        trackers,
        clock,
    ):
        trackers[0].reply = misbehaving.status(500)
        await announce(session, url, announce_query(7001))
        for _ in range(2):
            await refresh(service, clock, trackers[0], 1.0)

        health = service.registry[0]
        assert health.consecutive_failures == 3
        assert health.state is ForwarderState.DISABLED
        assert health.reason == "3 consecutive failures"


async def test_hanging_upstream_never_delays_clients() -> None:
    gate = asyncio.Event()
    async with scenario(tracker_count=2, forwarder_max_inflight=2, workers=8) as (
        service,
        session,
        url,
        trackers,
        clock,
    ):
        await announce(session, url, announce_query(7001))
        trackers[1].hold = gate  # the second upstream stops replying from now on

        # Five new infohashes: their first round waits at most first_announce_wait_ms on the hung upstream.
        hashes = [bytes([0x50 + n]) * 20 for n in range(5)]
        replies = await asyncio.gather(
            *(announce(session, url, announce_query(7100 + n, info_hash=h)) for n, h in enumerate(hashes))
        )
        assert all(b"failure reason" not in reply for _, reply in replies)

        # At most two announces to the hung upstream are in flight; the rest wait for a free slot.
        assert service.registry[1].inflight == 2
        assert len(service.registry[1].waiting) == 3
        assert len(trackers[1].announces) == 1 + 2  # the first infohash's, then two in flight

        # A known infohash is served from the cache while the upstream still hangs.
        status, reply = await announce(session, url, announce_query(7002))
        assert status == 200
        assert GOOD_PEER in compact_endpoints(reply[b"peers"])
        assert not gate.is_set()

        gate.set()
        await trackers[1].wait_for_announces(1 + 5)
        assert service.dispatcher is not None
        await service.dispatcher.wait_until_idle()
        assert service.registry[1].inflight == 0


async def test_slow_upstream_times_out() -> None:
    gate = asyncio.Event()
    async with scenario(upstream_timeout_s=0.2) as (service, session, url, trackers, clock):
        await announce(session, url, announce_query(7001))
        trackers[0].hold = gate

        await refresh(service, clock, trackers[0], 1800.0)

        health = service.registry[0]
        assert health.last_failure_kind is FailureKind.TIMEOUT
        assert health.state is ForwarderState.ACTIVE
        _, reply = await announce(session, url, announce_query(7002))
        assert GOOD_PEER in compact_endpoints(reply[b"peers"])


async def test_connection_reset_is_retryable() -> None:
    async with scenario() as (service, session, url, trackers, clock):
        await announce(session, url, announce_query(7001))

        def reset(recorded: object) -> web.StreamResponse:
            raise ConnectionResetError  # aiohttp closes the connection without a response

        trackers[0].reply = reset
        await refresh(service, clock, trackers[0], 1800.0)

        health = service.registry[0]
        assert health.last_failure_kind in (FailureKind.CONNECTION, FailureKind.SERVER_ERROR)
        assert health.state is ForwarderState.ACTIVE


async def _until(condition: object) -> None:
    """Yield to the event loop until `condition()` holds; callers bound it with wait_for."""
    assert callable(condition)
    while not condition():
        await asyncio.sleep(0)


async def test_three_healthy_three_faulty_upstreams() -> None:
    """20 infohashes over 4 upstream intervals: healthy upstreams get every announce, faulty ones few."""
    hashes = [bytes([0x60 + n]) * 20 for n in range(20)]
    async with scenario(tracker_count=6) as (service, session, url, trackers, clock):
        trackers[3].reply = misbehaving.status(429)
        trackers[4].reply = misbehaving.html_page()
        refused_port = trackers[5].port
        await trackers[5].stop()

        for cycle in range(4):
            if cycle:
                clock.advance(1800.0)
                assert service.dispatcher is not None
                service.dispatcher.wake()
            for number, info_hash in enumerate(hashes):
                await announce(session, url, announce_query(7000 + number, info_hash=info_hash))
            await asyncio.wait_for(_until(lambda: all(len(t.announces) >= 20 * (cycle + 1) for t in trackers[:3])), 10.0)
            assert service.dispatcher is not None
            await service.dispatcher.wait_until_idle()

        counts = [len(tracker.announces) for tracker in trackers[:5]]
        states = [service.registry[index].state for index in range(6)]
        print(f"\nrequests per upstream: {counts} (refused port {refused_port}: no listener)")
        print(f"states: {[state.value for state in states]}")

        assert counts[:3] == [80, 80, 80]
        assert states[:3] == [ForwarderState.ACTIVE] * 3
        assert states[3] is ForwarderState.SUSPENDED
        assert states[4] is ForwarderState.DISABLED
        assert states[5] is ForwarderState.DISABLED
        assert counts[3] <= 4 * service.settings.forwarder_max_inflight
        assert counts[4] <= service.settings.disable_after_failures + 4 + service.settings.forwarder_max_inflight
