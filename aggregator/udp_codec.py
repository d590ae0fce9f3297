"""UDP tracker packets (BEP 15) with the announce options of BEP 41: pure parsing and building.

Every integer is big-endian. Parsers accept packets longer than the fields they read, because
BEP 15 allows later extensions to append fields. They raise only UdpPacketError (the packet's
layout is wrong) or RequestError (a field has an invalid value), whatever bytes they get.
"""

import enum
import struct
from dataclasses import dataclass

from aggregator.announce import AnnounceLimits, AnnounceRequest, Event
from aggregator.errors import AggregatorError, RequestError

PROTOCOL_ID = 0x41727101980  # the connection_id field of every connect request
MAX_SCRAPE_HASHES = 74  # BEP 15: "up to about 74 torrents can be scraped at once"
INFO_HASH_BYTES = 20
MAX_URL_DATA_CHUNK = 255  # one URLData option carries at most this many bytes

_HEADER = struct.Struct("!QII")  # connection_id (or protocol_id), action, transaction_id
_ANNOUNCE_BODY = struct.Struct("!20s20sQQQIIIiH")
_REPLY_HEADER = struct.Struct("!II")  # action, transaction_id
_CONNECT_REPLY = struct.Struct("!IIQ")
_ANNOUNCE_REPLY = struct.Struct("!IIIII")  # action, transaction_id, interval, leechers, seeders
_SCRAPE_ENTRY = struct.Struct("!III")  # seeders, completed, leechers

HEADER_BYTES = _HEADER.size  # 16
ANNOUNCE_BYTES = _HEADER.size + _ANNOUNCE_BODY.size  # 98, where the BEP 41 options start
_U32_MAX = 0xFFFFFFFF

# BEP 41 option types. Every type above NOP has a length byte, so unknown types can be skipped.
_OPTION_END = 0x0
_OPTION_NOP = 0x1
_OPTION_URL_DATA = 0x2


class UdpPacketError(AggregatorError):
    """A UDP tracker packet is too short, truncated or otherwise not laid out as BEP 15 defines."""


class Action(enum.IntEnum):
    CONNECT = 0
    ANNOUNCE = 1
    SCRAPE = 2
    ERROR = 3


# Plain ints for the per-datagram paths: reading an enum member takes about ten times as long
# as reading a global (Python 3.11).
ACTION_CONNECT = int(Action.CONNECT)
ACTION_ANNOUNCE = int(Action.ANNOUNCE)
ACTION_SCRAPE = int(Action.SCRAPE)


# BEP 15 numbers the events 0 to 3. libtorrent sends its own event number 4 for BEP 21's `paused`
# (event_t in libtorrent 2.1.1).
_EVENT_BY_CODE = {0: Event.NONE, 1: Event.COMPLETED, 2: Event.STARTED, 3: Event.STOPPED, 4: Event.PAUSED}
_CODE_BY_EVENT = {event: code for code, event in _EVENT_BY_CODE.items()}


@dataclass(frozen=True, slots=True)
class RequestHeader:
    """The first 16 bytes of every request."""

    connection_id: int  # PROTOCOL_ID in a connect request
    action: int  # a plain int, because unknown actions must still be reported
    transaction_id: int


@dataclass(frozen=True, slots=True)
class UdpAnnounce:
    """A parsed announce request: the validated announce plus the fields that only UDP has."""

    header: RequestHeader
    request: AnnounceRequest
    ip_address: int  # the IPv4 field of the request, 0 when the client leaves it to the tracker
    url_data: bytes  # path and query of the tracker URL from BEP 41 URLData options, b"" without any


@dataclass(frozen=True, slots=True)
class UdpScrape:
    header: RequestHeader
    info_hashes: list[bytes]


@dataclass(frozen=True, slots=True)
class ScrapeEntry:
    """Counts of one infohash in a scrape reply."""

    seeders: int
    completed: int
    leechers: int


@dataclass(frozen=True, slots=True)
class AnnounceReply:
    transaction_id: int
    interval: int
    leechers: int
    seeders: int
    endpoints: list[bytes]  # compact endpoints of 6 (IPv4) or 18 (IPv6) bytes


# ---------------------------------------------------------------- requests


