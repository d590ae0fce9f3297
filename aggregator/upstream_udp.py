"""BEP 15 UDP upstream announces over one shared socket per address family.

A request goes out up to `tries` times, each time waiting `timeout_s` for the reply whose
transaction id and source address match. A connection id is reused for at most 60 seconds per
upstream address, because BEP 15 lets a client use one for a minute. The path and query of the
forwarder URI travel as BEP 41 URLData options after the 98 bytes of the announce request.
"""

import asyncio
import errno
import functools
import ipaddress
import os
import socket
import struct
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import structlog

from aggregator.batch import UpstreamEvent
from aggregator.endpoints import IPV4_ENDPOINT_BYTES, IPV6_ENDPOINT_BYTES, pack_ip, split_compact
from aggregator.upstream_http import UpstreamAnnounce, UpstreamIdentity
from aggregator.upstream_reply import (
    DEFAULT_INTERVAL_S,
    MAX_INTERVAL_S,
    MIN_INTERVAL_FLOOR_S,
    FailureKind,
    UpstreamFailure,
    UpstreamReply,
)

log = structlog.get_logger("aggregator.upstream")

PROTOCOL_ID = 0x41727101980  # BEP 15: the connection id field of every connect request
CONNECTION_ID_LIFETIME_S = 60.0  # BEP 15: a client may use a connection id for one minute

ACTION_CONNECT = 0
ACTION_ANNOUNCE = 1
ACTION_ERROR = 3

EVENT_CODES = {
    UpstreamEvent.NONE: 0,
    UpstreamEvent.COMPLETED: 1,
    UpstreamEvent.STARTED: 2,
    UpstreamEvent.STOPPED: 3,
}

# BEP 41 option types. Types 0 and 1 are one byte; from type 2 on, a length byte and data follow.
OPTION_END_OF_OPTIONS = 0x0
OPTION_URL_DATA = 0x2
URL_DATA_CHUNK_BYTES = 255

CONNECT_REQUEST = struct.Struct(">QII")  # protocol id, action, transaction id
# connection id, action, transaction id, info_hash, peer_id, downloaded, left, uploaded,
# event, IP address, key, num_want, port: 98 bytes
ANNOUNCE_REQUEST = struct.Struct(">QII20s20sqqqIIIiH")
REPLY_HEADER = struct.Struct(">II")  # action, transaction id: the start of every reply
CONNECT_REPLY = struct.Struct(">IIQ")  # action, transaction id, connection id
ANNOUNCE_REPLY = struct.Struct(">IIiii")  # action, transaction id, interval, leechers, seeders

_MAX_INT64 = 2**63 - 1
_MAX_TEXT_CHARS = 300
_V4_MAPPED_PREFIX = bytes(10) + b"\xff\xff"

# Linux's IP_RECVERR and IPV6_RECVERR, which Python's socket module does not define. With them
# set, an unconnected socket reports ICMP errors (port unreachable) and queues each one with the
# destination of the datagram that caused it. Without them, Linux ignores ICMP errors on
# unconnected sockets, and a closed port shows up as a timeout.
_RECVERR_OPTIONS: dict[int, tuple[int, int]] = {
    socket.AF_INET: (socket.IPPROTO_IP, 11),
    socket.AF_INET6: (socket.IPPROTO_IPV6, 25),
}
_MSG_ERRQUEUE: int | None = getattr(socket, "MSG_ERRQUEUE", None)
_QUEUED_ERROR = struct.Struct("=I")  # ee_errno, the first field of Linux's struct sock_extended_err

_WILDCARD: dict[int, str] = {socket.AF_INET: "0.0.0.0", socket.AF_INET6: "::"}
_FAMILY_NAMES: dict[int, str] = {socket.AF_INET: "IPv4", socket.AF_INET6: "IPv6"}

AddressKey = tuple[bytes, int]  # packed IP address and port, compared with the source of each reply
Resolver = Callable[[str, int], Awaitable[Sequence[tuple[int, tuple[Any, ...]]]]]


