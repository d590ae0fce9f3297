"""The UDP tracker of a running service, driven by real UDP sockets on 127.0.0.1 and ::1."""

import asyncio
import itertools
import os
import socket
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import replace

import pytest
import structlog

from aggregator.announce import Event
from aggregator.config import ForwarderConfig, ListenAddress, Settings
from aggregator.service import Service
from aggregator.udp_front import MAX_IPV6_REPLY_PEERS
from aggregator.udp_codec import (
    Action,
    AnnounceReply,
    ScrapeEntry,
    build_announce_request,
    build_connect_request,
    build_scrape_request,
    parse_announce_reply,
    parse_connect_reply,
    parse_error_reply,
    parse_reply_header,
    parse_scrape_reply,
)
from tests.fake_clock import FakeClock
from tests.fake_tracker import FakeTracker, compact_peer

RECEIVE_TIMEOUT_S = 5.0
INFO_HASH = bytes(range(0x40, 0x54))
OTHER_INFO_HASH = bytes(range(0x60, 0x74))

_transaction_ids = itertools.count(0x1000)


def ipv6_loopback_available() -> bool:
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as probe:
            probe.bind(("::1", 0))
    except OSError:
        return False

    return True


LOOPBACKS = [
    pytest.param("127.0.0.1", id="ipv4"),
    pytest.param(
        "::1",
        id="ipv6",
        marks=pytest.mark.skipif(not ipv6_loopback_available(), reason="this machine has no IPv6 loopback"),
    ),
]


def packed(host: str) -> bytes:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET

    return socket.inet_pton(family, host)


def endpoint(host: str, port: int) -> bytes:
    return packed(host) + port.to_bytes(2, "big")


def width_of(host: str) -> int:
    return 18 if ":" in host else 6


class UdpClient(asyncio.DatagramProtocol):
    """A client socket connected to one tracker address; received datagrams wait in a queue."""

    def __init__(self, sock: socket.socket) -> None:
        self.received: asyncio.Queue[bytes] = asyncio.Queue()
        self.sock = sock
        self.host = sock.getpeername()[0]

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        self.received.put_nowait(data)

    def send(self, packet: bytes) -> None:
        # Straight to the socket: asyncio's sendto silently skips an empty datagram.
        self.sock.send(packet)

    async def receive(self) -> bytes:
        return await asyncio.wait_for(self.received.get(), RECEIVE_TIMEOUT_S)

    async def request(self, packet: bytes) -> bytes:
        self.send(packet)

        return await self.receive()

    async def connect(self) -> int:
        transaction_id = next(_transaction_ids)
        reply = await self.request(build_connect_request(transaction_id))
        received_transaction_id, connection_id = parse_connect_reply(reply)
        assert received_transaction_id == transaction_id

        return connection_id

    async def announce(
        self, connection_id: int, port: int, info_hash: bytes = INFO_HASH, **fields: object
    ) -> AnnounceReply:
        transaction_id = next(_transaction_ids)
        peer_id = b"-UT3550-" + port.to_bytes(12, "big")
        packet = build_announce_request(
            connection_id, transaction_id, info_hash, peer_id, port, **fields  # type: ignore[arg-type]
        )
        reply = await self.request(packet)
        action, received_transaction_id = parse_reply_header(reply)
        assert action == Action.ANNOUNCE, f"expected an announce reply, got {reply!r}"
        assert received_transaction_id == transaction_id

        return parse_announce_reply(reply, width_of(self.host))

    async def expect_error(self, packet: bytes) -> str:
        """Send `packet`, and return the message of the error reply that carries its transaction id."""
        reply = await self.request(packet)
        action, _ = parse_reply_header(reply)
        assert action == Action.ERROR, f"expected an error reply, got {reply!r}"
        transaction_id, message = parse_error_reply(reply)
        assert transaction_id == int.from_bytes(packet[12:16], "big")

        return message


@asynccontextmanager
async def udp_client(host: str, port: int) -> AsyncIterator[UdpClient]:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_DGRAM)
    sock.connect((host, port))
    sock.setblocking(False)
    transport, client = await asyncio.get_running_loop().create_datagram_endpoint(lambda: UdpClient(sock), sock=sock)
    try:
        yield client
    finally:
        transport.close()


def udp_settings(hosts: list[str], trackers: Sequence[FakeTracker] = (), **overrides: object) -> Settings:
    forwarders = tuple(
        ForwarderConfig(uri=tracker.announce_url, name=f"fake{number}", ip=None, host=None)
        for number, tracker in enumerate(trackers)
    )
    settings = Settings(
        listen=(ListenAddress("127.0.0.1", 0),),
        udp_listen=tuple(ListenAddress(host, 0) for host in hosts),
        forwarders=forwarders,
        admin_listen=None,
        first_announce_wait_ms=3000,
    )

    return replace(settings, **overrides)  # type: ignore[arg-type]


