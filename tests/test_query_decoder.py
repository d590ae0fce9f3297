"""Tests for the raw query decoder and announce validation (aggregator.query, aggregator.announce)."""

import string

import pytest
from hypothesis import given
from hypothesis import strategies as st

from aggregator.announce import AnnounceLimits, AnnounceRequest, Event, parse_announce
from aggregator.errors import RequestError
from aggregator.query import parse_query

LIMITS = AnnounceLimits(default_numwant=50, max_numwant=200)

INFO_HASH = bytes(range(0x41, 0x41 + 20))  # "ABCDEFGHIJKLMNOPQRST"
PEER_ID = b"-XX0001-abcdefghijkl"
UNRESERVED = frozenset((string.ascii_letters + string.digits + "-._~").encode())


def percent_encode(value: bytes) -> str:
    return "".join(f"%{byte:02X}" for byte in value)


def announce_query(**overrides: str | None) -> str:
    """Build a valid announce query. An override of None drops that parameter."""
    fields: dict[str, str | None] = {
        "info_hash": percent_encode(INFO_HASH),
        "peer_id": percent_encode(PEER_ID),
        "port": "6881",
        "uploaded": "0",
        "downloaded": "0",
        "left": "100",
    }
    fields.update(overrides)

    return "&".join(f"{name}={value}" for name, value in fields.items() if value is not None)


def parse_error(raw_query: str) -> RequestError:
    with pytest.raises(RequestError) as caught:
        parse_announce(raw_query, LIMITS)

    return caught.value


# parse_query


def test_query_mixed_literal_and_escapes() -> None:
    pairs = parse_query("info_hash=ab%00c%FFd&x=1")

    assert pairs == [("info_hash", b"ab\x00c\xffd"), ("x", b"1")]


def test_query_plus_stays_literal() -> None:
    pairs = parse_query("v=%20+%2B")

    assert pairs == [("v", b" ++")]


def test_query_keeps_repeated_names() -> None:
    pairs = parse_query("info_hash=a&info_hash=b&&x")

    assert pairs == [("info_hash", b"a"), ("info_hash", b"b"), ("x", b"")]


def test_query_invalid_escape_kept() -> None:
    pairs = parse_query("v=%zz%4")

    assert pairs == [("v", b"%zz%4")]


# parse_announce: info_hash and peer_id


def test_announce_info_hash_mixed_encoding() -> None:
    # Clients send printable bytes literally and escape the rest, byte by byte.
    info_hash = b"ab\x00cd\xffef\x12gh\x80ij\x7fk~.-_"
    raw = "".join(chr(byte) if byte in UNRESERVED else f"%{byte:02x}" for byte in info_hash)

    request = parse_announce(announce_query(info_hash=raw), LIMITS)

    assert request.info_hash == info_hash


def test_announce_space_and_plus() -> None:
    # 0x20 arrives as %20 and 0x2B as a literal "+", which must not turn into a space.
    info_hash = b" +" + bytes(18)
    raw = "%20+" + percent_encode(bytes(18))

    request = parse_announce(announce_query(info_hash=raw), LIMITS)

    assert request.info_hash == info_hash
    assert request.info_hash[1:2] == b"+"


def test_announce_hex_info_hash_rejected() -> None:
    error = parse_error(announce_query(info_hash="0123456789abcdef0123456789abcdef01234567"))

    assert error.parameter == "info_hash"
    assert "info_hash" in str(error)
    assert "expected 20 bytes, got 40" in str(error)


def test_announce_missing_info_hash() -> None:
    error = parse_error(announce_query(info_hash=None))

    assert error.parameter == "info_hash"
    assert "missing" in str(error)


def test_announce_missing_peer_id() -> None:
    error = parse_error(announce_query(peer_id=None))

    assert error.parameter == "peer_id"
    assert "peer_id" in str(error)


def test_announce_short_peer_id() -> None:
    error = parse_error(announce_query(peer_id="abc"))

    assert error.parameter == "peer_id"
    assert "got 3" in str(error)


# parse_announce: port


def test_announce_port_valid() -> None:
    assert parse_announce(announce_query(port="1"), LIMITS).port == 1
    assert parse_announce(announce_query(port="65535"), LIMITS).port == 65535


@pytest.mark.parametrize("port", ["0", "65536", "abc", "-1", "", "99999999", "6881x"])
def test_announce_port_invalid(port: str) -> None:
    error = parse_error(announce_query(port=port))

    assert error.parameter == "port"
    assert "port" in str(error)


def test_announce_port_missing() -> None:
    error = parse_error(announce_query(port=None))

    assert error.parameter == "port"
    assert "missing" in str(error)


# parse_announce: numwant


def test_announce_numwant_zero() -> None:
    assert parse_announce(announce_query(numwant="0"), LIMITS).numwant == 0


def test_announce_numwant_clamped() -> None:
    assert parse_announce(announce_query(numwant="100000"), LIMITS).numwant == 200


def test_announce_numwant_within_limit() -> None:
    assert parse_announce(announce_query(numwant="120"), LIMITS).numwant == 120


def test_announce_numwant_minus_one_default() -> None:
    assert parse_announce(announce_query(numwant="-1"), LIMITS).numwant == 50


def test_announce_numwant_missing_default() -> None:
    assert parse_announce(announce_query(), LIMITS).numwant == 50


