"""The /stats page as a browser renders it: headless Debian Chromium takes a screenshot of it."""

import asyncio
import math
import socket
import struct
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web

from aggregator.config import ForwarderConfig, ListenAddress, Settings
from aggregator.forwarder import ForwarderState
from aggregator.service import Service
from tests.fake_tracker import FakeTracker, compact_peer
from tests.realworld import require_tool
from tests.service_harness import announce_query, get_bencoded

pytestmark = pytest.mark.realworld

WINDOW = (1200, 900)
CHROMIUM_TIMEOUT_S = 90.0
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# A blank 1200x900 page compresses to a few kilobytes; text, tables and a chart take far more.
MIN_SCREENSHOT_BYTES = 20_000
INFO_HASH_COUNT = 5


@asynccontextmanager
async def refused_port() -> AsyncIterator[int]:
    """Yield a port of 127.0.0.1 that is bound but not listening, so every connection is refused."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        yield sock.getsockname()[1]


@asynccontextmanager
async def service_with_forwarders() -> AsyncIterator[Service]:
    """Run a service whose forwarders are healthy, rate limited (HTTP 429) and refusing connections."""
    healthy = FakeTracker(reply={b"interval": 1800, b"peers": compact_peer("10.4.4.4", 6881)})
    limited = FakeTracker(reply=lambda recorded: web.Response(status=429, headers={"Retry-After": "900"}))
    async with refused_port() as closed_port:
        for tracker in (healthy, limited):
            await tracker.start()
        forwarders = (
            ForwarderConfig(uri=healthy.announce_url, name="tracker.example:6969", ip=None, host=None),
            ForwarderConfig(uri=limited.announce_url, name="busy.example:80", ip=None, host=None),
            ForwarderConfig(uri=f"http://127.0.0.1:{closed_port}/announce", name="gone.example:443", ip=None, host=None),
        )
        settings = Settings(
            listen=(ListenAddress("127.0.0.1", 0),),
            admin_listen=ListenAddress("127.0.0.1", 0),
            forwarders=forwarders,
            first_announce_wait_ms=2000,
        )
        service = Service(settings)
        try:
            await service.start()
            yield service
        finally:
            await service.stop()
            for tracker in (healthy, limited):
                await tracker.stop()


async def fill(service: Service) -> None:
    """Announce a few infohashes, wait for every forwarder's verdict, and add an hour of backlog samples."""
    host, port = service.bound[0]
    async with aiohttp.ClientSession() as session:
        for number in range(INFO_HASH_COUNT):
            info_hash = bytes([0x50 + number]) * 20
            query = announce_query(7000 + number, info_hash, event="started")
            status, reply = await get_bencoded(session, f"http://{host}:{port}/announce?{query}")
            assert status == 200
            assert b"failure reason" not in reply

    assert service.dispatcher is not None
    await service.dispatcher.wait_until_idle()
    states = [health.state for health in service.registry.forwarders]
    assert states == [ForwarderState.ACTIVE, ForwarderState.SUSPENDED, ForwarderState.DISABLED]

    # A backlog that rises and falls twice over the last hour, one sample every 10 s.
    first_s = time.time() - 3600
    for step in range(360):
        backlog = round(400 * math.sin(step / 360 * 2 * math.pi) ** 2 + step / 4)
        service.history.add(first_s + step * 10, backlog)


def png_size(path: Path) -> tuple[int, int]:
    """Read width and height from the IHDR chunk, which follows the signature in every PNG."""
    header = path.read_bytes()[:24]
    assert header[:8] == PNG_SIGNATURE, f"{path} is not a PNG: {header!r}"
    assert header[12:16] == b"IHDR"
    width, height = struct.unpack(">II", header[16:24])

    return width, height


async def take_screenshot(chromium: str, url: str, workdir: Path) -> Path:
    """Render `url` with headless Chromium and return the PNG; fail with its output if it does not finish."""
    screenshot = workdir / "stats-page.png"
    output = workdir / "chromium.log"
    argv = [
        chromium,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        f"--user-data-dir={workdir / 'profile'}",
        f"--screenshot={screenshot}",
        f"--window-size={WINDOW[0]},{WINDOW[1]}",
        url,
    ]
    with output.open("wb") as log_file:
        process = await asyncio.create_subprocess_exec(
            *argv, stdin=asyncio.subprocess.DEVNULL, stdout=log_file, stderr=asyncio.subprocess.STDOUT
        )
        try:
            exit_code = await asyncio.wait_for(process.wait(), CHROMIUM_TIMEOUT_S)
        except asyncio.TimeoutError:
            process.kill()
            await process.wait()
            pytest.fail(f"chromium did not finish within {CHROMIUM_TIMEOUT_S:.0f} s\n{output.read_text(errors='replace')}")

    assert exit_code == 0, f"chromium exited with {exit_code}\n{output.read_text(errors='replace')}"
    assert screenshot.is_file(), f"chromium wrote no screenshot\n{output.read_text(errors='replace')}"

    return screenshot


async def test_stats_page_screenshot(tmp_path: Path) -> None:
    chromium = require_tool("chromium")
    async with service_with_forwarders() as service:
        await fill(service)
        assert service.admin_bound is not None
        host, port = service.admin_bound
        screenshot = await take_screenshot(chromium, f"http://{host}:{port}/stats", tmp_path)

    assert png_size(screenshot) == WINDOW
    assert screenshot.stat().st_size > MIN_SCREENSHOT_BYTES
