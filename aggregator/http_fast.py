"""A lean HTTP/1.1 server for the client port: GET /announce and GET /scrape only.

Announces are tiny requests that many clients send on a new connection each time. aiohttp's
application stack costs about 130 µs per connection, which caps it well below what opentracker
serves. A bare asyncio protocol with httptools' C parser does the same work in a fraction of
that (docs/benchmarks.md), so the client port is served here, with keep-alive and pipelining,
while the admin port stays on aiohttp.
"""

import asyncio
import collections
import socket
from collections.abc import Awaitable
from dataclasses import dataclass
from typing import cast

import httptools
import structlog
from multidict import CIMultiDict, CIMultiDictProxy, MultiMapping

from aggregator.http_front import AnnounceHandler, ScrapeHandler

log = structlog.get_logger("aggregator.http")

# A request line plus headers above this size is rejected: announces are a few hundred bytes.
MAX_HEAD_BYTES = 16 * 1024
# A keep-alive connection that sends nothing for one to two of these periods is closed.
IDLE_TIMEOUT_S = 15.0
# Pending connections the kernel queues; a short queue drops SYNs during a long loop pause.
LISTEN_BACKLOG = 1024
# Only these request headers are kept: the client-address rules read them.
_KEPT_HEADERS = frozenset({b"x-forwarded-for", b"x-real-ip"})
_EMPTY_HEADERS: CIMultiDictProxy[str] = CIMultiDictProxy(CIMultiDict())


@dataclass(slots=True)
class _Request:
    """A request queued behind one whose reply waits for upstreams (pipelining keeps the order)."""

    method: bytes
    target: bytes  # path and query, as sent
    headers: MultiMapping[str]
    keep_alive: bool
    http_1_0: bool
    reply: Awaitable[tuple[int, bytes]] | None = None  # set when the reply was started already