def test_announce_numwant_default_capped() -> None:
    limits = AnnounceLimits(default_numwant=500, max_numwant=200)

    assert parse_announce(announce_query(), limits).numwant == 200


@pytest.mark.parametrize("numwant", ["-2", "abc", "1.5"])
def test_announce_numwant_invalid(numwant: str) -> None:
    error = parse_error(announce_query(numwant=numwant))

    assert error.parameter == "numwant"


# parse_announce: event


def test_announce_event_bogus() -> None:
    error = parse_error(announce_query(event="bogus"))

    assert error.parameter == "event"
    assert "event" in str(error)
    assert "bogus" in str(error)


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("started", Event.STARTED),
        ("completed", Event.COMPLETED),
        ("stopped", Event.STOPPED),
        ("paused", Event.PAUSED),
        ("empty", Event.NONE),
        ("", Event.NONE),
        (None, Event.NONE),
    ],
)
def test_announce_event_valid(raw: str | None, expected: Event) -> None:
    assert parse_announce(announce_query(event=raw), LIMITS).event is expected


# parse_announce: counters


@pytest.mark.parametrize("left", [2**64, 10**25])
def test_announce_left_huge(left: int) -> None:
    request = parse_announce(announce_query(left=str(left)), LIMITS)

    assert request.left == left
    assert not request.is_seeder


def test_announce_left_negative() -> None:
    error = parse_error(announce_query(left="-1"))

    assert error.parameter == "left"
    assert "left" in str(error)


def test_announce_left_missing() -> None:
    request = parse_announce(announce_query(left=None), LIMITS)

    assert request.left is None
    assert not request.is_seeder


def test_announce_left_zero_seeder() -> None:
    assert parse_announce(announce_query(left="0"), LIMITS).is_seeder


def test_announce_counters_default_zero() -> None:
    request = parse_announce(announce_query(uploaded=None, downloaded=None), LIMITS)

    assert request.uploaded == 0
    assert request.downloaded == 0


@pytest.mark.parametrize("name", ["uploaded", "downloaded"])
def test_announce_counter_invalid(name: str) -> None:
    error = parse_error(announce_query(**{name: "1e5"}))

    assert error.parameter == name


# parse_announce: flags, key and repeats


def test_announce_compact_default() -> None:
    request = parse_announce(announce_query(), LIMITS)

    assert request.compact
    assert not request.no_peer_id


def test_announce_compact_zero() -> None:
    assert not parse_announce(announce_query(compact="0"), LIMITS).compact


def test_announce_no_peer_id() -> None:
    assert parse_announce(announce_query(no_peer_id="1"), LIMITS).no_peer_id


def test_announce_key_decoded() -> None:
    request = parse_announce(announce_query(key="ab%2Bcd"), LIMITS)

    assert request.key == b"ab+cd"


def test_announce_key_too_long() -> None:
    error = parse_error(announce_query(key="k" * 65))

    assert error.parameter == "key"


def test_announce_repeated_first_wins() -> None:
    other_hash = percent_encode(b"Z" * 20)
    raw = announce_query() + f"&info_hash={other_hash}&port=9999&numwant=7&numwant=9"

    request = parse_announce(raw, LIMITS)

    assert request.info_hash == INFO_HASH
    assert request.port == 6881
    assert request.numwant == 7


# Property tests


@st.composite
def encoded_ids(draw: st.DrawFn) -> tuple[bytes, str]:
    """Draw 20 bytes and their query encoding: %XX in random hex case, or the literal character if unreserved."""
    value = draw(st.binary(min_size=20, max_size=20))
    parts = []
    for byte in value:
        if byte in UNRESERVED and draw(st.booleans()):
            parts.append(chr(byte))
        elif draw(st.booleans()):
            parts.append(f"%{byte:02X}")
        else:
            parts.append(f"%{byte:02x}")

    return value, "".join(parts)


@given(encoded_ids(), encoded_ids())
def test_announce_ids_round_trip(info_hash: tuple[bytes, str], peer_id: tuple[bytes, str]) -> None:
    raw = announce_query(info_hash=info_hash[1], peer_id=peer_id[1])

    request = parse_announce(raw, LIMITS)

    assert request.info_hash == info_hash[0]
    assert request.peer_id == peer_id[0]


def check_announce_outcome(raw_query: str) -> None:
    try:
        request = parse_announce(raw_query, LIMITS)
    except RequestError:
        return

    assert isinstance(request, AnnounceRequest)
    assert 0 <= request.numwant <= LIMITS.max_numwant
    assert 1 <= request.port <= 65535


@given(st.text())
def test_announce_any_text(raw_query: str) -> None:
    check_announce_outcome(raw_query)


@given(st.binary())
def test_announce_any_latin1(raw_bytes: bytes) -> None:
    check_announce_outcome(raw_bytes.decode("latin-1"))


QUERY_PIECES = st.sampled_from(
    ["info_hash=", "peer_id=", "port=", "left=", "numwant=", "event=", "key=", "&", "=", "%", "%2", "%FF", "+", "-", "1"]
)


@given(st.lists(st.one_of(QUERY_PIECES, st.text(max_size=3))).map("".join))
def test_announce_query_like_text(raw_query: str) -> None:
    check_announce_outcome(raw_query)