@asynccontextmanager
async def running(settings: Settings, clock: Callable[[], float] | None = None) -> AsyncIterator[Service]:
    service = Service(settings, clock=clock) if clock is not None else Service(settings)
    await service.start()
    try:
        yield service
    finally:
        await service.stop()


def udp_port(service: Service, host: str) -> int:
    for bound_host, bound_port in service.udp_bound:
        if bound_host == host:
            return bound_port
    raise AssertionError(f"the service has no UDP socket on {host}: {service.udp_bound}")


# ---------------------------------------------------------------- the exchange


@pytest.mark.parametrize("host", LOOPBACKS)
async def test_connect_then_announce_reply_layout(host: str) -> None:
    async with running(udp_settings([host])) as service:
        port = udp_port(service, host)
        async with udp_client(host, port) as first, udp_client(host, port) as second:
            first_id = await first.connect()
            reply = await first.announce(first_id, 6001, event=Event.STARTED, left=1000)

            assert reply.interval == 1800
            assert (reply.leechers, reply.seeders) == (1, 0)
            assert reply.endpoints == []

            second_id = await second.connect()
            reply = await second.announce(second_id, 6002, event=Event.STARTED, left=0)

            assert (reply.leechers, reply.seeders) == (1, 1)
            assert reply.endpoints == [endpoint(host, 6001)]

        assert service.swarms.peer_count == 2
        assert service.udp.connect_replies == 2
        assert service.udp.announce_replies == 2


async def test_service_logs_udp_listening() -> None:
    with structlog.testing.capture_logs() as records:
        async with running(udp_settings(["127.0.0.1"])) as service:
            port = udp_port(service, "127.0.0.1")

    listening = [record for record in records if record["event"] == "listening" and record["transport"] == "udp"]
    expected = {"event": "listening", "transport": "udp", "host": "127.0.0.1", "port": port, "log_level": "info"}
    assert listening == [expected]
    assert port != 0


async def test_num_want_minus_one_gives_default() -> None:
    async with running(udp_settings(["127.0.0.1"], default_numwant=3, max_numwant=5)) as service:
        async with udp_client("127.0.0.1", udp_port(service, "127.0.0.1")) as client:
            connection_id = await client.connect()
            for peer_port in range(7001, 7008):
                await client.announce(connection_id, peer_port, num_want=0)

            default = await client.announce(connection_id, 7100, num_want=-1)
            clamped = await client.announce(connection_id, 7100, num_want=1000)
            exact = await client.announce(connection_id, 7100, num_want=2)

    assert len(default.endpoints) == 3
    assert len(clamped.endpoints) == 5
    assert len(exact.endpoints) == 2
    assert endpoint("127.0.0.1", 7100) not in default.endpoints + clamped.endpoints


async def test_port_zero_gets_error() -> None:
    async with running(udp_settings(["127.0.0.1"])) as service:
        async with udp_client("127.0.0.1", udp_port(service, "127.0.0.1")) as client:
            connection_id = await client.connect()
            packet = build_announce_request(connection_id, 0xBEEF, INFO_HASH, b"-UT3550-000000000000", 0)

            message = await client.expect_error(packet)

        assert message == "invalid port: expected an integer from 1 to 65535, got 0"
        assert service.swarms.peer_count == 0
        assert service.udp.invalid_requests == 1


async def test_scrape_two_hashes_in_request_order() -> None:
    async with running(udp_settings(["127.0.0.1"])) as service:
        async with udp_client("127.0.0.1", udp_port(service, "127.0.0.1")) as client:
            connection_id = await client.connect()
            await client.announce(connection_id, 6001, left=0, event=Event.COMPLETED)
            await client.announce(connection_id, 6002, left=50)

            packet = build_scrape_request(connection_id, 0x5C, [OTHER_INFO_HASH, INFO_HASH])
            reply = await client.request(packet)

    assert len(reply) == 8 + 24
    transaction_id, entries = parse_scrape_reply(reply)
    assert transaction_id == 0x5C
    assert entries == [ScrapeEntry(seeders=0, completed=0, leechers=0), ScrapeEntry(seeders=1, completed=1, leechers=1)]
    assert service.swarms.get(OTHER_INFO_HASH) is None  # a scrape creates no swarm


# ---------------------------------------------------------------- rejected packets


