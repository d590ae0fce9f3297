"""Fake upstream HTTP trackers for bench/burst.py, each with its own latency or failure mode.

All of them run in the calling process on 127.0.0.1: one aiohttp application, one listening
port per tracker, and the announce path `/<index>/announce`. The trackers count every request
per (forwarder index, infohash) pair into a `RequestCounts`, which the benchmark swaps out
between the phases that it measures.
"""

import asyncio
import socket
import time
from collections import Counter
from dataclasses import dataclass, field

import bencode2
from aiohttp import web

from aggregator.query import parse_query

# Seconds a tracker of each kind waits before it replies.
FAST_DELAY_S = 0.020
SLOW_DELAY_S = 2.0

# Tracker kinds. bench/burst.py sets how many of the first four with --fast, --slow, --dead and
# --limited, and uses hanging trackers in its overdue test.
FAST = "fast"  # replies after FAST_DELAY_S
SLOW = "slow"  # replies after SLOW_DELAY_S
DEAD = "dead"  # a closed port: every connection is refused
LIMITED = "limited"  # replies like a fast tracker K times, then HTTP 429 without Retry-After
HANGING = "hanging"  # accepts the request and never replies, so the client times out
KINDS = (FAST, SLOW, DEAD, LIMITED, HANGING)

# interval 1800 s, so within one benchmark run each pair is due only once after a success.
_PEERS = b"".join(bytes([127, 0, 2, index]) + (30000 + index).to_bytes(2, "big") for index in range(1, 6))
REPLY_BODY = bencode2.bencode(
    {b"interval": 1800, b"min interval": 900, b"complete": 3, b"incomplete": 2, b"peers": _PEERS}
)


@dataclass
class RequestCounts:
    """Requests that the fake trackers received during one phase of the benchmark."""

    per_pair: Counter[tuple[int, bytes]] = field(default_factory=Counter)
    first_seen_s: dict[tuple[int, bytes], float] = field(default_factory=dict)  # time.monotonic()
    per_forwarder: Counter[int] = field(default_factory=Counter)
    # A repeated request to a pair that has no successful reply yet (a retry after HTTP 429, a
    # timeout, or a request still waiting) counts in `retries`. One to a pair that already got a
    # success counts in `repeats_after_success`: within one upstream interval that is extra traffic.
    retries: int = 0
    repeats_after_success: int = 0
    repeats_by_forwarder: Counter[int] = field(default_factory=Counter)  # repeats_after_success per tracker
    succeeded_pairs: set[tuple[int, bytes]] = field(default_factory=set)
    statuses: Counter[int] = field(default_factory=Counter)
    replies_after_client_left: int = 0  # the client closed the connection while the tracker waited
    in_flight: int = 0
    max_in_flight: int = 0

    @property
    def total(self) -> int:
        return sum(self.per_forwarder.values())


class FakeUpstreams:
    """One fake tracker per entry of `kinds`, tracker i reachable at `announce_urls[i]`."""

    def __init__(self, kinds: list[str], limited_after: int) -> None:
        unknown = sorted(set(kinds) - set(KINDS))
        if unknown:
            raise ValueError(f"unknown tracker kinds {unknown}, expected some of {KINDS}")

        self.kinds = kinds
        self.limited_after = limited_after  # K: requests a LIMITED tracker serves before HTTP 429
        self.counts = RequestCounts()
        self.announce_urls: list[str] = []
        self._runner: web.AppRunner | None = None
        self._release_hanging = asyncio.Event()

    async def start(self) -> None:
        app = web.Application()
        app.router.add_get("/{index}/announce", self._handle)
        self._runner = web.AppRunner(app, access_log=None, handle_signals=False, shutdown_timeout=1.0)
        await self._runner.setup()

        for index, kind in enumerate(self.kinds):
            port = _closed_port() if kind == DEAD else await self._listen()
            self.announce_urls.append(f"http://127.0.0.1:{port}/{index}/announce")

    async def _listen(self) -> int:
        assert self._runner is not None
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.bind(("127.0.0.1", 0))
        site = web.SockSite(self._runner, sock)
        await site.start()

        port: int = sock.getsockname()[1]
        return port

    def new_phase(self) -> RequestCounts:
        """Start counting from zero, let hanging requests of the last phase go, and return the old counts."""
        finished = self.counts
        self.counts = RequestCounts()
        self._release_hanging.set()
        self._release_hanging = asyncio.Event()

        return finished

    async def stop(self) -> None:
        self._release_hanging.set()
        if self._runner is not None:
            await self._runner.cleanup()

    async def _handle(self, request: web.Request) -> web.Response:
        index = int(request.match_info["index"])
        kind = self.kinds[index]
        counts = self.counts
        info_hash = b""
        for name, value in parse_query(request.rel_url.raw_query_string):
            if name == "info_hash":
                info_hash = value
                break

        pair = (index, info_hash)
        counts.per_pair[pair] += 1
        counts.per_forwarder[index] += 1
        counts.first_seen_s.setdefault(pair, time.monotonic())
        if pair in counts.succeeded_pairs:
            counts.repeats_after_success += 1
            counts.repeats_by_forwarder[index] += 1
        elif counts.per_pair[pair] > 1:
            counts.retries += 1

        counts.in_flight += 1
        counts.max_in_flight = max(counts.max_in_flight, counts.in_flight)
        try:
            status = await self._reply_status(kind, index, counts)
        finally:
            counts.in_flight -= 1

        counts.statuses[status] += 1
        if request.transport is None or request.transport.is_closing():
            # The client gave up (timed out) before the reply, so this is no success for it.
            counts.replies_after_client_left += 1
            return web.Response(status=status)

        if status != 200:
            return web.Response(status=status, text="unavailable")

        counts.succeeded_pairs.add(pair)
        return web.Response(body=REPLY_BODY, content_type="text/plain")

    async def _reply_status(self, kind: str, index: int, counts: RequestCounts) -> int:
        """Wait for the delay of the tracker's kind, then return the HTTP status to send."""
        if kind == SLOW:
            await asyncio.sleep(SLOW_DELAY_S)
            return 200

        if kind == HANGING:
            await self._release_hanging.wait()
            return 503

        await asyncio.sleep(FAST_DELAY_S)
        if kind == LIMITED and counts.per_forwarder[index] > self.limited_after:
            return 429

        return 200


def _closed_port() -> int:
    """Return a 127.0.0.1 port that nothing listens on, so connections to it are refused.

    NOTE: another process could bind the port later; the tracker then stops being dead.
    """
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    port: int = sock.getsockname()[1]
    sock.close()

    return port