@dataclass(frozen=True, slots=True)
class UdpTarget:
    """Destination of the UDP announces of one forwarder.

    `url_data` is the BEP 41 URLData: the path and query of the URI exactly as written, for
    example b"/announce" or b"/dir?a=b". It is b"" only when the URI has neither, as in
    "udp://tracker.example:6969". BEP 41 defines the data as the path and query of the URL that
    the client uses, with no exception for "/announce". A tracker that serves several paths or
    reads a token from the query needs them, and a tracker without BEP 41 ignores the bytes after
    offset 98.
    """

    host: str  # host name or IP literal, without brackets
    port: int
    url_data: bytes

    @classmethod
    def from_uri(cls, uri: str) -> "UdpTarget":
        """Parse a udp://host:port/path?query URI; raise ValueError naming the problem."""
        parts = urlsplit(uri)
        if parts.scheme.lower() != "udp":
            raise ValueError(f"expected a udp:// URI, got {uri!r}")
        if not parts.hostname:
            raise ValueError(f"missing host in {uri!r}")
        try:
            port = parts.port
        except ValueError:
            raise ValueError(f"invalid port in {uri!r}") from None
        if not port:
            raise ValueError(f"missing port in {uri!r}, expected for example udp://tracker.example:6969/announce")

        url_data = parts.path + ("?" + parts.query if parts.query else "")

        return cls(host=parts.hostname, port=port, url_data=url_data.encode())


@dataclass(frozen=True, slots=True)
class _Address:
    """A resolved upstream address and the socket family that reaches it."""

    family: int
    sockaddr: tuple[Any, ...]
    key: AddressKey
    text: str  # "192.0.2.1:6969" or "[2001:db8::1]:6969", for messages


@dataclass(frozen=True, slots=True)
class _ResolvedHost:
    address: _Address
    expires_at_s: float


@dataclass(frozen=True, slots=True)
class _ConnectionId:
    value: int
    obtained_at_s: float


@dataclass(frozen=True, slots=True)
class _PendingRequest:
    address_key: AddressKey
    reply: "asyncio.Future[bytes]"