async def test_expired_connection_id_gets_error() -> None:
    clock = FakeClock()
    async with running(udp_settings(["127.0.0.1"]), clock) as service:
        async with udp_client("127.0.0.1", udp_port(service, "127.0.0.1")) as client:
            connection_id = await client.connect()

            # BEP 15: the tracker accepts an id for two minutes after sending it.
            clock.advance(119.0)
            await client.announce(connection_id, 6001)

            clock.advance(62.0)  # 181 s: past the last bucket that can still accept it
            packet = build_announce_request(connection_id, 0xE0E0, INFO_HASH, b"-UT3550-000000000000", 6001)
            message = await client.expect_error(packet)

            assert message == "connection id expired"
            fresh_id = await client.connect()
            assert fresh_id != connection_id
            await client.announce(fresh_id, 6001)

        assert service.udp.expired_connection_ids == 1


async def test_connection_id_is_bound_to_client_address() -> None:
    async with running(udp_settings(["127.0.0.1"])) as service:
        port = udp_port(service, "127.0.0.1")
        async with udp_client("127.0.0.1", port) as owner, udp_client("127.0.0.1", port) as other:
            connection_id = await owner.connect()

            packet = build_scrape_request(connection_id, 0x77, [INFO_HASH])
            assert await other.expect_error(packet) == "connection id expired"
            forged = build_scrape_request(connection_id ^ 1, 0x78, [INFO_HASH])
            assert await owner.expect_error(forged) == "connection id expired"
            reply = await owner.request(build_scrape_request(connection_id, 0x79, [INFO_HASH]))
            assert parse_scrape_reply(reply)[0] == 0x79

        assert service.udp.expired_connection_ids == 2
        assert service.udp.scrape_replies == 1


async def test_unknown_action_gets_error() -> None:
    async with running(udp_settings(["127.0.0.1"])) as service:
        async with udp_client("127.0.0.1", udp_port(service, "127.0.0.1")) as client:
            connection_id = await client.connect()
            packet = connection_id.to_bytes(8, "big") + (7).to_bytes(4, "big") + (0x4242).to_bytes(4, "big") + bytes(40)

            message = await client.expect_error(packet)

        assert message == "unknown action 7"
        assert service.udp.invalid_requests == 1


async def test_wrong_protocol_id_gets_error() -> None:
    async with running(udp_settings(["127.0.0.1"])) as service:
        async with udp_client("127.0.0.1", udp_port(service, "127.0.0.1")) as client:
            packet = (0x41727101981).to_bytes(8, "big") + bytes(4) + (0x31).to_bytes(4, "big")

            message = await client.expect_error(packet + bytes(100))

        assert message.startswith("invalid protocol id")
        assert service.udp.connect_replies == 0


@pytest.mark.parametrize("size", [0, 1, 8, 15])
async def test_short_packet_gets_silence(size: int) -> None:
    async with running(udp_settings(["127.0.0.1"])) as service:
        async with udp_client("127.0.0.1", udp_port(service, "127.0.0.1")) as client:
            client.send(os.urandom(size))
            # The service handles datagrams in arrival order, so a reply to the short packet
            # would arrive before the reply to this connect.
            reply = await client.request(build_connect_request(0x600D))

            assert parse_connect_reply(reply)[0] == 0x600D
            assert client.received.empty()

        assert service.udp.dropped_packets == 1
        assert service.udp.connect_replies == 1


async def test_unauthenticated_error_is_never_larger_than_request() -> None:
    unknown_id = (0x1122334455667788).to_bytes(8, "big")
    requests = {
        "announce with unknown id": build_announce_request(0x1122334455667788, 1, INFO_HASH, bytes(20), 6881),
        "short announce with unknown id": unknown_id + (1).to_bytes(4, "big") + (2).to_bytes(4, "big"),
        "scrape with unknown id": build_scrape_request(0x1122334455667788, 3, [INFO_HASH]),
        "empty scrape with unknown id": build_scrape_request(0x1122334455667788, 4, []),
        "unknown action": unknown_id + (9).to_bytes(4, "big") + (5).to_bytes(4, "big"),
        "connect with wrong protocol id": unknown_id + bytes(4) + (6).to_bytes(4, "big"),
    }
    async with running(udp_settings(["127.0.0.1"])) as service:
        async with udp_client("127.0.0.1", udp_port(service, "127.0.0.1")) as client:
            for name, packet in requests.items():
                reply = await client.request(packet)

                assert len(reply) <= len(packet), f"{name}: {len(reply)}-byte reply to a {len(packet)}-byte request"
                assert parse_reply_header(reply) == (Action.ERROR, int.from_bytes(packet[12:16], "big")), name

        assert service.swarms.peer_count == 0


