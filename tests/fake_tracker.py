"""A scriptable upstream tracker on 127.0.0.1 for faults and counts that a real tracker cannot show.

It records every announce (the raw query and headers) and replies with what the test sets.
"""

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import bencode2
from aiohttp import web

from aggregator.query import parse_query


@dataclass
class RecordedAnnounce:
    raw_query: str
    fields: dict[str, bytes]
    headers: dict[str, str]


@dataclass
class FakeTracker:
    """Replies to /announce with `reply` (a dict to bencode, raw bytes, or a web.Response factory)."""

    reply: Any = field(default_factory=lambda: {b"interval": 1800, b"peers": b""})
    announces: list[RecordedAnnounce] = field(default_factory=list)
    port: int = 0
    hold: asyncio.Event | None = None  # when set, replies wait until the event is set
    on_announce: Callable[[RecordedAnnounce], None] | None = None
    _runner: web.AppRunner | None = None
    _arrived: asyncio.Condition | None = None

    @property
    def announce_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/announce"

    async def start(self) -> None:
        self._arrived = asyncio.Condition()
        app = web.Application()
        app.router.add_get("/announce", self._handle)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", self.port)  # port 0 lets the OS choose
        await site.start()
        server = site._server
        assert server is not None
        self.port = server.sockets[0].getsockname()[1]  # type: ignore[union-attr]

    async def stop(self) -> None:
        if self.hold is not None:
            self.hold.set()
        if self._runner is not None:
            await self._runner.cleanup()

    async def wait_for_announces(self, count: int, timeout_s: float = 5.0) -> list[RecordedAnnounce]:
        """Wait until at least `count` announces arrived in total."""
        assert self._arrived is not None
        async with self._arrived:
            await asyncio.wait_for(self._arrived.wait_for(lambda: len(self.announces) >= count), timeout_s)

        return self.announces

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        raw_query = request.rel_url.raw_query_string
        recorded = RecordedAnnounce(raw_query, dict(parse_query(raw_query)), dict(request.headers))
        self.announces.append(recorded)
        if self.on_announce is not None:
            self.on_announce(recorded)
        assert self._arrived is not None
        async with self._arrived:
            self._arrived.notify_all()

        if self.hold is not None:
            await self.hold.wait()

        reply = self.reply
        if callable(reply):
            response: web.StreamResponse = reply(recorded)
            return response
        if isinstance(reply, bytes):
            return web.Response(body=reply)

        return web.Response(body=bencode2.bencode(reply))


def compact_peer(ip: str, port: int) -> bytes:
    return bytes(int(part) for part in ip.split(".")) + port.to_bytes(2, "big")
