"""Validated announce requests, parsed from the raw query string (BEP 3, BEP 23, BEP 7)."""

import enum
from dataclasses import dataclass

from aggregator.errors import RequestError
from aggregator.query import parse_first_values

ID_BYTES = 20
MAX_KEY_BYTES = 64
# 2**64 - 1 has 20 digits; some clients send larger `left` values for magnets, so allow a margin.
MAX_COUNTER_DIGITS = 30


class Event(enum.Enum):
    """The `event` of an announce; NONE is a regular periodic announce."""

    NONE = ""
    STARTED = "started"
    COMPLETED = "completed"
    STOPPED = "stopped"
    PAUSED = "paused"  # BEP 21: a partial seed that stopped downloading; counted like NONE


# The `event` label of the announce metrics. A dict lookup, because Enum.value is a slow
# property on Python 3.11.
EVENT_LABELS = {event: event.value or "none" for event in Event}

_EVENTS = {event.value.encode(): event for event in Event}
_EVENTS[b"empty"] = Event.NONE  # BEP 3 names the regular announce "empty"
# A missing `event` is looked up as b"", which maps to Event.NONE above.


@dataclass(frozen=True, slots=True)
class AnnounceLimits:
    """Bounds from the settings that parsing applies."""

    default_numwant: int
    max_numwant: int


# Not frozen, because a frozen dataclass sets each of the 14 fields through object.__setattr__,
# which made parse_announce about 1.3 µs slower (CPython 3.11, queries of bench/announce_path.py).
# Treat an instance as immutable anyway, and use dataclasses.replace for a changed copy.
@dataclass(slots=True)
class AnnounceRequest:
    """One client announce whose fields passed validation."""

    info_hash: bytes
    peer_id: bytes
    port: int
    uploaded: int
    downloaded: int
    left: int | None  # None when the client sent no `left`; such a peer counts as a leecher
    event: Event
    numwant: int  # already clamped to 0..max_numwant
    compact: bool
    no_peer_id: bool
    key: bytes | None
    # Raw `ip` (BEP 3), `ipv4` and `ipv6` (BEP 7) values, unchecked: they count only for trusted
    # networks, which aggregator.client_address decides.
    ip: bytes | None = None
    ipv4: bytes | None = None
    ipv6: bytes | None = None

    @property
    def is_seeder(self) -> bool:
        return self.left == 0


def parse_announce(raw_query: str | bytes, limits: AnnounceLimits) -> AnnounceRequest:
    """Parse and validate an announce query; raise RequestError naming the first bad parameter."""
    fields = parse_first_values(raw_query)  # the first occurrence wins, as in most trackers
    numwant = _parse_numwant(fields.get(b"numwant"), limits)
    info_hash = _parse_id(fields.get(b"info_hash"), "info_hash")
    peer_id = _parse_id(fields.get(b"peer_id"), "peer_id")
    port = _parse_port(fields.get(b"port"))
    uploaded = _parse_counter(fields.get(b"uploaded"), "uploaded") or 0
    downloaded = _parse_counter(fields.get(b"downloaded"), "downloaded") or 0
    left = _parse_counter(fields.get(b"left"), "left")
    event = _parse_event(fields.get(b"event", b""))
    compact = fields.get(b"compact", b"1") != b"0"
    no_peer_id = fields.get(b"no_peer_id", b"0") == b"1"
    key = _parse_key(fields.get(b"key"))

    # Positional arguments in field order, because 14 keyword arguments cost about 0.5 µs more per
    # call on CPython 3.11.
    return AnnounceRequest(
        info_hash,
        peer_id,
        port,
        uploaded,
        downloaded,
        left,
        event,
        numwant,
        compact,
        no_peer_id,
        key,
        fields.get(b"ip"),
        fields.get(b"ipv4"),
        fields.get(b"ipv6"),
    )


def _parse_id(value: bytes | None, name: str) -> bytes:
    if value is None:
        raise RequestError(name, "missing, expected 20 bytes")
    if len(value) != ID_BYTES:
        raise RequestError(name, f"expected 20 bytes, got {len(value)}")

    return value


def _parse_port(value: bytes | None) -> int:
    if value is None:
        raise RequestError("port", "missing, expected an integer from 1 to 65535")
    # A value that is no number becomes 0, so the one range test below rejects it too.
    port = int(value) if value.isdigit() and len(value) <= 5 else 0
    if not 1 <= port <= 65535:
        raise RequestError("port", f"expected an integer from 1 to 65535, got {_show(value)}")

    return port


def _parse_counter(value: bytes | None, name: str) -> int | None:
    if value is None:
        return None
    if not value.isdigit() or len(value) > MAX_COUNTER_DIGITS:
        raise RequestError(name, f"expected a non-negative integer, got {_show(value)}")

    return int(value)


def _parse_event(value: bytes) -> Event:
    event = _EVENTS.get(value)
    if event is None:
        raise RequestError(
            "event", f"expected started, completed, stopped, paused or empty, got {_show(value)}"
        )

    return event


def _parse_numwant(value: bytes | None, limits: AnnounceLimits) -> int:
    if value is None:
        return min(limits.default_numwant, limits.max_numwant)

    # Some clients send -1 for "the tracker's default", as BEP 15 defines for UDP.
    if value == b"-1":
        return min(limits.default_numwant, limits.max_numwant)
    if not value.isdigit() or len(value) > MAX_COUNTER_DIGITS:
        raise RequestError("numwant", f"expected a non-negative integer, got {_show(value)}")

    return min(int(value), limits.max_numwant)


def _parse_key(value: bytes | None) -> bytes | None:
    if value is not None and len(value) > MAX_KEY_BYTES:
        raise RequestError("key", f"expected at most {MAX_KEY_BYTES} bytes, got {len(value)}")

    return value


def _show(value: bytes) -> str:
    """Render a client value for a failure reason: printable ASCII as is, the rest escaped, cut to 40."""
    text = ascii(value[:40].decode("latin-1"))
    if len(value) > 40:
        text += "..."

    return text
