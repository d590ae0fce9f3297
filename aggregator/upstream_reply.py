"""Parsing of upstream tracker announce replies (BEP 3, BEP 23, BEP 7, BEP 31)."""

import enum
from dataclasses import dataclass
from typing import Any

from aggregator import bencoding
from aggregator.endpoints import IPV4_ENDPOINT_BYTES, IPV6_ENDPOINT_BYTES, make_endpoint, pack_ip, split_compact
from aggregator.errors import AggregatorError, BencodeError

# Bounds on what an upstream may ask for: below the floor we would announce wastefully often,
# above the ceiling a garbage value would silence a forwarder for days.
MIN_INTERVAL_FLOOR_S = 60
MAX_INTERVAL_S = 86400
DEFAULT_INTERVAL_S = 1800


class FailureKind(enum.Enum):
    """Kind of upstream announce failure; docs/upstream.md lists what each one leads to."""

    TIMEOUT = "timeout"  # no reply in upstream_timeout_s (HTTP) or after every UDP try
    CONNECTION = "connection"  # reset, closed or broken connection after it was established
    REFUSED = "refused"  # TCP connection refused, or ICMP port unreachable for UDP
    DNS = "dns"  # the host name does not resolve
    SERVER_ERROR = "server_error"  # HTTP 5xx other than 503
    RATE_LIMITED = "rate_limited"  # HTTP 429 or 503, with or without Retry-After
    CLIENT_ERROR = "client_error"  # HTTP 4xx other than 429, or a redirect that is not followed
    BODY_TOO_LARGE = "body_too_large"
    NOT_A_TRACKER = "not_a_tracker"  # the body is not bencode or not a dictionary (HTML, truncated)
    BAD_REPLY = "bad_reply"  # a UDP reply that is too short or has the wrong action
    TRACKER_FAILURE = "tracker_failure"  # a bencoded `failure reason` or a UDP error packet
    INTERNAL = "internal"  # a bug in the aggregator, logged with its traceback


class UpstreamFailure(AggregatorError):
    """An upstream announce that brought no usable reply."""

    def __init__(
        self,
        kind: FailureKind,
        detail: str,
        retry_in_min: int | None = None,
        retry_after_s: float | None = None,
    ) -> None:
        super().__init__(f"{kind.value}: {detail}")
        self.kind = kind
        self.detail = detail
        self.retry_in_min = retry_in_min  # BEP 31 `retry in`, minutes; -1 means "never"
        self.retry_after_s = retry_after_s  # from an HTTP Retry-After header, in seconds from now


@dataclass(frozen=True, slots=True)
class UpstreamReply:
    """A successful upstream announce reply, reduced to what the aggregator uses."""

    interval_s: int
    min_interval_s: int
    endpoints: list[bytes]  # compact IPv4 (6 bytes) and IPv6 (18 bytes) endpoints, port 0 dropped
    complete: int
    incomplete: int
    downloaded: int  # completed downloads the upstream reports (a de facto key, 0 when absent)
    tracker_id: bytes | None
    warning: str | None


def parse_announce_reply(body: bytes) -> UpstreamReply:
    """Parse a bencoded announce reply; raise UpstreamFailure for a failure or a malformed body."""
    try:
        reply = bencoding.decode(body)
    except BencodeError as error:
        raise UpstreamFailure(FailureKind.NOT_A_TRACKER, f"{error}, body starts {body[:40]!r}") from None
    if not isinstance(reply, dict):
        raise UpstreamFailure(FailureKind.NOT_A_TRACKER, f"expected a dictionary, got {type(reply).__name__}")

    failure = reply.get(b"failure reason")
    if failure is not None:
        raise UpstreamFailure(FailureKind.TRACKER_FAILURE, _text(failure), _retry_in(reply.get(b"retry in")))

    interval_s = _bounded_int(reply.get(b"interval"), DEFAULT_INTERVAL_S)
    min_interval_s = _bounded_int(reply.get(b"min interval"), 0)
    endpoints = _peers(reply.get(b"peers")) + _peers6(reply.get(b"peers6"))
    tracker_id = reply.get(b"tracker id")
    warning = reply.get(b"warning message")

    return UpstreamReply(
        interval_s=max(interval_s, MIN_INTERVAL_FLOOR_S),
        min_interval_s=min_interval_s,
        endpoints=endpoints,
        complete=_count(reply.get(b"complete")),
        incomplete=_count(reply.get(b"incomplete")),
        downloaded=_count(reply.get(b"downloaded")),
        tracker_id=tracker_id if isinstance(tracker_id, bytes) and tracker_id else None,
        warning=_text(warning) if warning is not None else None,
    )


def _peers(value: Any) -> list[bytes]:
    if isinstance(value, bytes):
        return split_compact(value, IPV4_ENDPOINT_BYTES)
    if isinstance(value, list):
        return _dict_peers(value)

    return []


def _peers6(value: Any) -> list[bytes]:
    if not isinstance(value, bytes):
        return []

    # A v4-mapped entry (::ffff:a.b.c.d) is an IPv4 peer: store it as one, as dictionary peers are.
    return [
        endpoint[12:] if endpoint.startswith(_V4_MAPPED_PREFIX) else endpoint
        for endpoint in split_compact(value, IPV6_ENDPOINT_BYTES)
    ]


_V4_MAPPED_PREFIX = bytes(10) + b"\xff\xff"


def _dict_peers(entries: list[Any]) -> list[bytes]:
    """Convert BEP 3 dictionary peers; entries with a bad ip or port are skipped, not fatal."""
    endpoints = []
    for entry in entries:
        if not isinstance(entry, dict):
            continue

        ip = entry.get(b"ip")
        port = entry.get(b"port")
        if not isinstance(ip, bytes) or not isinstance(port, int) or not 1 <= port <= 65535:
            continue

        try:
            endpoints.append(make_endpoint(pack_ip(ip.decode("ascii")), port))
        except (UnicodeDecodeError, ValueError):
            continue  # a host name or junk instead of an address

    return endpoints


def _bounded_int(value: Any, default: int) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
        return default

    return min(value, MAX_INTERVAL_S)


def _count(value: Any) -> int:
    if not isinstance(value, int) or value < 0:
        return 0

    return min(value, 2**31 - 1)


def _retry_in(value: Any) -> int | None:
    """BEP 31: minutes as an integer, or the string "never" (returned as -1)."""
    if value == b"never":
        return -1
    if isinstance(value, int) and value > 0:
        return value
    if isinstance(value, bytes) and value.isdigit():
        return int(value)

    return None


def _text(value: Any) -> str:
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")[:300]

    return str(value)[:300]


__all__ = ["FailureKind", "UpstreamFailure", "UpstreamReply", "parse_announce_reply"]
