"""BEP 15 and BEP 41 packet parsing and building: layouts, limits, and arbitrary bytes."""

import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from aggregator.announce import AnnounceLimits, Event
from aggregator.errors import AggregatorError, RequestError
from aggregator.udp_codec import (
    ANNOUNCE_BYTES,
    MAX_SCRAPE_HASHES,
    PROTOCOL_ID,
    Action,
    ScrapeEntry,
    UdpPacketError,
    build_announce_reply,
    build_announce_request,
    build_connect_reply,
    build_connect_request,
    build_error_reply,
    build_scrape_reply,
    build_scrape_request,
    encode_url_data,
    parse_announce,
    parse_announce_reply,
    parse_connect,
    parse_connect_reply,
    parse_error_reply,
    parse_header,
    parse_scrape,
    parse_scrape_reply,
)

LIMITS = AnnounceLimits(default_numwant=50, max_numwant=200)
INFO_HASH = bytes(range(20))
PEER_ID = b"-LT2010-abcdefghijkl"
CONNECTION_ID = 0x0123456789ABCDEF

u32 = st.integers(min_value=0, max_value=0xFFFFFFFF)
u64 = st.integers(min_value=0, max_value=0xFFFFFFFFFFFFFFFF)
twenty_bytes = st.binary(min_size=20, max_size=20)


def announce_packet(**overrides: object) -> bytes:
    fields: dict[str, object] = {
        "connection_id": CONNECTION_ID,
        "transaction_id": 7,
        "info_hash": INFO_HASH,
        "peer_id": PEER_ID,
        "port": 6881,
    }
    fields.update(overrides)

    return build_announce_request(**fields)  # type: ignore[arg-type]


# ---------------------------------------------------------------- connect


def test_connect_request_layout() -> None:
    packet = build_connect_request(0x11223344)

    assert packet == bytes.fromhex("0000041727101980" "00000000" "11223344")
    header = parse_connect(packet)
    assert header.connection_id == PROTOCOL_ID
    assert header.action == Action.CONNECT
    assert header.transaction_id == 0x11223344


def test_connect_wrong_protocol_id_is_rejected() -> None:
    packet = struct.pack("!QII", 0x41727101981, 0, 5)

    with pytest.raises(UdpPacketError, match="protocol id"):
        parse_connect(packet)


def test_connect_tolerates_longer_packet() -> None:
    header = parse_connect(build_connect_request(9) + b"future extension")

    assert header.transaction_id == 9


def test_connect_reply_layout() -> None:
    packet = build_connect_reply(0xA1B2C3D4, CONNECTION_ID)

    assert packet == bytes.fromhex("00000000" "a1b2c3d4" "0123456789abcdef")
    assert parse_connect_reply(packet) == (0xA1B2C3D4, CONNECTION_ID)


@pytest.mark.parametrize("size", [0, 1, 8, 15])
def test_header_below_16_bytes_is_rejected(size: int) -> None:
    with pytest.raises(UdpPacketError, match="at least 16 bytes"):
        parse_header(bytes(size))


# ---------------------------------------------------------------- announce


def test_announce_request_fields() -> None:
    packet = announce_packet(
        downloaded=2**40,
        left=2**64 - 1,
        uploaded=3,
        event=Event.STARTED,
        ip_address=0x7F000001,
        key=0xDEADBEEF,
        num_want=30,
    )

    assert len(packet) == ANNOUNCE_BYTES
    announce = parse_announce(packet, LIMITS)
    assert announce.header.connection_id == CONNECTION_ID
    assert announce.header.transaction_id == 7
    assert announce.ip_address == 0x7F000001
    assert announce.url_data == b""
    request = announce.request
    assert request.info_hash == INFO_HASH
    assert request.peer_id == PEER_ID
    assert request.port == 6881
    assert request.downloaded == 2**40
    assert request.left == 2**64 - 1
    assert request.uploaded == 3
    assert request.event is Event.STARTED
    assert request.numwant == 30
    assert request.key == b"deadbeef"
    assert request.compact


