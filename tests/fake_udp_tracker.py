"""A scriptable BEP 15 UDP tracker on 127.0.0.1 or ::1 for faults that a real tracker cannot show.

It parses and records every connect and announce it receives, including the BEP 41 options of
announces. The test sets how it replies: normally, not at all, with an error packet, with a short
or wrong reply, with a wrong transaction id, or from another port. The packet layout is written out here on
purpose and does not reuse aggregator.upstream_udp, so a wrong constant there fails the tests.
"""

import asyncio
import enum
import os
import socket
import struct
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

PROTOCOL_ID = 0x41727101980
CONNECT = 0
ANNOUNCE = 1
SCRAPE = 2
ERROR = 3
ANNOUNCE_FIXED_BYTES = 98


class Reply(enum.Enum):
    """How the fake replies to one kind of request."""

    NORMAL = "normal"
    SILENT = "silent"  # no reply at all
    ERROR = "error"  # an action-3 packet carrying `error_message`
    SHORT = "short"  # only the 8-byte header (action and transaction id)
    WRONG_TRANSACTION_ID = "wrong_transaction_id"  # a normal reply for transaction id + 1
    WRONG_ACTION = "wrong_action"  # a normal-length reply with action 2 (scrape)
    OTHER_SOURCE = "other_source"  # a normal reply, sent from a second socket on another port


@dataclass
class RecordedConnect:
    source: tuple[Any, ...]
    protocol_id: int
    transaction_id: int
    issued_connection_id: int = 0  # the connection id that the fake issued in its reply


@dataclass
class RecordedAnnounce:
    source: tuple[Any, ...]
    connection_id: int
    transaction_id: int
    info_hash: bytes
    peer_id: bytes
    downloaded: int
    left: int
    uploaded: int
    event: int
    ip: int
    key: int
    num_want: int
    port: int
    options: list[tuple[int, bytes]]  # BEP 41 (type, data) in packet order; EndOfOptions and NOP have b""
    url_data: bytes  # the URLData options concatenated
    packet: bytes


