"""A minimal HTTP/1.1 GET client on asyncio protocols, for sending many announces from bench/burst.py.

The load generator shares one event loop with the service it measures, so it must cost little
CPU per request. With aiohttp's client at 2,000 announces/s, the shared loop was saturated on
the 2-vCPU benchmark machine and the client latency measured mostly the client itself. This
client keeps up to `max_connections` keep-alive connections, sends one request at a time on
each, and reads replies framed by Content-Length, as the service's HTTP servers send them.
Chunked replies are not supported.
"""

import asyncio
from collections import deque

HEADER_END = b"\r\n\r\n"


class HttpReplyError(Exception):
    """The server closed the connection or sent a reply this client cannot frame."""


class _Connection(asyncio.Protocol):
    def __init__(self, client: "RawHttpClient") -> None:
        self._client = client
        self.transport: asyncio.Transport | None = None
        self._buffer = bytearray()
        self.reply: asyncio.Future[tuple[int, bytes]] | None = None
        self.open = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's TCPTransport is not a subclass of asyncio.Transport, so no isinstance check here.
        self.transport = transport  # type: ignore[assignment]
        self.open = True

    def connection_lost(self, exc: Exception | None) -> None:
        self.open = False
        self._client.forget(self)
        if self.reply is not None and not self.reply.done():
            self.reply.set_exception(HttpReplyError(f"connection closed before the reply: {exc}"))

    def data_received(self, data: bytes) -> None:
        self._buffer += data
        end = self._buffer.find(HEADER_END)
        if end < 0 or self.reply is None or self.reply.done():
            return

        head = bytes(self._buffer[:end]).split(b"\r\n")
        length = None
        for line in head[1:]:
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value)
        if length is None:
            self.reply.set_exception(HttpReplyError(f"reply without Content-Length: {head[0]!r}"))
            return

        body_start = end + len(HEADER_END)
        if len(self._buffer) < body_start + length:
            return

        status = int(head[0].split(b" ")[1])
        body = bytes(self._buffer[body_start : body_start + length])
        del self._buffer[: body_start + length]
        self.reply.set_result((status, body))


class RawHttpClient:
    """GET requests to one host and port over a pool of keep-alive connections.

    With `keep_alive` False, every request opens its own connection, sends `Connection: close`
    and closes the connection after the reply, like a client that does not reuse tracker
    connections, and `max_connections` does not apply.
    """

    def __init__(self, host: str, port: int, max_connections: int, keep_alive: bool = True) -> None:
        self._host = host
        self._port = port
        self._max_connections = max_connections
        self._keep_alive = keep_alive
        self._idle: list[_Connection] = []
        self._open: set[_Connection] = set()
        self._opening = 0
        self._waiters: deque[asyncio.Future[_Connection]] = deque()
        self._headers = f"Host: {host}:{port}\r\n".encode() + (b"" if keep_alive else b"Connection: close\r\n")
        self.connections_opened = 0

    async def get(self, target: str) -> tuple[int, bytes]:
        """Send `GET target` (path and query, already percent-encoded) and return the status and body."""
        connection = await self._acquire()
        assert connection.transport is not None
        reply: asyncio.Future[tuple[int, bytes]] = asyncio.get_running_loop().create_future()
        connection.reply = reply
        connection.transport.write(b"GET " + target.encode() + b" HTTP/1.1\r\n" + self._headers + b"\r\n")
        try:
            return await reply
        finally:
            connection.reply = None
            if self._keep_alive:
                self._release(connection)
            else:
                connection.transport.close()

    async def close(self) -> None:
        for connection in list(self._open):
            if connection.transport is not None:
                connection.transport.close()
        self._idle.clear()

    def forget(self, connection: _Connection) -> None:
        self._open.discard(connection)
        if connection in self._idle:
            self._idle.remove(connection)

    async def _acquire(self) -> _Connection:
        while self._idle:
            connection = self._idle.pop()
            if connection.open:
                return connection

        if not self._keep_alive or len(self._open) + self._opening < self._max_connections:
            self._opening += 1
            try:
                transport, protocol = await asyncio.get_running_loop().create_connection(
                    lambda: _Connection(self), self._host, self._port
                )
            finally:
                self._opening -= 1
            # uvloop may return before connection_made has run.
            protocol.transport = transport
            protocol.open = not transport.is_closing()
            self._open.add(protocol)
            self.connections_opened += 1
            return protocol

        waiter: asyncio.Future[_Connection] = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        return await waiter

    def _release(self, connection: _Connection) -> None:
        if not connection.open:
            return

        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(connection)
                return

        self._idle.append(connection)