class _ErrorReply(Exception):
    """An action-3 reply to an announce; the caller decides whether a reconnect may help."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class _SharedSocket(asyncio.DatagramProtocol):
    """The UDP socket of one address family, bound to the wildcard address on a free port.

    Replies arrive through the asyncio transport. Requests are sent on the socket itself, so a
    send error reaches the sender at once instead of the protocol's `error_received`.
    """

    def __init__(
        self,
        sock: socket.socket,
        on_datagram: Callable[[bytes, tuple[Any, ...]], None],
        on_queued_error: Callable[[tuple[Any, ...], int], None],
    ) -> None:
        self.sock = sock
        self.closed = False
        self.unattributed_errors = 0  # socket errors that named no destination
        self._on_datagram = on_datagram
        self._on_queued_error = on_queued_error
        self._transport: asyncio.BaseTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True

    def datagram_received(self, data: bytes, addr: tuple[Any, ...]) -> None:
        self._on_datagram(data, addr)

    def error_received(self, exc: Exception) -> None:
        # An ICMP error made the receive fail. Its queue entries name the destinations.
        if self.drain_error_queue() == 0:
            self.unattributed_errors += 1
            log.debug("upstream.udp.socket_error", error=f"{type(exc).__name__}: {exc}")

    def send(self, packet: bytes, sockaddr: tuple[Any, ...]) -> None:
        """Send one datagram; raise OSError when the system rejects it.

        A full send buffer counts as a lost datagram, which the retransmission covers.
        """
        try:
            self.sock.sendto(packet, sockaddr)
            return
        except BlockingIOError:
            return
        except OSError:
            # Linux reports a queued ICMP error of any destination on the next send, so this
            # error may belong to another request. Draining fails the requests it concerns.
            self.drain_error_queue()

        try:
            self.sock.sendto(packet, sockaddr)
        except BlockingIOError:
            return

    def drain_error_queue(self) -> int:
        """Pass each queued ICMP error to `on_queued_error` and return how many there were.

        Draining also matters for the event loop: while the queue has entries the socket polls
        as readable, and the loop would spin.
        """
        if _MSG_ERRQUEUE is None:
            return 0

        count = 0
        while True:
            try:
                _, ancillary, _, destination = self.sock.recvmsg(64, 512, _MSG_ERRQUEUE)
            except (BlockingIOError, InterruptedError):
                return count
            except OSError as error:
                log.debug("upstream.udp.error_queue_failed", error=str(error))
                return count

            count += 1
            self._on_queued_error(destination, _queued_errno(ancillary))

    def close(self) -> None:
        self.closed = True
        if self._transport is not None:
            self._transport.close()
        else:
            self.sock.close()


class UdpUpstream:
    """Sends announces to BEP 15 UDP trackers and parses their replies.

    Every request shares one socket per address family. Replies are matched to their request by
    transaction id and source address; any other datagram is counted in `unmatched_datagrams`
    and dropped. A connect and an announce each get up to `tries` sends of `timeout_s`. One
    announce therefore takes at most 2 × tries × timeout_s, and 3 × tries × timeout_s when a
    stale connection id makes it connect again.
    """

    def __init__(
        self,
        identity: UpstreamIdentity,
        timeout_s: float,
        tries: int,
        dns_cache_ttl_s: float,
        clock: Callable[[], float] = time.monotonic,
        *,
        resolver: Resolver | None = None,
    ) -> None:
        if tries < 1:
            raise ValueError(f"tries must be at least 1, got {tries}")

        self._identity = identity
        self._timeout_s = timeout_s
        self._tries = tries
        self._dns_cache_ttl_s = dns_cache_ttl_s
        self._clock = clock
        self._resolver = resolver or _getaddrinfo
        self._sockets: dict[int, _SharedSocket] = {}
        self._socket_errors: dict[int, OSError] = {}  # families whose socket failed to open
        self._open_lock = asyncio.Lock()
        self._closed = False
        self._pending: dict[int, _PendingRequest] = {}
        # Both caches are in insertion order, which is expiry order, so pruning pops from the front.
        self._connection_ids: OrderedDict[AddressKey, _ConnectionId] = OrderedDict()
        self._resolved: OrderedDict[tuple[str, int], _ResolvedHost] = OrderedDict()
        self._connecting: dict[AddressKey, asyncio.Task[int]] = {}
        self.unmatched_datagrams = 0

    @property
    def pending_requests(self) -> int:
        """Requests that wait for a reply now."""
        return len(self._pending)

    @property
    def cached_connection_ids(self) -> int:
        return len(self._connection_ids)

    @property
    def cached_hosts(self) -> int:
        return len(self._resolved)

    def local_port(self, family: int) -> int | None:
        """Return the local port of the socket of `family`, or None while it is not open."""
        shared = self._sockets.get(family)
        if shared is None or shared.closed:
            return None

        port: int = shared.sock.getsockname()[1]

        return port

    async def start(self) -> None:
        """Open the IPv4 and IPv6 sockets. A family that fails is logged and retried on its next use."""
        for family in (socket.AF_INET, socket.AF_INET6):
            try:
                await self._socket_for(family)
            except OSError as error:
                log.warning("upstream.udp.socket_failed", family=_FAMILY_NAMES[family], error=str(error))

    async def close(self) -> None:
        """Fail the requests that wait for a reply and close the sockets."""
        self._closed = True
        # A connect under way fails through its pending request, and so do the announces that wait for it.
        for pending in self._pending.values():
            if not pending.reply.done():
                pending.reply.set_exception(UpstreamFailure(FailureKind.CONNECTION, "the UDP upstream client closed"))
        for shared in self._sockets.values():
            shared.close()
        self._sockets.clear()

    async def announce(self, target: UdpTarget, announce: UpstreamAnnounce) -> UpstreamReply:
        """Send one announce; raise UpstreamFailure for every kind of failure."""
        address = await self._resolve(target)
        shared = await self._usable_socket(address)
        connection_id, was_cached = await self._connection_id(shared, address)

        try:
            return await self._announce_once(shared, address, connection_id, target, announce)
        except _ErrorReply as error:
            if not was_cached:
                raise UpstreamFailure(FailureKind.TRACKER_FAILURE, error.message) from None
        except UpstreamFailure as failure:
            # A tracker that ignores an unknown connection id looks like this too, as
            # bittorrent-tracker 11.2.3 does with any id other than the one it issues.
            if was_cached and failure.kind is FailureKind.TIMEOUT:
                self._forget_connection_id(address.key, connection_id)
            raise

        # The error may come from a connection id that the tracker no longer accepts.
        self._forget_connection_id(address.key, connection_id)
        connection_id, _ = await self._connection_id(shared, address)
        try:
            return await self._announce_once(shared, address, connection_id, target, announce)
        except _ErrorReply as error:
            raise UpstreamFailure(FailureKind.TRACKER_FAILURE, error.message) from None

    # ---------------------------------------------------------------- requests

    async def _announce_once(
        self,
        shared: _SharedSocket,
        address: _Address,
        connection_id: int,
        target: UdpTarget,
        announce: UpstreamAnnounce,
    ) -> UpstreamReply:
        key = int(self._identity.key_for(announce.info_hash), 16)
        options = _url_data_options(target.url_data)

        def build(transaction_id: int) -> bytes:
            fields = ANNOUNCE_REQUEST.pack(
                connection_id,
                ACTION_ANNOUNCE,
                transaction_id,
                announce.info_hash,
                self._identity.peer_id,
                0,  # downloaded
                min(max(announce.left, 0), _MAX_INT64),
                0,  # uploaded
                EVENT_CODES[announce.event],
                0,  # IP address: 0 lets the tracker use the source address
                key,
                announce.numwant,
                announce.port,
            )
            return fields + options

        data = await self._exchange(shared, address, build, "announce")

        return _parse_announce_reply(data, address.family)

    async def _connection_id(self, shared: _SharedSocket, address: _Address) -> tuple[int, bool]:
        """Return a connection id for `address` and whether it came from the cache.

        Concurrent announces to an address without a cached id share one connect.
        """
        self._drop_expired_connection_ids(self._clock())
        cached = self._connection_ids.get(address.key)
        if cached is not None:
            return cached.value, True

        task = self._connecting.get(address.key)
        if task is None:
            task = asyncio.create_task(self._connect(shared, address))
            self._connecting[address.key] = task
            task.add_done_callback(functools.partial(self._connect_finished, address.key))

        # shield: a cancelled announce must not cancel a connect that others wait for.
        return await asyncio.shield(task), False

    async def _connect(self, shared: _SharedSocket, address: _Address) -> int:
        def build(transaction_id: int) -> bytes:
            return CONNECT_REQUEST.pack(PROTOCOL_ID, ACTION_CONNECT, transaction_id)

        data = await self._exchange(shared, address, build, "connect")
        connection_id = _parse_connect_reply(data)
        now_s = self._clock()
        self._connection_ids.pop(address.key, None)
        self._connection_ids[address.key] = _ConnectionId(connection_id, now_s)
        self._drop_expired_connection_ids(now_s)

        return connection_id

    def _connect_finished(self, key: AddressKey, task: "asyncio.Task[int]") -> None:
        if self._connecting.get(key) is task:
            del self._connecting[key]
        if not task.cancelled():
            task.exception()  # retrieve it, so a failed connect whose waiters were all cancelled logs no warning

    def _forget_connection_id(self, key: AddressKey, connection_id: int) -> None:
        cached = self._connection_ids.get(key)
        if cached is not None and cached.value == connection_id:  # not one that another request renewed
            del self._connection_ids[key]

    def _drop_expired_connection_ids(self, now_s: float) -> None:
        while self._connection_ids:
            key, oldest = next(iter(self._connection_ids.items()))
            if now_s - oldest.obtained_at_s < CONNECTION_ID_LIFETIME_S:
                return
            del self._connection_ids[key]

    async def _exchange(
        self, shared: _SharedSocket, address: _Address, build: Callable[[int], bytes], request_name: str
    ) -> bytes:
        """Send the packet `build(transaction_id)` up to `tries` times and return the matching reply.

        Every send carries the same transaction id, so a late reply to an earlier send counts.
        """
        transaction_id = self._new_transaction_id()
        reply: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()
        self._pending[transaction_id] = _PendingRequest(address.key, reply)
        packet = build(transaction_id)

        try:
            for _ in range(self._tries):
                try:
                    shared.send(packet, address.sockaddr)
                except OSError as error:
                    detail = f"sending to {address.text} failed: {error}"
                    raise UpstreamFailure(FailureKind.CONNECTION, detail) from None

                done, _ = await asyncio.wait((reply,), timeout=self._timeout_s)
                if done:
                    return reply.result()
        finally:
            self._pending.pop(transaction_id, None)
            if not reply.done():
                reply.cancel()
            elif not reply.cancelled():
                reply.exception()  # mark an error that arrived for a cancelled request as retrieved

        raise UpstreamFailure(
            FailureKind.TIMEOUT,
            f"no {request_name} reply from {address.text} after {self._tries} tries of {self._timeout_s} s",
        )

    def _new_transaction_id(self) -> int:
        while True:
            transaction_id = int.from_bytes(os.urandom(4), "big")
            if transaction_id not in self._pending:
                return transaction_id

    # ---------------------------------------------------------------- socket events

    def _on_datagram(self, data: bytes, source: tuple[Any, ...]) -> None:
        if len(data) < REPLY_HEADER.size:
            self.unmatched_datagrams += 1
            return

        _, transaction_id = REPLY_HEADER.unpack_from(data)
        pending = self._pending.get(transaction_id)
        if pending is None or pending.reply.done() or _address_key(source) != pending.address_key:
            self.unmatched_datagrams += 1
            return

        pending.reply.set_result(data)

    def _on_queued_error(self, destination: tuple[Any, ...], error_number: int) -> None:
        """Fail every request that waits for a reply from `destination`, which sent an ICMP error."""
        key = _address_key(destination)
        if error_number == errno.ECONNREFUSED:
            failure = UpstreamFailure(FailureKind.REFUSED, f"ICMP port unreachable from {_format_address(key)}")
        else:
            failure = UpstreamFailure(
                FailureKind.CONNECTION, f"ICMP error from {_format_address(key)}: {os.strerror(error_number)}"
            )

        for pending in self._pending.values():
            if pending.address_key == key and not pending.reply.done():
                pending.reply.set_exception(failure)

    # ---------------------------------------------------------------- sockets and names

    async def _usable_socket(self, address: _Address) -> _SharedSocket:
        try:
            return await self._socket_for(address.family)
        except OSError as error:
            family = _FAMILY_NAMES[address.family]
            raise UpstreamFailure(
                FailureKind.CONNECTION, f"no {family} UDP socket for {address.text}: {error}"
            ) from None

    async def _socket_for(self, family: int) -> _SharedSocket:
        """Return the open socket of `family`, opening it on first use or after it closed."""
        if self._closed:
            raise UpstreamFailure(FailureKind.CONNECTION, "the UDP upstream client is closed")

        async with self._open_lock:
            shared = self._sockets.get(family)
            if shared is not None and not shared.closed:
                return shared

            try:
                shared = await self._open_socket(family)
            except OSError as error:
                self._socket_errors[family] = error
                raise

            self._socket_errors.pop(family, None)
            self._sockets[family] = shared
            log.debug("upstream.udp.socket_opened", family=_FAMILY_NAMES[family], port=shared.sock.getsockname()[1])

            return shared

    async def _open_socket(self, family: int) -> _SharedSocket:
        sock = socket.socket(family, socket.SOCK_DGRAM)
        try:
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)  # IPv4 has its own socket
            sock.bind((_WILDCARD[family], 0))
            sock.setblocking(False)
            level, option = _RECVERR_OPTIONS[family]
            try:
                sock.setsockopt(level, option, 1)
            except OSError:
                # NOTE: not Linux. Closed ports should then end as timeouts, which no test checks.
                pass

            shared = _SharedSocket(sock, self._on_datagram, self._on_queued_error)
            await asyncio.get_running_loop().create_datagram_endpoint(lambda: shared, sock=sock)
        except BaseException:
            sock.close()
            raise

        return shared

    async def _resolve(self, target: UdpTarget) -> _Address:
        """Return the address of the target, from an IP literal, the cache or the resolver."""
        literal = _literal_address(target.host, target.port)
        if literal is not None:
            return literal

        now_s = self._clock()
        self._drop_expired_hosts(now_s)
        name = (target.host, target.port)
        cached = self._resolved.get(name)
        if cached is not None:
            return cached.address

        try:
            results = await self._resolver(target.host, target.port)
        except (OSError, UnicodeError) as error:  # socket.gaierror is an OSError
            raise UpstreamFailure(FailureKind.DNS, f"failed to resolve {target.host!r}: {error}") from None

        address = self._choose_address(target.host, results)
        if self._dns_cache_ttl_s > 0:
            self._resolved.pop(name, None)
            self._resolved[name] = _ResolvedHost(address, now_s + self._dns_cache_ttl_s)

        return address

    def _choose_address(self, host: str, results: Sequence[tuple[int, tuple[Any, ...]]]) -> _Address:
        """Return the first IPv4 or IPv6 result, preferring a family whose socket did not fail to open."""
        usable = [(family, sockaddr) for family, sockaddr in results if family in _WILDCARD]
        usable.sort(key=lambda result: result[0] in self._socket_errors)  # stable: keeps the resolver's order
        if not usable:
            raise UpstreamFailure(FailureKind.DNS, f"{host!r} resolved to no IPv4 or IPv6 address")

        family, sockaddr = usable[0]
        key = (pack_ip(sockaddr[0]), sockaddr[1])

        return _Address(family, tuple(sockaddr), key, _format_address(key))

    def _drop_expired_hosts(self, now_s: float) -> None:
        while self._resolved:
            name, oldest = next(iter(self._resolved.items()))
            if oldest.expires_at_s > now_s:
                return
            del self._resolved[name]


# ---------------------------------------------------------------- packets


def _url_data_options(url_data: bytes) -> bytes:
    """Encode BEP 41 URLData options of at most 255 bytes each, then EndOfOptions; b"" for no data."""
    if not url_data:
        return b""

    options = bytearray()
    for offset in range(0, len(url_data), URL_DATA_CHUNK_BYTES):
        chunk = url_data[offset : offset + URL_DATA_CHUNK_BYTES]
        options += bytes((OPTION_URL_DATA, len(chunk))) + chunk
    options.append(OPTION_END_OF_OPTIONS)

    return bytes(options)


def _parse_connect_reply(data: bytes) -> int:
    """Return the connection id of a connect reply; raise UpstreamFailure for an error or a bad reply."""
    action, _ = REPLY_HEADER.unpack_from(data)
    if action == ACTION_ERROR:
        raise UpstreamFailure(FailureKind.TRACKER_FAILURE, _error_text(data))
    if action != ACTION_CONNECT:
        raise UpstreamFailure(FailureKind.BAD_REPLY, f"connect reply has action {action}, expected 0 (connect)")
    if len(data) < CONNECT_REPLY.size:
        raise UpstreamFailure(
            FailureKind.BAD_REPLY, f"connect reply of {len(data)} bytes, expected at least {CONNECT_REPLY.size}"
        )

    connection_id: int = CONNECT_REPLY.unpack_from(data)[2]

    return connection_id


def _parse_announce_reply(data: bytes, family: int) -> UpstreamReply:
    """Parse an announce reply; peers are 6 bytes each from an IPv4 upstream and 18 from an IPv6 one.

    Raises _ErrorReply for an error packet and UpstreamFailure for a bad reply.
    """
    action, _ = REPLY_HEADER.unpack_from(data)
    if action == ACTION_ERROR:
        raise _ErrorReply(_error_text(data))
    if action != ACTION_ANNOUNCE:
        raise UpstreamFailure(FailureKind.BAD_REPLY, f"announce reply has action {action}, expected 1 (announce)")
    if len(data) < ANNOUNCE_REPLY.size:
        # opentracker (Debian 0.0~git20210823) sends only the 8-byte header for an infohash
        # outside its whitelist.
        raise UpstreamFailure(
            FailureKind.BAD_REPLY, f"announce reply of {len(data)} bytes, expected at least {ANNOUNCE_REPLY.size}"
        )

    _, _, interval, leechers, seeders = ANNOUNCE_REPLY.unpack_from(data)
    peers = data[ANNOUNCE_REPLY.size :]
    if family == socket.AF_INET6:
        # NOTE: bittorrent-tracker 11.2.3 sends 6-byte IPv4 peers over IPv6 too. Read as 18-byte
        # entries, three of them become one wrong IPv6 endpoint, and the length cannot tell them apart.
        # A v4-mapped entry (::ffff:a.b.c.d) is an IPv4 peer, stored as one as in HTTP replies.
        endpoints = [
            endpoint[12:] if endpoint.startswith(_V4_MAPPED_PREFIX) else endpoint
            for endpoint in split_compact(peers, IPV6_ENDPOINT_BYTES)
        ]
    else:
        endpoints = split_compact(peers, IPV4_ENDPOINT_BYTES)

    return UpstreamReply(
        interval_s=_bounded_interval(interval),
        min_interval_s=0,
        endpoints=endpoints,
        complete=max(seeders, 0),
        incomplete=max(leechers, 0),
        downloaded=0,
        tracker_id=None,
        warning=None,
    )


def _error_text(data: bytes) -> str:
    """Return the message of an error packet without trailing NUL bytes.

    opentracker (Debian 0.0~git20210823) appends one, as in its reply to an unknown connection id,
    "Connection ID missmatch.\\x00".
    """
    return data[REPLY_HEADER.size :].rstrip(b"\x00").decode("utf-8", "replace")[:_MAX_TEXT_CHARS]


def _bounded_interval(interval_s: int) -> int:
    """Apply the bounds of HTTP replies: the default for 0 or less, then the floor and the ceiling."""
    if interval_s <= 0:
        return DEFAULT_INTERVAL_S

    return max(min(interval_s, MAX_INTERVAL_S), MIN_INTERVAL_FLOOR_S)


# ---------------------------------------------------------------- addresses


async def _getaddrinfo(host: str, port: int) -> list[tuple[int, tuple[Any, ...]]]:
    """Resolve `host` for UDP in the event loop's executor; return (family, sockaddr) pairs."""
    results = await asyncio.get_running_loop().getaddrinfo(
        host, port, type=socket.SOCK_DGRAM, proto=socket.IPPROTO_UDP
    )

    return [(family, tuple(sockaddr)) for family, _, _, _, sockaddr in results]