@dataclass
class FakeUdpTracker:
    """A UDP tracker whose replies the test sets through `on_connect` and `on_announce`.

    Connection ids are random 64-bit numbers. `expire_connection_ids()` makes every id issued so
    far invalid, and an announce with an invalid id gets an error packet carrying `stale_message`.
    """

    host: str = "127.0.0.1"
    on_connect: Reply = Reply.NORMAL
    on_announce: Reply = Reply.NORMAL
    error_message: bytes = b"tracker says no\x00"
    stale_message: bytes = b"Connection ID missmatch.\x00"
    interval: int = 1800
    leechers: int = 3
    seeders: int = 7
    peers: bytes = b""  # compact peers of the announce reply: 6 bytes each over IPv4, 18 over IPv6
    connects: list[RecordedConnect] = field(default_factory=list)
    announces: list[RecordedAnnounce] = field(default_factory=list)
    unparsed: list[bytes] = field(default_factory=list)  # datagrams that are neither a connect nor an announce
    replies_sent: int = 0
    port: int = 0
    _valid_ids: set[int] = field(default_factory=set)
    _transport: asyncio.DatagramTransport | None = None
    _other_transport: asyncio.DatagramTransport | None = None
    _waiters: list[tuple[Callable[["FakeUdpTracker"], bool], "asyncio.Future[None]"]] = field(default_factory=list)

    @property
    def family(self) -> int:
        return socket.AF_INET6 if ":" in self.host else socket.AF_INET

    @property
    def uri(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"udp://{host}:{self.port}/announce"

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        transport, _ = await loop.create_datagram_endpoint(
            lambda: _Protocol(self), local_addr=(self.host, 0), family=self.family
        )
        self._transport = transport
        self.port = transport.get_extra_info("sockname")[1]
        other, _ = await loop.create_datagram_endpoint(
            asyncio.DatagramProtocol, local_addr=(self.host, 0), family=self.family
        )
        self._other_transport = other

    async def stop(self) -> None:
        for transport in (self._transport, self._other_transport):
            if transport is not None:
                transport.close()

    def expire_connection_ids(self) -> None:
        """Reject every connection id issued so far, as a tracker does once an id is too old."""
        self._valid_ids.clear()

    async def wait_for(self, condition: Callable[["FakeUdpTracker"], bool], timeout_s: float = 5.0) -> None:
        """Return once `condition(self)` holds; it is checked again after every datagram that arrives."""
        if condition(self):
            return

        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append((condition, waiter))
        try:
            await asyncio.wait_for(waiter, timeout_s)
        finally:
            self._waiters.remove((condition, waiter))

    def _wake_waiters(self) -> None:
        for condition, waiter in self._waiters:
            if not waiter.done() and condition(self):
                waiter.set_result(None)

    def handle(self, data: bytes, source: tuple[Any, ...]) -> None:
        if len(data) >= 16:
            connection_id, action, transaction_id = struct.unpack_from(">QII", data)
            if action == CONNECT and connection_id == PROTOCOL_ID:
                self._handle_connect(RecordedConnect(source, connection_id, transaction_id))
            elif action == ANNOUNCE and len(data) >= ANNOUNCE_FIXED_BYTES:
                self._handle_announce(parse_announce(data, source))
            else:
                self.unparsed.append(data)
        else:
            self.unparsed.append(data)

        self._wake_waiters()

    def _handle_connect(self, request: RecordedConnect) -> None:
        connection_id = int.from_bytes(os.urandom(8), "big")
        request.issued_connection_id = connection_id
        self.connects.append(request)
        self._valid_ids.add(connection_id)
        self._reply(self.on_connect, CONNECT, request.transaction_id, struct.pack(">Q", connection_id), request.source)

    def _handle_announce(self, request: RecordedAnnounce) -> None:
        self.announces.append(request)
        if request.connection_id not in self._valid_ids:
            self._send(struct.pack(">II", ERROR, request.transaction_id) + self.stale_message, request.source)
            return

        body = struct.pack(">iii", self.interval, self.leechers, self.seeders) + self.peers
        self._reply(self.on_announce, ANNOUNCE, request.transaction_id, body, request.source)

    def _reply(self, mode: Reply, action: int, transaction_id: int, body: bytes, target: tuple[Any, ...]) -> None:
        if mode is Reply.SILENT:
            return
        if mode is Reply.ERROR:
            self._send(struct.pack(">II", ERROR, transaction_id) + self.error_message, target)
        elif mode is Reply.SHORT:
            self._send(struct.pack(">II", action, transaction_id), target)
        elif mode is Reply.WRONG_TRANSACTION_ID:
            self._send(struct.pack(">II", action, (transaction_id + 1) % 2**32) + body, target)
        elif mode is Reply.WRONG_ACTION:
            self._send(struct.pack(">II", SCRAPE, transaction_id) + body, target)
        elif mode is Reply.OTHER_SOURCE:
            assert self._other_transport is not None
            self._other_transport.sendto(struct.pack(">II", action, transaction_id) + body, target)
            self.replies_sent += 1
        else:
            self._send(struct.pack(">II", action, transaction_id) + body, target)

    def _send(self, packet: bytes, target: tuple[Any, ...]) -> None:
        assert self._transport is not None
        self._transport.sendto(packet, target)
        self.replies_sent += 1


class _Protocol(asyncio.DatagramProtocol):
    def __init__(self, tracker: FakeUdpTracker) -> None:
        self._tracker = tracker

    def datagram_received(self, data: bytes, addr: tuple[Any, ...]) -> None:
        self._tracker.handle(data, addr)


def parse_announce(data: bytes, source: tuple[Any, ...]) -> RecordedAnnounce:
    """Parse the 98 fixed bytes of an announce request and the BEP 41 options after them."""
    (connection_id, _, transaction_id, info_hash, peer_id, downloaded, left, uploaded, event, ip, key, num_want, port) = (
        struct.unpack_from(">QII20s20sqqqIIIiH", data)
    )
    options = parse_options(data[ANNOUNCE_FIXED_BYTES:])
    url_data = b"".join(value for kind, value in options if kind == 2)

    return RecordedAnnounce(
        source=source,
        connection_id=connection_id,
        transaction_id=transaction_id,
        info_hash=info_hash,
        peer_id=peer_id,
        downloaded=downloaded,
        left=left,
        uploaded=uploaded,
        event=event,
        ip=ip,
        key=key,
        num_want=num_want,
        port=port,
        options=options,
        url_data=url_data,
        packet=data,
    )


def parse_options(data: bytes) -> list[tuple[int, bytes]]:
    """Parse BEP 41 options up to EndOfOptions or the end; a truncated option raises ValueError."""
    options: list[tuple[int, bytes]] = []
    offset = 0
    while offset < len(data):
        kind = data[offset]
        offset += 1
        if kind <= 1:  # EndOfOptions and NOP carry no length byte
            options.append((kind, b""))
            if kind == 0:
                break
            continue

        if offset >= len(data):
            raise ValueError(f"option {kind} has no length byte")
        length = data[offset]
        value = data[offset + 1 : offset + 1 + length]
        if len(value) != length:
            raise ValueError(f"option {kind} announces {length} bytes, {len(value)} present")
        options.append((kind, value))
        offset += 1 + length

    return options


def compact_peer(ip: str, port: int) -> bytes:
    """Return the compact form of one peer: 6 bytes for IPv4, 18 for IPv6."""
    family = socket.AF_INET6 if ":" in ip else socket.AF_INET
    return socket.inet_pton(family, ip) + port.to_bytes(2, "big")