@pytest.mark.parametrize(
    ("code", "event"),
    [(0, Event.NONE), (1, Event.COMPLETED), (2, Event.STARTED), (3, Event.STOPPED), (4, Event.PAUSED)],
)
def test_announce_event_codes(code: int, event: Event) -> None:
    packet = bytearray(announce_packet())
    struct.pack_into("!I", packet, 80, code)

    assert parse_announce(bytes(packet), LIMITS).request.event is event


def test_announce_unknown_event_is_rejected() -> None:
    packet = bytearray(announce_packet())
    struct.pack_into("!I", packet, 80, 5)

    with pytest.raises(RequestError, match="invalid event"):
        parse_announce(bytes(packet), LIMITS)


def test_announce_num_want_minus_one_means_default() -> None:
    packet = announce_packet(num_want=-1)

    assert packet[92:96] == b"\xff\xff\xff\xff"
    assert parse_announce(packet, LIMITS).request.numwant == 50


def test_announce_num_want_is_clamped() -> None:
    assert parse_announce(announce_packet(num_want=10_000), LIMITS).request.numwant == 200
    assert parse_announce(announce_packet(num_want=0), LIMITS).request.numwant == 0


def test_announce_port_zero_is_rejected() -> None:
    with pytest.raises(RequestError, match="invalid port: expected an integer from 1 to 65535, got 0"):
        parse_announce(announce_packet(port=0), LIMITS)


@pytest.mark.parametrize("size", [16, 60, 97])
def test_announce_below_98_bytes_is_rejected(size: int) -> None:
    with pytest.raises(UdpPacketError, match="at least 98 bytes"):
        parse_announce(announce_packet()[:size], LIMITS)


def test_announce_bep41_url_data_and_unknown_option() -> None:
    # URLData "/announce?x=1", then unknown type 3 with one data byte, then EndOfOptions.
    options = b"\x02\x0d/announce?x=1" + b"\x03\x01\x00" + b"\x00"

    announce = parse_announce(announce_packet(options=options), LIMITS)

    assert announce.url_data == b"/announce?x=1"
    assert announce.request.port == 6881


def test_announce_bep41_url_data_chunks_concatenate() -> None:
    options = b"\x02\x04/dir" + b"\x01\x01" + b"\x02\x04?a=b" + b"\x02\x00"

    assert parse_announce(announce_packet(options=options), LIMITS).url_data == b"/dir?a=b"


def test_announce_bep41_end_of_options_stops_parsing() -> None:
    # After EndOfOptions, even a truncated option is not read.
    options = b"\x02\x02/a" + b"\x00" + b"\x02\x09/b"

    assert parse_announce(announce_packet(options=options), LIMITS).url_data == b"/a"


@pytest.mark.parametrize(
    "options",
    [
        pytest.param(b"\x02", id="url-data-without-length"),
        pytest.param(b"\x02\x05/ab", id="url-data-shorter-than-length"),
        pytest.param(b"\x02\x01/\x07", id="unknown-option-without-length"),
        pytest.param(b"\x09\x03\x00", id="unknown-option-shorter-than-length"),
    ],
)
def test_announce_truncated_option_is_rejected(options: bytes) -> None:
    with pytest.raises(UdpPacketError, match="announce option"):
        parse_announce(announce_packet(options=options), LIMITS)


def test_encode_url_data_splits_into_255_byte_chunks() -> None:
    url = b"/announce?" + b"k" * 600
    options = encode_url_data(url)

    assert options[0] == 0x02
    assert options[1] == 255
    assert len(options) == len(url) + 2 * 3
    assert parse_announce(announce_packet(options=options), LIMITS).url_data == url


def test_announce_reply_layout() -> None:
    endpoints = [bytes([127, 0, 0, 1, 0x1A, 0xE1]), bytes([10, 0, 0, 2, 0, 80])]

    packet = build_announce_reply(0x01020304, interval=1800, leechers=3, seeders=5, peers=b"".join(endpoints))

    assert packet[:20] == bytes.fromhex("00000001" "01020304" "00000708" "00000003" "00000005")
    assert len(packet) == 20 + 12
    reply = parse_announce_reply(packet, 6)
    assert reply.transaction_id == 0x01020304
    assert reply.interval == 1800
    assert reply.leechers == 3
    assert reply.seeders == 5
    assert reply.endpoints == endpoints