def parse_header(packet: bytes) -> RequestHeader:
    """Parse the 16-byte header that every request starts with, or raise UdpPacketError for fewer bytes."""
    return RequestHeader(*unpack_header(packet))


def unpack_header(packet: bytes) -> tuple[int, int, int]:
    """Return the connection id, action and transaction id of a request, or raise UdpPacketError below 16 bytes.

    A plain tuple, because a server reads the header of every datagram and a RequestHeader
    object costs more than the unpacking.
    """
    if len(packet) < HEADER_BYTES:
        raise UdpPacketError(f"invalid packet: expected at least {HEADER_BYTES} bytes, got {len(packet)}")

    connection_id, action, transaction_id = _HEADER.unpack_from(packet)

    return connection_id, action, transaction_id


def parse_connect(packet: bytes) -> RequestHeader:
    """Parse a connect request, or raise UdpPacketError unless it carries the BEP 15 protocol id."""
    header = parse_header(packet)
    if header.action != Action.CONNECT:
        raise UdpPacketError(f"invalid action: expected {Action.CONNECT} (connect), got {header.action}")
    if header.connection_id != PROTOCOL_ID:
        raise UdpPacketError(f"invalid protocol id: expected {PROTOCOL_ID:#x}, got {header.connection_id:#x}")

    return header


def parse_announce(packet: bytes, limits: AnnounceLimits) -> UdpAnnounce:
    """Parse and validate an announce request, including its BEP 41 options after byte 98.

    A negative num_want means the tracker's default (BEP 15 defines -1), and larger values are
    clamped to limits.max_numwant. Raises RequestError naming the field for an invalid event or
    port 0, and UdpPacketError for a short packet or a truncated option.
    """
    header = parse_header(packet)
    if header.action != Action.ANNOUNCE:
        raise UdpPacketError(f"invalid action: expected {Action.ANNOUNCE} (announce), got {header.action}")
    request, ip_address, url_data = parse_announce_body(packet, limits)

    return UdpAnnounce(header, request, ip_address, url_data)


def parse_announce_body(packet: bytes, limits: AnnounceLimits) -> tuple[AnnounceRequest, int, bytes]:
    """Parse and validate the announce fields after the 16-byte header, which the caller has checked.

    Returns the request, the IPv4 field and the BEP 41 URLData, and raises as parse_announce
    does. A server that has read the header already calls this directly.
    """
    if len(packet) < ANNOUNCE_BYTES:
        raise UdpPacketError(f"invalid announce: expected at least {ANNOUNCE_BYTES} bytes, got {len(packet)}")

    (info_hash, peer_id, downloaded, left, uploaded, event_code, ip_address, key, num_want, port) = (
        _ANNOUNCE_BODY.unpack_from(packet, HEADER_BYTES)
    )

    event = _EVENT_BY_CODE.get(event_code)
    if event is None:
        raise RequestError(
            "event", f"expected 0 (none), 1 (completed), 2 (started), 3 (stopped) or 4 (paused), got {event_code}"
        )
    if port == 0:
        raise RequestError("port", "expected an integer from 1 to 65535, got 0")
    if num_want < 0:
        numwant = min(limits.default_numwant, limits.max_numwant)
    else:
        numwant = min(num_want, limits.max_numwant)

    # Positional, because keywords make this dataclass slower to build, and it is built for every
    # announce. The order is that of the fields: info_hash, peer_id, port, uploaded, downloaded,
    # left, event, numwant, compact, no_peer_id, key.
    request = AnnounceRequest(
        info_hash,
        peer_id,
        port,
        uploaded,
        downloaded,
        left,
        event,
        numwant,
        True,
        True,
        b"%08x" % key,  # 8 hex digits, the form that HTTP clients usually send
    )
    # Most clients send no options, and the walk costs more than this length check.
    url_data = _parse_options(packet[ANNOUNCE_BYTES:]) if len(packet) > ANNOUNCE_BYTES else b""

    return request, ip_address, url_data