async def test_denied_infohash_gets_error() -> None:
    async with running(udp_settings(["127.0.0.1"])) as service:
        service.tracker.is_allowed = lambda info_hash: info_hash != INFO_HASH
        async with udp_client("127.0.0.1", udp_port(service, "127.0.0.1")) as client:
            connection_id = await client.connect()
            packet = build_announce_request(connection_id, 0xD0, INFO_HASH, b"-UT3550-000000000000", 6001)

            message = await client.expect_error(packet)
            allowed = await client.announce(connection_id, 6001, info_hash=OTHER_INFO_HASH)

        assert message == f"info_hash {INFO_HASH.hex()} is not allowed on this tracker"
        assert allowed.endpoints == []
        assert service.udp.denied_announces == 1
        assert service.swarms.get(INFO_HASH) is None


# ---------------------------------------------------------------- address families


@pytest.mark.skipif(not ipv6_loopback_available(), reason="this machine has no IPv6 loopback")
async def test_each_family_gets_only_its_own_peers() -> None:
    async with running_fake_tracker() as upstream:
        upstream.reply = {
            b"interval": 1800,
            b"peers": compact_peer("127.0.0.9", 7009),
            b"peers6": endpoint("::1", 7010),
        }
        async with running(udp_settings(["127.0.0.1", "::1"], [upstream])) as service:
            port4 = udp_port(service, "127.0.0.1")
            port6 = udp_port(service, "::1")
            async with (
                udp_client("127.0.0.1", port4) as client4,
                udp_client("::1", port6) as client6,
            ):
                id4 = await client4.connect()
                id6 = await client6.connect()
                await client4.announce(id4, 6001)
                await client6.announce(id6, 6002)

                reply4 = await client4.announce(id4, 6003)
                reply6 = await client6.announce(id6, 6004)

    assert set(reply4.endpoints) == {endpoint("127.0.0.1", 6001), compact_peer("127.0.0.9", 7009)}
    assert set(reply6.endpoints) == {endpoint("::1", 6002), endpoint("::1", 7010)}
    # The counts cover the local swarm of both families, and every peer here announced left=0.
    assert (reply4.seeders, reply4.leechers) == (3, 0)
    assert (reply6.seeders, reply6.leechers) == (4, 0)


async def test_announce_waiting_for_upstream_does_not_block_others() -> None:
    async with running_fake_tracker() as upstream:
        upstream.reply = {b"interval": 1800, b"peers": compact_peer("127.0.0.9", 7009)}
        upstream.hold = asyncio.Event()
        async with running(udp_settings(["127.0.0.1"], [upstream], first_announce_wait_ms=10_000)) as service:
            port = udp_port(service, "127.0.0.1")
            async with udp_client("127.0.0.1", port) as waiting, udp_client("127.0.0.1", port) as other:
                waiting_id = await waiting.connect()
                transaction_id = 0xAA01
                waiting.send(
                    build_announce_request(waiting_id, transaction_id, INFO_HASH, b"-UT3550-000000000001", 6001)
                )
                await upstream.wait_for_announces(1)  # the first upstream announce is now held

                # Another client gets replies while the first announce waits for the upstream reply.
                other_id = await other.connect()
                scrape = await other.request(build_scrape_request(other_id, 0xAA02, [INFO_HASH]))
                assert parse_scrape_reply(scrape) == (0xAA02, [ScrapeEntry(seeders=1, completed=0, leechers=0)])
                assert waiting.received.empty()

                upstream.hold.set()
                reply = parse_announce_reply(await waiting.receive(), 6)

            assert reply.transaction_id == transaction_id
            assert reply.endpoints == [compact_peer("127.0.0.9", 7009)]
            assert service.udp.announce_replies == 1


@asynccontextmanager
async def running_fake_tracker() -> AsyncIterator[FakeTracker]:
    tracker = FakeTracker()
    await tracker.start()
    try:
        yield tracker
    finally:
        await tracker.stop()


async def test_ipv6_reply_fits_minimum_mtu() -> None:
    async with running(udp_settings(["::1"], max_numwant=200)) as service:
        port = udp_port(service, "::1")
        async with udp_client("::1", port) as client:
            connection_id = await client.connect()
            for peer_port in range(7400, 7500):
                await client.announce(connection_id, peer_port, num_want=0)

            reply = await client.announce(connection_id, 7500, num_want=200)

    assert len(reply.endpoints) == MAX_IPV6_REPLY_PEERS
    assert 20 + 18 * len(reply.endpoints) <= 1280 - 40 - 8