def test_announce_reply_clamps_counts_to_u32() -> None:
    packet = build_announce_reply(1, interval=60, leechers=2**40, seeders=-1, peers=b"")

    reply = parse_announce_reply(packet, 6)
    assert reply.leechers == 0xFFFFFFFF
    assert reply.seeders == 0


@pytest.mark.parametrize(
    ("value", "expected"),
    [(0, 0), (0xFFFFFFFF, 0xFFFFFFFF), (2**32, 0xFFFFFFFF), (-1, 0), (-(2**40), 0)],
)
def test_announce_reply_u32_bounds_per_field(value: int, expected: int) -> None:
    for field in ("interval", "leechers", "seeders"):
        counts = {"interval": 1800, "leechers": 3, "seeders": 5, field: value}

        reply = parse_announce_reply(build_announce_reply(9, peers=b"", **counts), 6)

        assert getattr(reply, field) == expected, field
        others = {name: getattr(reply, name) for name in counts if name != field}
        assert others == {name: counts[name] for name in others}, field


# ---------------------------------------------------------------- scrape


def test_scrape_request_keeps_order() -> None:
    hashes = [b"\x02" * 20, b"\x01" * 20, b"\x03" * 20]

    scrape = parse_scrape(build_scrape_request(CONNECTION_ID, 11, hashes))

    assert scrape.header.transaction_id == 11
    assert scrape.info_hashes == hashes


def test_scrape_ignores_partial_trailing_hash() -> None:
    packet = build_scrape_request(CONNECTION_ID, 11, [INFO_HASH]) + b"\xff" * 19

    assert parse_scrape(packet).info_hashes == [INFO_HASH]


def test_scrape_limits() -> None:
    assert len(parse_scrape(build_scrape_request(1, 2, [INFO_HASH] * MAX_SCRAPE_HASHES)).info_hashes) == 74

    with pytest.raises(UdpPacketError, match="at most 74"):
        parse_scrape(build_scrape_request(1, 2, [INFO_HASH] * (MAX_SCRAPE_HASHES + 1)))
    with pytest.raises(UdpPacketError, match="no info_hash"):
        parse_scrape(build_scrape_request(1, 2, []))


def test_scrape_reply_of_two_hashes() -> None:
    entries = [ScrapeEntry(seeders=4, completed=9, leechers=2), ScrapeEntry(seeders=0, completed=1, leechers=7)]

    packet = build_scrape_reply(0x55, entries)

    assert len(packet) == 8 + 24
    assert packet == bytes.fromhex(
        "00000002" "00000055" "00000004" "00000009" "00000002" "00000000" "00000001" "00000007"
    )
    assert parse_scrape_reply(packet) == (0x55, entries)


# ---------------------------------------------------------------- errors


def test_error_reply_layout() -> None:
    packet = build_error_reply(0x99, "connection id expired")

    assert packet == bytes.fromhex("00000003" "00000099") + b"connection id expired"
    assert parse_error_reply(packet) == (0x99, "connection id expired")


def test_error_reply_is_cut_to_limit() -> None:
    packet = build_error_reply(0x99, "connection id expired", max_bytes=16)

    assert len(packet) == 16
    assert parse_error_reply(packet) == (0x99, "connecti")


def test_action_mismatch_is_rejected() -> None:
    with pytest.raises(UdpPacketError, match="invalid action"):
        parse_announce(build_scrape_request(1, 2, [INFO_HASH]), LIMITS)
    with pytest.raises(UdpPacketError, match="invalid action"):
        parse_scrape(announce_packet())
    with pytest.raises(UdpPacketError, match="invalid action"):
        parse_connect(announce_packet())


# ---------------------------------------------------------------- properties


@given(st.binary(max_size=400))
def test_arbitrary_bytes_raise_only_project_errors(packet: bytes) -> None:
    for parse in (parse_header, parse_connect, parse_scrape, lambda data: parse_announce(data, LIMITS)):
        try:
            parse(packet)
        except AggregatorError:
            pass