def _parse_options(options: bytes) -> bytes:
    """Walk the BEP 41 options and return the concatenated URLData, skipping unknown types by their length."""
    url_data = bytearray()
    offset = 0
    while offset < len(options):
        option_type = options[offset]
        if option_type == _OPTION_END:
            break
        if option_type == _OPTION_NOP:
            offset += 1
            continue

        if offset + 1 >= len(options):
            raise UdpPacketError(f"invalid announce option {option_type:#x}: the length byte is missing")
        length = options[offset + 1]
        data_start = offset + 2
        if data_start + length > len(options):
            raise UdpPacketError(
                f"invalid announce option {option_type:#x}: length {length}, "
                f"but {len(options) - data_start} bytes follow"
            )
        if option_type == _OPTION_URL_DATA:
            url_data += options[data_start : data_start + length]
        offset = data_start + length

    return bytes(url_data)


def parse_scrape(packet: bytes) -> UdpScrape:
    """Parse a scrape request, keeping the infohashes in request order.

    Raises UdpPacketError for no infohash or more than MAX_SCRAPE_HASHES. Trailing bytes shorter
    than one infohash are ignored.
    """
    header = parse_header(packet)
    if header.action != Action.SCRAPE:
        raise UdpPacketError(f"invalid action: expected {Action.SCRAPE} (scrape), got {header.action}")

    count = (len(packet) - HEADER_BYTES) // INFO_HASH_BYTES
    if count == 0:
        raise UdpPacketError("invalid scrape: no info_hash")
    if count > MAX_SCRAPE_HASHES:
        raise UdpPacketError(f"invalid scrape: expected at most {MAX_SCRAPE_HASHES} info_hash values, got {count}")

    info_hashes = [
        packet[offset : offset + INFO_HASH_BYTES]
        for offset in range(HEADER_BYTES, HEADER_BYTES + count * INFO_HASH_BYTES, INFO_HASH_BYTES)
    ]

    return UdpScrape(header, info_hashes)


def build_connect_request(transaction_id: int) -> bytes:
    return _HEADER.pack(PROTOCOL_ID, Action.CONNECT, transaction_id)


def build_announce_request(
    connection_id: int,
    transaction_id: int,
    info_hash: bytes,
    peer_id: bytes,
    port: int,
    *,
    downloaded: int = 0,
    left: int = 0,
    uploaded: int = 0,
    event: Event = Event.NONE,
    ip_address: int = 0,
    key: int = 0,
    num_want: int = -1,
    options: bytes = b"",
) -> bytes:
    """Build an announce request, with `options` as raw BEP 41 bytes after byte 98."""
    header = _HEADER.pack(connection_id, Action.ANNOUNCE, transaction_id)
    body = _ANNOUNCE_BODY.pack(
        info_hash, peer_id, downloaded, left, uploaded, _CODE_BY_EVENT[event], ip_address, key, num_want, port
    )

    return header + body + options


def encode_url_data(url_data: bytes) -> bytes:
    """Encode the path and query of a tracker URL as BEP 41 URLData options of at most 255 bytes each."""
    if not url_data:
        return bytes([_OPTION_URL_DATA, 0])

    options = bytearray()
    for start in range(0, len(url_data), MAX_URL_DATA_CHUNK):
        chunk = url_data[start : start + MAX_URL_DATA_CHUNK]
        options += bytes([_OPTION_URL_DATA, len(chunk)]) + chunk

    return bytes(options)


def build_scrape_request(connection_id: int, transaction_id: int, info_hashes: list[bytes]) -> bytes:
    return _HEADER.pack(connection_id, Action.SCRAPE, transaction_id) + b"".join(info_hashes)


# ---------------------------------------------------------------- replies


def build_connect_reply(transaction_id: int, connection_id: int) -> bytes:
    return _CONNECT_REPLY.pack(Action.CONNECT, transaction_id, connection_id)


def build_announce_reply(transaction_id: int, interval: int, leechers: int, seeders: int, peers: bytes) -> bytes:
    """Build an announce reply; `peers` contains compact endpoints of the request's address family only."""
    # One shift tests all three for 0..2**32-1 (a negative value shifts to -1), so the usual
    # reply skips the three clamps, which cost more than the packing.
    if (interval | leechers | seeders) >> 32:
        interval, leechers, seeders = _clamp_u32(interval), _clamp_u32(leechers), _clamp_u32(seeders)

    return _ANNOUNCE_REPLY.pack(ACTION_ANNOUNCE, transaction_id, interval, leechers, seeders) + peers


