"""The client-facing UDP tracker (BEP 15): connect, announce and scrape, over IPv4 and IPv6.

Announces go through the same Tracker as HTTP announces, so both transports share swarms,
upstream batches and the first-announce wait.
"""

import asyncio
import hashlib
import hmac
import os
import socket
import struct
import time
from collections.abc import Callable
from typing import Any, cast

import structlog

from aggregator.access_log import AccessLog
from aggregator.announce import EVENT_LABELS, AnnounceLimits, AnnounceRequest
from aggregator.config import ListenAddress
from aggregator.endpoints import pack_ip
from aggregator.errors import RequestError
from aggregator.metrics import Metrics
from aggregator.tracker import AnnounceResult, FirstRoundWait, Tracker
from aggregator.udp_codec import (
    ACTION_ANNOUNCE,
    ACTION_CONNECT,
    ACTION_SCRAPE,
    ScrapeEntry,
    UdpPacketError,
    build_announce_reply,
    build_connect_reply,
    build_error_reply,
    build_scrape_reply,
    parse_announce_body,
    parse_connect,
    parse_scrape,
    unpack_header,
)

log = structlog.get_logger("aggregator.udp")

CONNECTION_ID_BUCKET_S = 60.0
# BEP 15: trackers should accept a connection id until two minutes after sending it. An id issued
# at the end of a bucket must outlive the two buckets after it, so the current bucket and the two
# before it are accepted, and an id stays valid for 120 to 180 seconds.
ACCEPTED_BUCKETS = 3
CONNECTION_ID_BYTES = 8
_DIGEST_BYTES = CONNECTION_ID_BYTES - 1  # the last byte of an id is its bucket number modulo 256

EXPIRED_CONNECTION_ID_MESSAGE = "connection id expired"
# IPv6 routers never fragment, and fragmented datagrams are often dropped on the way. So an IPv6
# reply stays within the minimum IPv6 MTU of 1,280 bytes. The IPv6, UDP and reply headers take
# 40, 8 and 20 bytes of it, which leaves room for 67 peers of 18 bytes.
IPV6_ADDRESS_BYTES = 16
MAX_IPV6_REPLY_PEERS = (1280 - 40 - 8 - 20) // 18
# Connection ids remembered after a successful check; the cache is emptied when it reaches this size.
RECENT_IDS_CACHE_SIZE = 65536
# Client addresses whose packed form is kept; the cache is emptied when it reaches this size.
PACKED_IP_CACHE_SIZE = 65536

_ID_INPUT_SUFFIX = struct.Struct("!Hq")  # client port, time bucket

Address = tuple[str | Any, int]  # (host, port), or (host, port, flowinfo, scope_id) over IPv6


