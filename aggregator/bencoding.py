"""Bencode for the wire: bencode2 (C) on every hot path, bencode.py as a lenient fallback decoder.

bench/bencode_codecs.py measures both. bencode2 rejects dictionaries with unsorted or duplicate
keys, which some upstream trackers send, so `decode` retries those bodies with bencode.py.
"""

from typing import Any

import bencode2
import bencodepy

from aggregator.errors import BencodeError

# Keeps byte-string keys and values as bytes: upstream replies carry raw peer strings.
_lenient = bencodepy.Bencode(encoding=None, encoding_fallback=None, dict_ordered=False)


def encode(value: Any) -> bytes:
    """Bencode `value`; str keys and values are written as UTF-8."""
    encoded: bytes = bencode2.bencode(value)

    return encoded


def decode(data: bytes) -> Any:
    """Decode one bencoded value, raising BencodeError for anything that is not exactly one value.

    Dictionary keys come back as bytes. Unsorted and duplicate keys are accepted (the last one wins).
    """
    try:
        return bencode2.bdecode(data)
    except bencode2.BencodeDecodeError:
        pass
    except Exception as error:  # bencode2 raises other types on some malformed inputs
        raise BencodeError(f"invalid bencode: {error}") from None

    try:
        return _lenient.decode(data)
    except Exception as error:  # bencode.py raises several unrelated types on malformed input
        raise BencodeError(f"invalid bencode: {error}") from None