def build_scrape_reply(transaction_id: int, entries: list[ScrapeEntry]) -> bytes:
    parts = [_REPLY_HEADER.pack(Action.SCRAPE, transaction_id)]
    for entry in entries:
        parts.append(
            _SCRAPE_ENTRY.pack(_clamp_u32(entry.seeders), _clamp_u32(entry.completed), _clamp_u32(entry.leechers))
        )

    return b"".join(parts)


def build_error_reply(transaction_id: int, message: str, max_bytes: int | None = None) -> bytes:
    """Build an error reply with a UTF-8 message, cut so that the whole packet fits in `max_bytes`."""
    packet = _REPLY_HEADER.pack(Action.ERROR, transaction_id) + message.encode()
    if max_bytes is not None:
        packet = packet[: max(max_bytes, _REPLY_HEADER.size)]

    return packet


def parse_reply_header(packet: bytes) -> tuple[int, int]:
    """Return the action and transaction id of a reply, or raise UdpPacketError below 8 bytes."""
    if len(packet) < _REPLY_HEADER.size:
        raise UdpPacketError(f"invalid reply: expected at least {_REPLY_HEADER.size} bytes, got {len(packet)}")

    action, transaction_id = _REPLY_HEADER.unpack_from(packet)

    return action, transaction_id


def parse_connect_reply(packet: bytes) -> tuple[int, int]:
    """Return the transaction id and the connection id of a connect reply."""
    _expect_reply(packet, Action.CONNECT, _CONNECT_REPLY.size)
    _, transaction_id, connection_id = _CONNECT_REPLY.unpack_from(packet)

    return transaction_id, connection_id


def parse_announce_reply(packet: bytes, endpoint_bytes: int) -> AnnounceReply:
    """Parse an announce reply whose peers are `endpoint_bytes` wide (6 over IPv4, 18 over IPv6)."""
    _expect_reply(packet, Action.ANNOUNCE, _ANNOUNCE_REPLY.size)
    _, transaction_id, interval, leechers, seeders = _ANNOUNCE_REPLY.unpack_from(packet)
    peers = packet[_ANNOUNCE_REPLY.size :]
    if len(peers) % endpoint_bytes:
        raise UdpPacketError(f"invalid announce reply: {len(peers)} peer bytes, not a multiple of {endpoint_bytes}")
    endpoints = [peers[offset : offset + endpoint_bytes] for offset in range(0, len(peers), endpoint_bytes)]

    return AnnounceReply(transaction_id, interval, leechers, seeders, endpoints)


def parse_scrape_reply(packet: bytes) -> tuple[int, list[ScrapeEntry]]:
    """Return the transaction id and the entries of a scrape reply, in request order."""
    _expect_reply(packet, Action.SCRAPE, _REPLY_HEADER.size)
    _, transaction_id = _REPLY_HEADER.unpack_from(packet)
    body = packet[_REPLY_HEADER.size :]
    if len(body) % _SCRAPE_ENTRY.size:
        raise UdpPacketError(f"invalid scrape reply: {len(body)} entry bytes, not a multiple of {_SCRAPE_ENTRY.size}")
    entries = [
        ScrapeEntry(*_SCRAPE_ENTRY.unpack_from(body, offset)) for offset in range(0, len(body), _SCRAPE_ENTRY.size)
    ]

    return transaction_id, entries


def parse_error_reply(packet: bytes) -> tuple[int, str]:
    """Return the transaction id and the message of an error reply, with invalid UTF-8 replaced."""
    _expect_reply(packet, Action.ERROR, _REPLY_HEADER.size)
    _, transaction_id = _REPLY_HEADER.unpack_from(packet)

    return transaction_id, packet[_REPLY_HEADER.size :].decode(errors="replace")


def _expect_reply(packet: bytes, action: Action, min_bytes: int) -> None:
    received_action, _ = parse_reply_header(packet)
    if received_action != action:
        raise UdpPacketError(f"invalid reply: expected action {action} ({action.name.lower()}), got {received_action}")
    if len(packet) < min_bytes:
        raise UdpPacketError(
            f"invalid {action.name.lower()} reply: expected at least {min_bytes} bytes, got {len(packet)}"
        )


def _clamp_u32(value: int) -> int:
    return min(max(value, 0), _U32_MAX)