@given(st.binary(max_size=300))
def test_arbitrary_options_raise_only_project_errors(options: bytes) -> None:
    try:
        announce = parse_announce(announce_packet(options=options), LIMITS)
    except AggregatorError:
        return

    assert len(announce.url_data) <= len(options)


@given(
    connection_id=u64,
    transaction_id=u32,
    info_hash=twenty_bytes,
    peer_id=twenty_bytes,
    port=st.integers(min_value=1, max_value=65535),
    downloaded=u64,
    left=u64,
    uploaded=u64,
    event=st.sampled_from([Event.NONE, Event.COMPLETED, Event.STARTED, Event.STOPPED, Event.PAUSED]),
    ip_address=u32,
    key=u32,
    num_want=st.integers(min_value=-(2**31), max_value=2**31 - 1),
    url_data=st.one_of(st.none(), st.binary(max_size=700)),
)
def test_announce_round_trip(
    connection_id: int,
    transaction_id: int,
    info_hash: bytes,
    peer_id: bytes,
    port: int,
    downloaded: int,
    left: int,
    uploaded: int,
    event: Event,
    ip_address: int,
    key: int,
    num_want: int,
    url_data: bytes | None,
) -> None:
    packet = build_announce_request(
        connection_id,
        transaction_id,
        info_hash,
        peer_id,
        port,
        downloaded=downloaded,
        left=left,
        uploaded=uploaded,
        event=event,
        ip_address=ip_address,
        key=key,
        num_want=num_want,
        options=b"" if url_data is None else encode_url_data(url_data),
    )

    announce = parse_announce(packet, LIMITS)

    assert announce.header.connection_id == connection_id
    assert announce.header.transaction_id == transaction_id
    assert announce.ip_address == ip_address
    assert announce.url_data == (url_data or b"")
    request = announce.request
    assert (request.info_hash, request.peer_id, request.port) == (info_hash, peer_id, port)
    assert (request.downloaded, request.left, request.uploaded) == (downloaded, left, uploaded)
    assert request.event is event
    assert request.key is not None and int(request.key, 16) == key
    expected_numwant = LIMITS.default_numwant if num_want < 0 else min(num_want, LIMITS.max_numwant)
    assert request.numwant == expected_numwant


@given(connection_id=u64, transaction_id=u32, hashes=st.lists(twenty_bytes, min_size=1, max_size=MAX_SCRAPE_HASHES))
def test_scrape_round_trip(connection_id: int, transaction_id: int, hashes: list[bytes]) -> None:
    scrape = parse_scrape(build_scrape_request(connection_id, transaction_id, hashes))

    assert scrape.header.connection_id == connection_id
    assert scrape.header.transaction_id == transaction_id
    assert scrape.info_hashes == hashes


@given(transaction_id=u32, connection_id=u64)
def test_connect_round_trip(transaction_id: int, connection_id: int) -> None:
    assert parse_connect(build_connect_request(transaction_id)).transaction_id == transaction_id
    assert parse_connect_reply(build_connect_reply(transaction_id, connection_id)) == (transaction_id, connection_id)


@given(
    transaction_id=u32,
    counts=st.lists(st.tuples(u32, u32, u32), max_size=MAX_SCRAPE_HASHES),
)
def test_scrape_reply_round_trip(transaction_id: int, counts: list[tuple[int, int, int]]) -> None:
    entries = [ScrapeEntry(*count) for count in counts]

    assert parse_scrape_reply(build_scrape_reply(transaction_id, entries)) == (transaction_id, entries)


@given(transaction_id=u32, endpoints=st.lists(st.binary(min_size=18, max_size=18), max_size=50))
def test_announce_reply_round_trip_ipv6(transaction_id: int, endpoints: list[bytes]) -> None:
    packet = build_announce_reply(transaction_id, interval=900, leechers=1, seeders=2, peers=b"".join(endpoints))

    assert len(packet) == 20 + 18 * len(endpoints)
    assert parse_announce_reply(packet, 18).endpoints == endpoints