def _literal_address(host: str, port: int) -> _Address | None:
    """Return the address of an IP literal host, or None for a host name."""
    try:
        parsed = ipaddress.ip_address(host)
    except ValueError:
        return None

    if isinstance(parsed, ipaddress.IPv6Address) and parsed.ipv4_mapped is None:
        sockaddr: tuple[Any, ...] = (host, port, 0, 0)
        family = socket.AF_INET6
    else:
        mapped = parsed.ipv4_mapped if isinstance(parsed, ipaddress.IPv6Address) else None
        sockaddr = (str(mapped or parsed), port)
        family = socket.AF_INET

    key = (pack_ip(sockaddr[0]), port)

    return _Address(family, sockaddr, key, _format_address(key))


def _address_key(sockaddr: tuple[Any, ...]) -> AddressKey:
    return pack_ip(sockaddr[0]), sockaddr[1]


def _format_address(key: AddressKey) -> str:
    packed, port = key
    if len(packed) == 4:
        return f"{socket.inet_ntop(socket.AF_INET, packed)}:{port}"

    return f"[{socket.inet_ntop(socket.AF_INET6, packed)}]:{port}"


def _queued_errno(ancillary: list[tuple[int, int, bytes]]) -> int:
    """Return ee_errno of the IP_RECVERR or IPV6_RECVERR message in `ancillary`, or EIO when there is none."""
    for level, kind, data in ancillary:
        if (level, kind) in _RECVERR_OPTIONS.values() and len(data) >= _QUEUED_ERROR.size:
            error_number: int = _QUEUED_ERROR.unpack_from(data)[0]
            return error_number

    return errno.EIO


__all__ = ["UdpTarget", "UdpUpstream"]
