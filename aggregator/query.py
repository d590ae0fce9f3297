"""Decoder for the raw query string of tracker requests.

Tracker requests carry binary values (info_hash, peer_id) percent-encoded byte by byte, so the
query is decoded from its raw form. A `+` stays a literal plus because BEP 3 uses no form
encoding, and literal characters and `%XX` escapes may be mixed in one value.

Every announce runs through this module, so the common shapes of a value (no escape at all, or
only `%XX` escapes) take shortcuts. Each result equals urllib.parse.unquote_to_bytes.
"""

import binascii
from urllib.parse import unquote_to_bytes

# An int operand makes `in` one memchr call, while a bytes operand such as b"%" costs about
# six times more on CPython 3.11.
_PERCENT = ord("%")


def percent_decode(value: bytes) -> bytes:
    """Decode the %XX escapes of `value`, with the same result as urllib.parse.unquote_to_bytes.

    An invalid escape such as "%zz" or a trailing "%4" is kept literally, as urllib does.
    """
    if _PERCENT not in value:
        return value

    # A value made only of %XX triplets, like a fully escaped 20-byte infohash, decodes in one C
    # call instead of one dictionary lookup per byte.
    length = len(value)
    if length % 3 == 0 and value[::3] == b"%" * (length // 3):
        digits = value.translate(None, b"%")
        # A '%' in a digit position, as in "%%%%41", starts no escape, and deleting it shortened
        # the digits.
        if len(digits) * 3 == length * 2:
            try:
                return binascii.a2b_hex(digits)
            except binascii.Error:
                pass  # a non-hex digit such as "%zz", which urllib below keeps literally

    return unquote_to_bytes(value)


def parse_query(raw_query: str | bytes) -> list[tuple[str, bytes]]:
    """Split a raw query string into (name, value) pairs in order, percent-decoding each value.

    Names are decoded too and kept as text; repeated names (scrape's info_hash) stay separate pairs.
    An invalid escape such as "%zz" is kept literally, as urllib does.
    """
    pairs: list[tuple[str, bytes]] = []
    for field in _query_bytes(raw_query).split(b"&"):
        if not field:
            continue

        name, _, value = field.partition(b"=")
        # Most fields contain no escape, so one test skips both calls.
        if _PERCENT in field:
            name = percent_decode(name)
            value = percent_decode(value)
        pairs.append((name.decode("latin-1"), value))

    return pairs


def parse_first_values(raw_query: str | bytes) -> dict[bytes, bytes]:
    """Map each percent-decoded parameter name to its first percent-decoded value.

    Later repeats of a name are ignored, as in most trackers. Names stay bytes, so b"info_hash"
    finds the value that parse_query would pair with "info_hash".
    """
    fields: dict[bytes, bytes] = {}
    for field in _query_bytes(raw_query).split(b"&"):
        name, _, value = field.partition(b"=")
        # Most fields contain no escape, so one test skips both calls.
        if _PERCENT in field:
            name = percent_decode(name)
            value = percent_decode(value)
        # An empty field ("a=1&&b=2") is skipped, as parse_query does.
        if name in fields or not field:
            continue

        fields[name] = value

    return fields


def _query_bytes(raw_query: str | bytes) -> bytes:
    # Bytes come straight from the request line. surrogatepass: a query string built by another
    # transport may contain lone surrogates.
    if isinstance(raw_query, bytes):
        return raw_query

    return raw_query.encode("utf-8", "surrogatepass")
