"""An in-process aggregator on 127.0.0.1 with an aiohttp client, for the HTTP front-end tests."""

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import replace
from typing import Any
from urllib.parse import quote_from_bytes

import aiohttp
import bencode2

from aggregator.config import ForwarderConfig, ListenAddress, Settings
from aggregator.service import Service
from tests.fake_tracker import FakeTracker


def settings_for(trackers: list[FakeTracker], **overrides: Any) -> Settings:
    """Settings with one forwarder per fake tracker, port 0 on 127.0.0.1 and no admin listener."""
    forwarders = tuple(
        ForwarderConfig(uri=tracker.announce_url, name=f"fake{number}", ip=None, host=None)
        for number, tracker in enumerate(trackers)
    )
    settings = Settings(
        listen=(ListenAddress("127.0.0.1", 0),),
        forwarders=forwarders,
        first_announce_wait_ms=2000,
        admin_listen=None,
    )

    return replace(settings, **overrides)


@asynccontextmanager
async def serving(
    settings: Settings, clock: Callable[[], float] | None = None
) -> AsyncIterator[tuple[Service, aiohttp.ClientSession, str]]:
    """Start the service and yield it, a client session and the base URL of its first listener."""
    service = Service(settings, clock=clock) if clock is not None else Service(settings)
    await service.start()
    try:
        host, port = service.bound[0]
        async with aiohttp.ClientSession() as session:
            yield service, session, base_url(host, port)
    finally:
        await service.stop()


@asynccontextmanager
async def fake_trackers(count: int) -> AsyncIterator[list[FakeTracker]]:
    trackers = [FakeTracker() for _ in range(count)]
    for tracker in trackers:
        await tracker.start()
    try:
        yield trackers
    finally:
        for tracker in trackers:
            await tracker.stop()


def base_url(host: str, port: int) -> str:
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


def announce_query(port: int, info_hash: bytes, **extra: str) -> str:
    """Build an announce query for a leecher on `port`; `extra` adds or replaces parameters."""
    fields = {
        "info_hash": quote_from_bytes(info_hash, safe=""),
        "peer_id": quote_from_bytes(b"-TR4000-" + port.to_bytes(12, "big"), safe=""),
        "port": str(port),
        "uploaded": "0",
        "downloaded": "0",
        "left": "1000",
        "compact": "1",
    }
    fields.update(extra)

    return "&".join(f"{name}={value}" for name, value in fields.items())


def scrape_query(*info_hashes: bytes) -> str:
    return "&".join(f"info_hash={quote_from_bytes(info_hash, safe='')}" for info_hash in info_hashes)


async def get_bencoded(
    session: aiohttp.ClientSession, url: str, headers: dict[str, str] | None = None
) -> tuple[int, dict[bytes, Any]]:
    """GET `url` and return the status and the decoded bencoded dictionary of the body."""
    async with session.get(url, headers=headers) as response:
        body = await response.read()
        reply = bencode2.bdecode(body)
        assert isinstance(reply, dict), body

        return response.status, reply


def split_compact(data: object, width: int) -> list[bytes]:
    assert isinstance(data, bytes)
    assert len(data) % width == 0, f"{len(data)} bytes is not a multiple of {width}"

    return [data[offset : offset + width] for offset in range(0, len(data), width)]
