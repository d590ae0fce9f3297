"""Graceful shutdown of `python -m aggregator` on SIGTERM while an upstream announce is in flight.

The upstream is a fake tracker in the test's event loop that delays its reply until the test
sets an event, so the announce is in flight for exactly as long as each test needs. Blocking helpers
(process start, log waits, urllib requests) run in threads, so the fake tracker keeps serving.
"""

import asyncio
import os
import signal
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp

from tests.fake_tracker import FakeTracker, compact_peer
from tests.realworld import RunningService, http_announce, random_peer_id, start_aggregator

INFO_HASH = bytes(range(0xA0, 0xB4))
UPSTREAM_PEER = ("10.5.5.5", 6000)
LOG_TIMEOUT_S = 10.0
EXIT_TIMEOUT_S = 30.0
# With drain_timeout_s 1, the process must be gone this soon after SIGTERM.
SHORT_DRAIN_EXIT_S = 6.0


@asynccontextmanager
async def held_tracker() -> AsyncIterator[tuple[FakeTracker, asyncio.Event]]:
    """A fake upstream whose replies wait for the returned event; stopping it releases them."""
    gate = asyncio.Event()
    tracker = FakeTracker(reply={b"interval": 1800, b"peers": compact_peer(*UPSTREAM_PEER)}, hold=gate)
    await tracker.start()
    try:
        yield tracker, gate
    finally:
        await tracker.stop()


async def start(tmp_path: Path, tracker: FakeTracker, **settings: Any) -> RunningService:
    config = {"listen": "127.0.0.1:0", "forwarders": [tracker.announce_url], **settings}

    return await asyncio.to_thread(start_aggregator, tmp_path, config)


async def wait_for_event(service: RunningService, event: str) -> dict[str, Any]:
    return await asyncio.to_thread(
        service.wait_for_log, lambda record: record.get("event") == event, LOG_TIMEOUT_S, f"the {event} line"
    )


async def announce_started(service: RunningService, port: int) -> dict[bytes, Any]:
    return await asyncio.to_thread(
        http_announce, service.announce_url, INFO_HASH, peer_id=random_peer_id(), port=port, left=100, event="started"
    )


def event_position(service: RunningService, event: str) -> int:
    events = [record.get("event") for record in service.log_records]
    assert events.count(event) == 1, f"{event} logged {events.count(event)} times: {events}"

    return events.index(event)


async def test_sigterm_waits_for_upstream_reply(tmp_path: Path) -> None:
    async with held_tracker() as (tracker, gate):
        # No first-announce wait, so the client reply does not wait for the held upstream.
        with await start(tmp_path, tracker, first_announce_wait_ms=0, drain_timeout_s=20) as service:
            admin = await asyncio.to_thread(
                service.wait_for_log,
                lambda record: record.get("event") == "listening" and record.get("transport") == "admin",
                LOG_TIMEOUT_S,
                "the admin listening line",
            )
            reply = await announce_started(service, 7001)
            assert b"failure reason" not in reply
            await tracker.wait_for_announces(1)

            os.kill(service.pid, signal.SIGTERM)
            drain_started = await wait_for_event(service, "drain.started")
            assert drain_started["upstream_in_flight"] == 1

            # The drain waits for the held reply, so the admin listener still serves /readyz.
            readyz_url = f"http://{admin['host']}:{admin['port']}/readyz"
            async with aiohttp.ClientSession() as session, session.get(readyz_url) as response:
                assert response.status == 503
            assert service.poll() is None

            gate.set()
            exit_code = await asyncio.to_thread(service.wait_for_exit, EXIT_TIMEOUT_S)

    assert exit_code == 0, service.describe()
    assert event_position(service, "drain.started") < event_position(service, "drain.finished")
    finished = next(record for record in service.log_records if record.get("event") == "drain.finished")
    assert finished["upstream_drained"] is True
    assert finished["upstream_cancelled"] == 0
    assert len(tracker.announces) == 1


async def test_drain_timeout_cancels_upstream(tmp_path: Path) -> None:
    async with held_tracker() as (tracker, _):
        with await start(tmp_path, tracker, first_announce_wait_ms=0, drain_timeout_s=1) as service:
            await announce_started(service, 7001)
            await tracker.wait_for_announces(1)

            signalled_s = time.monotonic()
            os.kill(service.pid, signal.SIGTERM)
            exit_code = await asyncio.to_thread(service.wait_for_exit, EXIT_TIMEOUT_S)
            elapsed_s = time.monotonic() - signalled_s

    assert exit_code == 0, service.describe()
    assert elapsed_s < SHORT_DRAIN_EXIT_S, service.describe()
    finished = next(record for record in service.log_records if record.get("event") == "drain.finished")
    assert finished["upstream_drained"] is False
    assert finished["upstream_cancelled"] == 1
    assert event_position(service, "drain.started") < event_position(service, "drain.finished")


async def test_client_waiting_on_upstream_gets_reply(tmp_path: Path) -> None:
    async with held_tracker() as (tracker, gate):
        # The first announce of a new infohash waits up to 20 s for the held upstream reply.
        with await start(tmp_path, tracker, first_announce_wait_ms=20_000, drain_timeout_s=20) as service:
            client = asyncio.create_task(announce_started(service, 7001))
            await tracker.wait_for_announces(1)

            os.kill(service.pid, signal.SIGTERM)
            await wait_for_event(service, "drain.started")
            assert not client.done(), "the client got its reply before the upstream replied"

            gate.set()
            reply = await asyncio.wait_for(client, LOG_TIMEOUT_S)
            exit_code = await asyncio.to_thread(service.wait_for_exit, EXIT_TIMEOUT_S)

    assert b"failure reason" not in reply, reply
    assert reply[b"peers"] == compact_peer(*UPSTREAM_PEER)
    assert reply[b"interval"] == 1800
    assert exit_code == 0, service.describe()
    finished = next(record for record in service.log_records if record.get("event") == "drain.finished")
    assert finished["upstream_drained"] is True
