"""Decoder for the raw query string of tracker requests.

Tracker requests carry binary values (info_hash, peer_id) percent-encoded byte by byte, so the
query is decoded from its raw form. A `+` stays a literal plus because BEP 3 uses no form
encoding, and literal characters and `%XX` escapes may be mixed in one value.
"""

from urllib.parse import unquote_to_bytes


def parse_query(raw_query: str | bytes) -> list[tuple[str, bytes]]:
    """Split a raw query string into (name, value) pairs in order, percent-decoding each value.

    Names are decoded too and kept as text; repeated names (scrape's info_hash) stay separate pairs.
    An invalid escape such as "%zz" is kept literally, as urllib does.
    """
    pairs: list[tuple[str, bytes]] = []
    # Bytes come straight from the request line. surrogatepass: a query string built by another
    # transport may hold lone surrogates.
    raw = raw_query if isinstance(raw_query, bytes) else raw_query.encode("utf-8", "surrogatepass")
    for field in raw.split(b"&"):
        if not field:
            continue

        name, _, value = field.partition(b"=")
        pairs.append((unquote_to_bytes(name).decode("latin-1"), unquote_to_bytes(value)))

    return pairs