class FastHttpServer:
    """Serves /announce and /scrape on listening sockets through `_Connection` protocols."""

    def __init__(self, announce: AnnounceHandler, scrape: ScrapeHandler) -> None:
        self.announce = announce
        self.scrape = scrape
        self._servers: list[asyncio.Server] = []
        self.connections: set["_Connection"] = set()
        self.busy: set["_Connection"] = set()  # connections whose replies wait for upstreams
        self._drained: asyncio.Future[None] | None = None
        self._idle_sweep: asyncio.TimerHandle | None = None
        self.closing = False

    async def listen(self, sock: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        # create_server listens again with its own backlog (100 by default), so pass ours.
        server = await loop.create_server(lambda: _Connection(self, loop), sock=sock, backlog=LISTEN_BACKLOG)
        self._servers.append(server)
        if self._idle_sweep is None:
            self._idle_sweep = loop.call_later(IDLE_TIMEOUT_S, self._close_idle, loop)

    def _close_idle(self, loop: asyncio.AbstractEventLoop) -> None:
        """Close the connections that read nothing since the last sweep and have no reply pending.

        One timer for the whole server: a timer per connection would cost more than the sweep
        when most clients open a connection per announce.
        """
        for connection in list(self.connections):
            connection.check_idle()
        self._idle_sweep = loop.call_later(IDLE_TIMEOUT_S, self._close_idle, loop)

    def note_idle(self, connection: "_Connection") -> None:
        self.busy.discard(connection)
        if not self.busy and self._drained is not None and not self._drained.done():
            self._drained.set_result(None)

    async def close(self, grace_s: float) -> None:
        """Stop accepting, let requests in progress finish for up to `grace_s`, then close every connection."""
        self.closing = True
        for server in self._servers:
            server.close()
        if self._idle_sweep is not None:
            self._idle_sweep.cancel()
            self._idle_sweep = None

        if self.busy and grace_s > 0:
            self._drained = asyncio.get_running_loop().create_future()
            await asyncio.wait({self._drained}, timeout=grace_s)

        for connection in list(self.connections):
            connection.abort()
        for server in self._servers:
            await server.wait_closed()
        self._servers.clear()


class _Connection(asyncio.Protocol):
    """One client connection: parses requests with httptools and replies in request order.

    A reply that needs no upstream wait is written from the parser callback itself, without a
    task: that is nearly every announce, and a task per request would cost more than the
    announce. Only a reply that waits starts a task, and requests pipelined behind it queue.
    """

    def __init__(self, server: FastHttpServer, loop: asyncio.AbstractEventLoop) -> None:
        self._server = server
        self._loop = loop  # kept: asyncio.get_running_loop() costs a getpid() call per use
        self._transport: asyncio.Transport | None = None
        self._parser = httptools.HttpRequestParser(self)
        self._peer = ""
        self._pending: collections.deque[_Request] = collections.deque()
        self._worker: asyncio.Task[None] | None = None
        # Reads so far, and at the last idle sweep: a cheap sign of activity, so that a read does
        # not have to touch a timer.
        self._reads = 0
        self._reads_checked = -1
        # The request being parsed.
        self._target = b""
        self._headers: CIMultiDict[str] | None = None
        self._head_bytes = 0

    # asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses, but they have the same methods.
        self._transport = cast(asyncio.Transport, transport)
        peer = transport.get_extra_info("peername")
        self._peer = str(peer[0]) if peer else ""
        self._server.connections.add(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self._server.connections.discard(self)
        self._transport = None
        if self._worker is not None:
            self._worker.cancel()
        self._server.note_idle(self)

    def data_received(self, data: bytes) -> None:
        self._reads += 1
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._reject(400, b"upgrade is not supported")
        except httptools.HttpParserError:
            # httptools wraps an exception raised in a callback, such as _HeadTooLarge, in its own.
            if self._head_bytes > MAX_HEAD_BYTES:
                self._reject(431, b"request head too large")
            else:
                self._reject(400, b"invalid HTTP request")

    def abort(self) -> None:
        if self._transport is not None:
            self._transport.close()

    # httptools callbacks

    def on_message_begin(self) -> None:
        self._target = b""
        self._headers = None
        self._head_bytes = 0

    def on_url(self, url: bytes) -> None:
        self._target += url
        self._count_head(len(url))

    def on_header(self, name: bytes, value: bytes) -> None:
        self._count_head(len(name) + len(value))
        if name.lower() in _KEPT_HEADERS:
            if self._headers is None:
                self._headers = CIMultiDict()
            self._headers.add(name.decode("latin-1"), value.decode("latin-1"))

    def on_message_complete(self) -> None:
        if self._transport is None:
            return  # closed by an earlier request of the same read

        parser = self._parser
        headers = CIMultiDictProxy(self._headers) if self._headers is not None else _EMPTY_HEADERS
        keep_alive = parser.should_keep_alive()
        http_1_0 = keep_alive and parser.get_http_version() == "1.0"  # only a kept HTTP/1.0 connection needs to know
        request = _Request(parser.get_method(), self._target, headers, keep_alive, http_1_0)
        if self._worker is not None:
            self._pending.append(request)  # pipelined behind a reply that waits
            return

        try:
            reply = self._respond(request)
        except Exception:
            self._crashed()
            return

        if isinstance(reply, tuple):
            self._send(request, reply[0], reply[1])
            return

        request.reply = reply
        self._pending.append(request)
        self._server.busy.add(self)
        self._worker = self._loop.create_task(self._serve_pending())

    # Serving

    async def _serve_pending(self) -> None:
        """Serve queued requests one by one, so pipelined replies keep the request order."""
        try:
            while self._pending and self._transport is not None:
                request = self._pending.popleft()
                reply = request.reply if request.reply is not None else self._respond(request)
                status, body = reply if isinstance(reply, tuple) else await reply
                if not self._send(request, status, body):
                    return
        except Exception:
            self._crashed()
        finally:
            self._worker = None
            self._server.note_idle(self)

    def _respond(self, request: _Request) -> tuple[int, bytes] | Awaitable[tuple[int, bytes]]:
        if request.method != b"GET":
            return 405, b""

        path, _, query = request.target.partition(b"?")
        if path == b"/announce":
            body = self._server.announce.begin(query, self._peer, request.headers)
            return (200, body) if isinstance(body, bytes) else _with_status(body)
        if path == b"/scrape":
            return 200, self._server.scrape.respond(query, self._peer)

        return 404, b""

    def _send(self, request: _Request, status: int, body: bytes) -> bool:
        """Write one reply; return whether the connection stays open."""
        keep_alive = request.keep_alive and not self._server.closing
        self._write(status, body, keep_alive, request.http_1_0)
        if not keep_alive:
            self.abort()

        return keep_alive

    def _crashed(self) -> None:
        log.exception("http.request.crashed", client=self._peer)
        self._write(500, b"", keep_alive=False, http_1_0=False)
        self.abort()

    def _write(self, status: int, body: bytes, keep_alive: bool, http_1_0: bool) -> None:
        if self._transport is None:
            return

        if status == 200 and keep_alive and not http_1_0:
            # The usual case, formatted in one step from a prepared start.
            self._transport.write(b"%s%d\r\n\r\n%s" % (_OK_HEAD, len(body), body))
            return

        connection = b""
        if not keep_alive:
            connection = b"Connection: close\r\n"
        elif http_1_0:
            connection = b"Connection: keep-alive\r\n"
        head = b"HTTP/1.1 %d %s\r\nContent-Type: text/plain\r\nContent-Length: %d\r\n%s\r\n" % (
            status,
            _REASONS.get(status, b"Error"),
            len(body),
            connection,
        )
        self._transport.write(head + body)

    def _reject(self, status: int, body: bytes) -> None:
        self._write(status, body, keep_alive=False, http_1_0=False)
        self.abort()

    def _count_head(self, size: int) -> None:
        self._head_bytes += size
        if self._head_bytes > MAX_HEAD_BYTES:
            raise _HeadTooLarge

    def check_idle(self) -> None:
        """Close the connection if it read nothing since the last check and has no reply pending."""
        if self._reads == self._reads_checked and self._worker is None:
            self.abort()
            return

        self._reads_checked = self._reads


async def _with_status(body: Awaitable[bytes]) -> tuple[int, bytes]:
    return 200, await body


class _HeadTooLarge(Exception):
    """The request line and headers passed MAX_HEAD_BYTES."""


_OK_HEAD = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: "

_REASONS = {
    200: b"OK",
    400: b"Bad Request",
    404: b"Not Found",
    405: b"Method Not Allowed",
    431: b"Request Header Fields Too Large",
    500: b"Internal Server Error",
}