class ConnectionIds:
    """Derives connection ids from the client address and a time bucket, so nothing is stored per client.

    An id is a 7-byte keyed BLAKE2b digest of (client IP, client port, bucket), keyed with a
    secret drawn at start, followed by the bucket number modulo 256. A client cannot compute the
    id of an address whose packets it does not receive, and ids become invalid when the process
    restarts. Keyed BLAKE2b is a MAC in one pass, about half the cost of HMAC-SHA256, and every
    announce checks one. The bucket byte names the bucket to check, so is_valid derives one digest
    per check instead of up to ACCEPTED_BUCKETS.
    """

    def __init__(self, clock: Callable[[], float] = time.monotonic, secret: bytes | None = None) -> None:
        self._clock = clock
        self._recent: dict[tuple[int, bytes, int], int] = {}  # (id, ip, port) -> last bucket it is valid in
        # Keyed once: copying the keyed state skips hashing the key block for every id.
        self._keyed_hash = hashlib.blake2b(
            digest_size=_DIGEST_BYTES, key=secret if secret is not None else os.urandom(32)
        )

    def issue(self, packed_ip: bytes, port: int) -> int:
        return int.from_bytes(self._derive(packed_ip, port, self._bucket()), "big")

    def is_valid(self, connection_id: int, packed_ip: bytes, port: int) -> bool:
        """Check the id if its bucket byte names the current bucket or one of the ACCEPTED_BUCKETS - 1 before it."""
        current = self._bucket()
        # A client sends the same id with every request for a minute or more, so an id that passed
        # is remembered until its last valid bucket instead of hashed again.
        key = (connection_id, packed_ip, port)
        if self._recent.get(key, -1) >= current:
            return True

        received = connection_id.to_bytes(CONNECTION_ID_BYTES, "big")
        age = (current - received[-1]) % 256  # buckets since the id was issued, if the id is genuine
        if age >= ACCEPTED_BUCKETS:
            return False

        # The digest covers the whole bucket number, so an id 256 or more buckets old fails here.
        if not hmac.compare_digest(received, self._derive(packed_ip, port, current - age)):
            return False

        if len(self._recent) >= RECENT_IDS_CACHE_SIZE:
            self._recent.clear()  # bounded: only ids that passed get in, but clients can be many
        self._recent[key] = current - age + ACCEPTED_BUCKETS - 1

        return True

    def _bucket(self) -> int:
        return int(self._clock() // CONNECTION_ID_BUCKET_S)

    def _derive(self, packed_ip: bytes, port: int, bucket: int) -> bytes:
        digest = self._keyed_hash.copy()
        digest.update(packed_ip + _ID_INPUT_SUFFIX.pack(port, bucket))

        return digest.digest() + bytes((bucket % 256,))


class UdpTracker:
    """Replies to BEP 15 requests on every UDP socket of the service, and counts packets by outcome.

    Before a client has shown a valid connection id, no reply is longer than its request, so a
    spoofed source address cannot turn the tracker into an amplifier.
    """

    def __init__(
        self,
        tracker: Tracker,
        limits: AnnounceLimits,
        connection_ids: ConnectionIds,
        metrics: Metrics | None = None,
        access_log: AccessLog | None = None,
    ) -> None:
        self._tracker = tracker
        self._metrics = metrics
        self._access_log = access_log
        self._limits = limits
        self._connection_ids = connection_ids
        self._transports: list[asyncio.DatagramTransport] = []
        self._announce_tasks: set[asyncio.Task[None]] = set()
        self._packed_ips: dict[str, bytes] = {}  # client address text -> packed address
        self._closing = False
        self._outbox: list[tuple[asyncio.DatagramTransport, Address, bytes]] = []  # replies not sent yet

        # Packets by outcome, as plain counters that a metrics export can read.
        self.connect_replies = 0
        self.announce_replies = 0
        self.scrape_replies = 0
        self.expired_connection_ids = 0  # announce or scrape with an unknown or expired connection id
        self.invalid_requests = 0  # bad protocol id, unknown action or an invalid field
        self.denied_announces = 0  # infohash rejected by the access lists
        self.internal_errors = 0
        self.dropped_packets = 0  # no transaction id (under 16 bytes) or no readable source address
        self.send_failures = 0

    async def listen(self, address: ListenAddress) -> tuple[str, int]:
        """Bind a UDP socket on `address`, serve it, and return the bound host and port."""
        sock = bind_udp_socket(address)
        loop = asyncio.get_running_loop()
        transport, _ = await loop.create_datagram_endpoint(lambda: _UdpTrackerProtocol(self), sock=sock)
        self._transports.append(transport)
        host, port = sock.getsockname()[:2]

        return host, port

    async def close(self, grace_s: float = 0.0) -> None:
        """Stop receiving, give announces in progress up to `grace_s` to reply, then close the sockets."""
        self._closing = True  # datagrams that arrive from now on are dropped
        tasks = list(self._announce_tasks)
        if tasks and grace_s > 0:
            await asyncio.wait(tasks, timeout=grace_s)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

        self._flush()  # replies of the announces that finished in the grace time
        for transport in self._transports:
            transport.close()
        self._transports.clear()

    def handle_datagram(self, transport: asyncio.DatagramTransport, packet: bytes, address: Address) -> None:
        if self._closing:
            self.dropped_packets += 1
            return

        try:
            self._dispatch(transport, packet, address)
        except Exception:
            self.internal_errors += 1
            log.exception("udp.request.crashed", client=address[0], client_port=address[1])

    def _dispatch(self, transport: asyncio.DatagramTransport, packet: bytes, address: Address) -> None:
        try:
            connection_id, action, transaction_id = unpack_header(packet)
            packed_ip = self._packed_ips.get(address[0]) or self._pack_ip(address[0])
        except (UdpPacketError, ValueError) as error:
            self.dropped_packets += 1
            log.debug("udp.request.dropped", client=address[0], client_port=address[1], error=str(error))
            return

        port: int = address[1]
        reply_limit = len(packet)  # until a valid connection id is shown
        # Announces and scrapes carry a connection id, which must be valid before their fields are read.
        if action == ACTION_ANNOUNCE or action == ACTION_SCRAPE:
            if not self._connection_ids.is_valid(connection_id, packed_ip, port):
                self.expired_connection_ids += 1
                self._reject(transport, address, transaction_id, EXPIRED_CONNECTION_ID_MESSAGE, reply_limit)
                return

            if action == ACTION_ANNOUNCE:
                self._start_announce(transport, address, packet, transaction_id, packed_ip)
            else:
                self._scrape(transport, address, packet, transaction_id)
            return

        if action != ACTION_CONNECT:
            self.invalid_requests += 1
            self._reject(transport, address, transaction_id, f"unknown action {action}", reply_limit)
            return

        try:
            parse_connect(packet)
        except UdpPacketError as error:
            self.invalid_requests += 1
            self._reject(transport, address, transaction_id, str(error), reply_limit)
            return
        self.connect_replies += 1
        connection_id = self._connection_ids.issue(packed_ip, port)
        self._send(transport, address, build_connect_reply(transaction_id, connection_id))

    def _pack_ip(self, host: str) -> bytes:
        """Pack a client address and keep it, because a client sends many datagrams from one address."""
        packed_ip = pack_ip(host)
        if len(self._packed_ips) >= PACKED_IP_CACHE_SIZE:
            self._packed_ips.clear()  # bounded, as any client can send from many addresses
        self._packed_ips[host] = packed_ip

        return packed_ip

    def _scrape(
        self, transport: asyncio.DatagramTransport, address: Address, packet: bytes, transaction_id: int
    ) -> None:
        try:
            scrape = parse_scrape(packet)
        except UdpPacketError as error:
            self.invalid_requests += 1
            self._reject(transport, address, transaction_id, str(error))
            return

        counts = self._tracker.scrape(scrape.info_hashes)
        entries = [ScrapeEntry(seeders=c.complete, completed=c.downloaded, leechers=c.incomplete) for c in counts]
        self.scrape_replies += 1
        if self._metrics is not None:
            self._metrics.scrapes.labels("udp", "ok").inc()
        self._send(transport, address, build_scrape_reply(transaction_id, entries))

    def _start_announce(
        self,
        transport: asyncio.DatagramTransport,
        address: Address,
        packet: bytes,
        transaction_id: int,
        packed_ip: bytes,
    ) -> None:
        try:
            # The header was read in _dispatch, so only the announce fields are parsed here.
            request, _, _ = parse_announce_body(packet, self._limits)
        except (UdpPacketError, RequestError) as error:
            self.invalid_requests += 1
            self._observe("unknown", "invalid", None, address, None)
            self._reject(transport, address, transaction_id, str(error))
            return

        if len(packed_ip) == IPV6_ADDRESS_BYTES and request.numwant > MAX_IPV6_REPLY_PEERS:
            request.numwant = MAX_IPV6_REPLY_PEERS

        started_s = time.perf_counter()
        try:
            outcome = self._tracker.begin_announce(request, packed_ip, same_family_only=True)
        except Exception as error:
            self._announce_failed(transport, address, transaction_id, request, error)
            return

        if isinstance(outcome, AnnounceResult):
            self._reply(transport, address, transaction_id, request, outcome, started_s)
            return

        # A task only for the first announces of a new infohash, which wait for upstream
        # replies. Datagrams from other clients must not wait behind them.
        task = asyncio.get_running_loop().create_task(
            self._finish(transport, address, transaction_id, request, outcome, started_s)
        )
        self._announce_tasks.add(task)
        task.add_done_callback(self._announce_tasks.discard)

    async def _finish(
        self,
        transport: asyncio.DatagramTransport,
        address: Address,
        transaction_id: int,
        request: AnnounceRequest,
        wait: FirstRoundWait,
        started_s: float,
    ) -> None:
        try:
            result = await wait.finish()
        except Exception as error:
            self._announce_failed(transport, address, transaction_id, request, error)
            return

        self._reply(transport, address, transaction_id, request, result, started_s)

    def _announce_failed(
        self,
        transport: asyncio.DatagramTransport,
        address: Address,
        transaction_id: int,
        request: AnnounceRequest,
        error: Exception,
    ) -> None:
        if isinstance(error, RequestError):  # a denied infohash
            self.denied_announces += 1
            self._observe(EVENT_LABELS[request.event], "denied", None, address, request.info_hash)
            self._reject(transport, address, transaction_id, str(error))
            return

        self.internal_errors += 1
        log.error(
            "udp.announce.crashed",
            client=address[0],
            client_port=address[1],
            info_hash=request.info_hash.hex(),
            exc_info=error,
        )
        self._send(transport, address, build_error_reply(transaction_id, "internal error"))

    def _reply(
        self,
        transport: asyncio.DatagramTransport,
        address: Address,
        transaction_id: int,
        request: AnnounceRequest,
        result: AnnounceResult,
        started_s: float,
    ) -> None:
        event = EVENT_LABELS[request.event]
        if result.failure_reason is not None:
            self._observe(event, "overloaded", time.perf_counter() - started_s, address, request.info_hash)
            self._send(transport, address, build_error_reply(transaction_id, result.failure_reason))
            return

        self.announce_replies += 1
        self._observe(event, "ok", time.perf_counter() - started_s, address, request.info_hash)
        # The tracker picked peers of the requester's family only, so one of these is empty.
        reply = build_announce_reply(
            transaction_id, result.interval, result.incomplete, result.complete, result.peers4 or result.peers6
        )
        # _send, written out: this is the reply to nearly every datagram.
        if not self._outbox:
            asyncio.get_running_loop().call_soon(self._flush)  # once per loop iteration
        self._outbox.append((transport, address, reply))

    def _observe(
        self, event: str, outcome: str, latency_s: float | None, address: Address, info_hash: bytes | None
    ) -> None:
        if self._metrics is not None:
            self._metrics.observe_announce("udp", event, outcome, latency_s)
        # Checked here as well as in record, so that announces skip the call and the client
        # text while the access log is off, its default.
        if self._access_log is not None and self._access_log.enabled:
            client = str(address[0])
            self._access_log.record("udp", "announce", client, outcome, latency_s or 0.0, event, info_hash)

    def _reject(
        self,
        transport: asyncio.DatagramTransport,
        address: Address,
        transaction_id: int,
        message: str,
        max_bytes: int | None = None,
    ) -> None:
        """Send an error reply, cut to `max_bytes`, and log it at debug level.

        Debug only, because any client can send invalid packets at any rate. The counters
        record how many there were.
        """
        log.debug("udp.request.rejected", client=address[0], client_port=address[1], error=message)
        self._send(transport, address, build_error_reply(transaction_id, message, max_bytes))

    def _send(self, transport: asyncio.DatagramTransport, address: Address, packet: bytes) -> None:
        # Replies wait for the end of the loop iteration, which usually read many datagrams. A
        # client then wakes once for several replies, and a profile put much of a send's cost in
        # that wake-up (docs/benchmarks.md).
        if not self._outbox:
            asyncio.get_running_loop().call_soon(self._flush)  # once per loop iteration
        self._outbox.append((transport, address, packet))

    def _flush(self) -> None:
        outbox = self._outbox
        self._outbox = []
        for transport, address, packet in outbox:
            if not transport.is_closing():  # closed while the service stops
                transport.sendto(packet, address)


class _UdpTrackerProtocol(asyncio.DatagramProtocol):
    """Hands the datagrams of one socket to the shared UdpTracker."""

    def __init__(self, server: UdpTracker) -> None:
        self._server = server
        self._transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # A datagram endpoint's transport, which asyncio's selector loop does not derive from DatagramTransport.
        self._transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: Address) -> None:
        if self._transport is not None:
            self._server.handle_datagram(self._transport, data, addr)

    def error_received(self, exc: Exception) -> None:
        # A failed send; the client will retry, as UDP clients do after a lost reply.
        self._server.send_failures += 1


def bind_udp_socket(address: ListenAddress) -> socket.socket:
    """Bind a UDP socket ourselves, so the bound port is known even for port 0.

    IPv6 sockets are IPv6-only, so an IPv4 address needs its own entry in `udp_listen`.
    """
    family = socket.AF_INET6 if ":" in address.host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_DGRAM)
    try:
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        sock.bind((address.host, address.port))
        sock.setblocking(False)
    except OSError:
        sock.close()
        raise

    return sock
