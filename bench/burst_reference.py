"""A reference model for bench/burst.py: a tracker that queues one upstream job per client announce.

This is the design that the aggregator's batches replace. Each client announce creates one
job per forwarder, keyed by (infohash, forwarder, peer_id). A job goes into a bounded FIFO
unless the same key is already queued, and a fixed number of workers send the jobs upstream
one by one, without retries or back-off. The HTTP handler replies to the client as soon as
the jobs are queued, with an empty peer list.
"""

import asyncio
import socket
import time
from collections import Counter
from dataclasses import dataclass, field
from urllib.parse import quote_from_bytes

import aiohttp
import bencode2
from aiohttp import web

from aggregator.announce import AnnounceLimits, parse_announce
from aggregator.errors import RequestError

CLIENT_REPLY = bencode2.bencode(
    {b"interval": 1800, b"min interval": 900, b"complete": 0, b"incomplete": 0, b"peers": b""}
)


@dataclass
class ReferenceStats:
    """Counts of the reference model over one run."""

    offered: int = 0  # jobs created: client announces times forwarders
    queued: int = 0
    dropped: int = 0  # the FIFO was full
    suppressed: int = 0  # the same (infohash, forwarder, peer_id) was still queued
    executed: int = 0
    peak_queue: int = 0
    outcomes: Counter[str] = field(default_factory=Counter)  # "ok", "http_429", "refused", ...
    first_job_s: float | None = None  # time.monotonic() when the first job started
    last_job_s: float | None = None  # time.monotonic() when the last job finished


@dataclass(frozen=True, slots=True)
class Job:
    info_hash: bytes
    forwarder_index: int
    peer_id: bytes
    port: int


class JobQueueReference:
    """Per-announce job queue with `workers` upstream workers and a FIFO of `capacity` jobs."""

    def __init__(
        self,
        announce_urls: list[str],
        workers: int,
        capacity: int,
        timeout_s: float,
        connect_timeout_s: float,
    ) -> None:
        self._announce_urls = announce_urls
        self._workers = workers
        self._capacity = capacity
        self._timeout = aiohttp.ClientTimeout(total=timeout_s, sock_connect=connect_timeout_s)
        self._limits = AnnounceLimits(default_numwant=50, max_numwant=200)
        self._queue: asyncio.Queue[Job] = asyncio.Queue(maxsize=capacity)
        self._pending: set[tuple[bytes, int, bytes]] = set()
        self._busy = 0
        self._tasks: list[asyncio.Task[None]] = []
        self._session: aiohttp.ClientSession | None = None
        self._runner: web.AppRunner | None = None
        self.stats = ReferenceStats()
        self.port = 0

    @property
    def queue_length(self) -> int:
        return self._queue.qsize()

    @property
    def idle(self) -> bool:
        return self._queue.empty() and self._busy == 0

    async def start(self) -> None:
        # One connection per worker, as the aggregator's session has one per configured worker.
        self._session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=self._workers))
        loop = asyncio.get_running_loop()
        self._tasks = [loop.create_task(self._work(), name=f"reference-worker-{n}") for n in range(self._workers)]

        app = web.Application()
        app.router.add_get("/announce", self._handle)
        self._runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await self._runner.setup()
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.bind(("127.0.0.1", 0))
        # A backlog of 1024, the value that the service's _bind passes to listen(), so that a burst of
        # new client connections does not overflow the accept queue of this server.
        await web.SockSite(self._runner, sock, backlog=1024).start()
        self.port = sock.getsockname()[1]

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._session is not None:
            await self._session.close()

    async def _handle(self, request: web.Request) -> web.Response:
        try:
            announce = parse_announce(request.rel_url.raw_query_string, self._limits)
        except RequestError as error:
            return web.Response(body=bencode2.bencode({b"failure reason": str(error).encode()}))

        stats = self.stats
        for forwarder_index in range(len(self._announce_urls)):
            stats.offered += 1
            key = (announce.info_hash, forwarder_index, announce.peer_id)
            if key in self._pending:
                stats.suppressed += 1
                continue

            if self._queue.full():
                stats.dropped += 1
                continue

            self._pending.add(key)
            self._queue.put_nowait(Job(announce.info_hash, forwarder_index, announce.peer_id, announce.port))
            stats.queued += 1
        stats.peak_queue = max(stats.peak_queue, self._queue.qsize())

        return web.Response(body=CLIENT_REPLY, content_type="text/plain")

    async def _work(self) -> None:
        while True:
            job = await self._queue.get()
            self._pending.discard((job.info_hash, job.forwarder_index, job.peer_id))
            self._busy += 1
            if self.stats.first_job_s is None:
                self.stats.first_job_s = time.monotonic()
            try:
                outcome = await self._send(job)
            finally:
                self._busy -= 1
            self.stats.executed += 1
            self.stats.outcomes[outcome] += 1
            self.stats.last_job_s = time.monotonic()

    async def _send(self, job: Job) -> str:
        """Send one upstream announce and return its outcome: "ok", "http_<status>" or the error kind."""
        assert self._session is not None
        query = (
            f"info_hash={quote_from_bytes(job.info_hash, safe='')}&peer_id={quote_from_bytes(job.peer_id, safe='')}"
            f"&port={job.port}&uploaded=0&downloaded=0&left=1000&compact=1&numwant=200"
        )
        url = f"{self._announce_urls[job.forwarder_index]}?{query}"
        try:
            async with self._session.get(url, timeout=self._timeout) as response:
                await response.read()
                return "ok" if response.status == 200 else f"http_{response.status}"
        except TimeoutError:
            return "timeout"
        except aiohttp.ClientConnectorError as error:
            return "refused" if isinstance(error.os_error, ConnectionRefusedError) else "connection"
        except aiohttp.ClientError:
            return "connection"
