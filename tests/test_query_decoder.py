"""Tests for the raw query decoder and announce validation (aggregator.query, aggregator.announce)."""

import dataclasses
import string
from urllib.parse import unquote_to_bytes

import pytest
from hypothesis import given
from hypothesis import strategies as st

from aggregator.announce import AnnounceLimits, AnnounceRequest, Event, parse_announce
from aggregator.errors import RequestError
from aggregator.query import parse_first_values, parse_query, percent_decode

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


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (b"%4a%4B%6c", b"JKl"),  # every byte escaped, lowercase and uppercase hex
        (b"%41%zz%42", b"A%zzB"),  # an invalid escape among valid ones stays literal
        (b"%41%4", b"A%4"),  # a cut-off escape at the end stays literal
        (b"%%%%41", b"%%%A"),  # '%' in a digit position, on a length that fits triplets
        (b"% 4%41", b"% 4A"),  # whitespace in a digit position, which bytes.fromhex skips between pairs
        (b"%2B%+1", b"+%+1"),  # "%2B" is a plus, and "+" in a digit position is no escape
        (b"%41+%42", b"A+B"),  # a literal plus between escapes stays a plus
        (b"-XX0001-abcdefghijkl", b"-XX0001-abcdefghijkl"),  # no escape at all
        (b"%", b"%"),
        (b"", b""),
    ],
)
def test_percent_decode_cases(raw: bytes, expected: bytes) -> None:
    assert percent_decode(raw) == expected
    assert unquote_to_bytes(raw) == expected


def test_query_escaped_name() -> None:
    pairs = parse_query("info%5Fhash=%41%42&%70ort=1")

    assert pairs == [("info_hash", b"AB"), ("port", b"1")]


def test_first_values_first_wins() -> None:
    fields = parse_first_values("a=1&info%5Fhash=%41&info_hash=B&a=2")

    assert fields == {b"a": b"1", b"info_hash": b"A"}


def test_first_values_empty_fields() -> None:
    fields = parse_first_values(b"&a=1&&flag&=x&=y&")

    assert fields == {b"a": b"1", b"flag": b"", b"": b"x"}


# Pieces that make escapes likely: whole %XX escapes in both hex cases, and lone characters that
# break an escape when they land in a digit position.
ESCAPE_PIECES = st.one_of(
    st.integers(0, 255).map(lambda byte: f"%{byte:02x}".encode()),
    st.integers(0, 255).map(lambda byte: f"%{byte:02X}".encode()),
    st.sampled_from([b"%", b"+", b" ", b"\t", b"0", b"9", b"a", b"F", b"g", b"z", b"\xff", b"\x00"]),
)


@given(st.lists(ESCAPE_PIECES).map(b"".join))
def test_percent_decode_matches_urllib_on_escapes(raw: bytes) -> None:
    assert percent_decode(raw) == unquote_to_bytes(raw)


@given(st.binary())
def test_percent_decode_matches_urllib_on_bytes(raw: bytes) -> None:
    assert percent_decode(raw) == unquote_to_bytes(raw)


FIELD_PIECES = st.sampled_from([b"&", b"=", b"a", b"info%5Fhash", b"info_hash"])


@given(st.lists(st.one_of(ESCAPE_PIECES, FIELD_PIECES)).map(b"".join))
def test_first_values_match_parse_query(raw: bytes) -> None:
    expected: dict[bytes, bytes] = {}
    for name, value in parse_query(raw):
        expected.setdefault(name.encode("latin-1"), value)

    assert parse_first_values(raw) == expected


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


def test_announce_escaped_names_and_digits() -> None:
    raw = announce_query(port="%36881").replace("info_hash=", "info%5fhash=").replace("left=", "%6C%65%66%74=")

    request = parse_announce(raw, LIMITS)

    assert request.info_hash == INFO_HASH
    assert request.port == 6881
    assert request.left == 100


def test_announce_every_field_in_place() -> None:
    raw = announce_query(
        uploaded="11",
        downloaded="22",
        left="33",
        event="completed",
        numwant="44",
        compact="0",
        no_peer_id="1",
        key="k1",
        ip="10.0.0.1",
        ipv4="10.0.0.2",
        ipv6="%3A%3A3",
    )

    request = parse_announce(raw, LIMITS)

    assert request.info_hash == INFO_HASH
    assert request.peer_id == PEER_ID
    assert request.port == 6881
    assert request.uploaded == 11
    assert request.downloaded == 22
    assert request.left == 33
    assert request.event is Event.COMPLETED
    assert request.numwant == 44
    assert request.compact is False
    assert request.no_peer_id is True
    assert request.key == b"k1"
    assert request.ip == b"10.0.0.1"
    assert request.ipv4 == b"10.0.0.2"
    assert request.ipv6 == b"::3"


def test_announce_bytes_equals_text() -> None:
    raw = announce_query(event="started", key="ab%2Bcd", numwant="-1")

    assert parse_announce(raw.encode(), LIMITS) == parse_announce(raw, LIMITS)


def test_announce_replace_port() -> None:
    request = parse_announce(announce_query(), LIMITS)

    moved = dataclasses.replace(request, port=51413)

    assert moved.port == 51413
    assert request.port == 6881
    assert moved.info_hash == request.info_hash


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
