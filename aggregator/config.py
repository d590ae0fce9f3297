"""Load the aggregator settings from defaults, a YAML file, the environment and options.

Later sources win: defaults < YAML file (--config) < AGGREGATOR_<KEY> variables <
command-line options. load_settings validates every value, so the rest of the package
can trust the Settings it returns. Settings built directly, as tests do, skip these
checks. A bad value raises ConfigError with a one-line message that names the key, the
value, what is expected and the source of the value.
"""

import argparse
import dataclasses
import difflib
import ipaddress
import math
import os
import re
from collections.abc import Callable, Hashable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn
from urllib.parse import SplitResult, urlsplit

import yaml

from aggregator.errors import ConfigError

__all__ = [
    "ForwarderConfig",
    "ListenAddress",
    "Settings",
    "build_argument_parser",
    "load_settings",
    "settings_summary",
]


@dataclass(frozen=True, slots=True)
class ForwarderConfig:
    """Upstream tracker that the aggregator forwards announces to."""

    uri: str  # http://, https:// or udp:// announce URL of the upstream tracker
    name: str  # unique, by default host:port of the URI with "-2", "-3" suffixes on clashes
    ip: str | None  # `ip=` value sent to that upstream, an IPv4 or IPv6 address
    host: str | None  # Host header sent to that upstream


@dataclass(frozen=True, slots=True)
class ListenAddress:
    """Address that the tracker listens on for client announces."""

    host: str  # IP address without brackets, or a host name
    port: int  # 0 to 65535, where 0 lets the OS pick a free port (used by tests)


@dataclass(frozen=True, slots=True)
class Settings:
    """Effective configuration of one aggregator process."""

    listen: tuple[ListenAddress, ...] = (ListenAddress("127.0.0.1", 6969),)
    forwarders: tuple[ForwarderConfig, ...] = ()  # inline list first, then forwarders_file entries
    forwarders_file: str | None = None
    announce_interval: int = 1800  # seconds, `interval` sent to clients
    min_interval: int = 900  # seconds, `min interval` sent to clients, capped at the interval sent
    first_interval: int = 60  # seconds, interval for a client that got no upstream peers yet
    first_announce_wait_ms: int = 1500
    peer_ttl: int = 3600  # seconds a local peer lives without re-announcing
    upstream_peer_ttl: int = 3600  # seconds an upstream peer list stays usable after its reply
    workers: int = 16
    default_numwant: int = 50
    max_numwant: int = 200
    upstream_numwant: int = 200
    upstream_timeout_s: float = 10.0
    upstream_max_body_bytes: int = 262144
    upstream_port: int | None = None  # port announced upstream, None means the latest local peer's port
    retry_base_s: float = 30.0  # first back-off after an upstream failure
    retry_max_s: float = 1800.0  # back-off cap
    tracker_id: str | None = None  # `tracker id` sent in replies when set
    log_level: str = "info"  # debug, info, warning or error

    # Client-facing protocol.
    http_server: str = "fast"  # "fast": a lean httptools server for the client port; "aiohttp": aiohttp
    udp_listen: tuple[ListenAddress, ...] = ()  # BEP 15 UDP tracker addresses; empty = UDP off
    max_scrape_hashes: int = 64  # info_hash values accepted in one HTTP scrape
    full_scrape: bool = False  # serve /scrape without info_hash (every swarm)
    trusted_proxies: tuple[str, ...] = ()  # CIDR networks whose X-Forwarded-For / X-Real-IP count
    trusted_ip_param_networks: tuple[str, ...] = ()  # CIDR networks whose ip/ipv4/ipv6 parameters count
    infohash_denylist: str | None = None  # file of 40-hex infohashes never served nor forwarded
    infohash_allowlist: str | None = None  # file of 40-hex infohashes; when set, only these are served

    # Upstream robustness.
    forwarder_max_inflight: int = 4  # concurrent announces to one forwarder
    upstream_connect_timeout_s: float = 5.0  # TCP connect timeout of HTTP(S) upstream announces
    upstream_udp_tries: int = 2  # UDP upstream sends per request, each waiting upstream_timeout_s
    dns_cache_ttl_s: float = 300.0  # seconds a resolved upstream host name is reused
    suspend_s: float = 300.0  # suspension after HTTP 429/503 without Retry-After
    disable_after_failures: int = 10  # consecutive failures that disable a forwarder
    probe_base_s: float = 60.0  # first wait before a disabled forwarder is probed again
    probe_max_s: float = 3600.0  # cap of the growing wait between probes

    # Overload control: pressure is the ready backlog divided by backlog_capacity.
    backlog_capacity: int = 10_000
    min_workers: int = 4  # worker scaling range; min_workers == max_workers turns scaling off
    max_workers: int = 64
    scale_up_threshold: float = 0.6  # pressure above which workers are added
    scale_down_threshold: float = 0.4  # pressure below which workers are removed
    scale_up_lag_s: float = 5.0  # flush lag above which workers are added
    scale_cooldown_s: float = 10.0  # minimum time between two scaling steps
    throttle_threshold: float = 0.6  # pressure above which only the best forwarders get batches; 0 = off
    throttle_top_n: int = 20
    throttle_defer_s: float = 60.0  # mean delay of a throttled forwarder's batch
    max_forwarders_per_infohash: int = 0  # forwarders a new infohash is announced to; 0 = all
    rate_limit_threshold: float = 0.8  # pressure above which new infohashes pass a token bucket; 0 = off
    rate_limit_per_s: float = 50.0
    rate_limit_burst: int = 200
    retry_interval: int = 300  # seconds, `interval` for a client whose new infohash was not admitted
    overload_reply: str = "peers"  # "peers": local peers and retry_interval; "failure": BEP 31 failure
    max_batches: int = 1_000_000  # cap on batches; new pairs beyond it are refused; 0 = no cap

    # Operations.
    admin_listen: ListenAddress | None = ListenAddress("127.0.0.1", 9090)  # None = no admin listener
    drain_timeout_s: float = 20.0  # grace for in-flight upstream announces at shutdown
    gc_freeze_interval_s: int = 1  # freeze long-lived objects out of the garbage collector's walks; 0 = off
    state_file: str | None = None  # snapshot written at shutdown and loaded at start
    access_log: bool = False  # JSON access log of client requests
    access_log_sample: float = 1.0  # fraction of client requests logged when access_log is on


_ENV_PREFIX = "AGGREGATOR_"

# The config file may also come from the environment, which suits containers. It is not
# a Settings field, so it has its own name here.
_CONFIG_ENV = "AGGREGATOR_CONFIG"

_DAY_S = 86_400
_WEEK_S = 7 * _DAY_S

_FORWARDER_KEYS = ("uri", "name", "ip", "host")
_LOG_LEVELS = ("debug", "info", "warning", "error")

# One DNS label: 1 to 63 letters, digits, "-" or "_", not starting or ending with "-".
_HOST_LABEL = re.compile(r"(?!-)[A-Za-z0-9_-]{1,63}(?<!-)")


class _Problem(Exception):
    """Validation failure of one value. Its text follows "invalid KEY: " in the ConfigError message."""


def _show(value: object) -> str:
    """Return the repr of a value for a message, shortened so the message stays readable."""
    text = repr(value)
    if len(text) > 80:
        text = text[:77] + "..."
    return text


def _expected(description: str, value: object) -> _Problem:
    return _Problem(f"expected {description}, got {_show(value)}")


def _invalid(label: str, problem: _Problem, source: str) -> ConfigError:
    return ConfigError(f"invalid {label}: {problem} (from {source})")


@contextmanager
def _reporting(label: str, source: str) -> Iterator[None]:
    """Turn a _Problem raised in the block into a ConfigError that names the key and source."""
    try:
        yield
    except _Problem as problem:
        raise _invalid(label, problem, source) from None


# --- Rules of the scalar keys -------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _IntRule:
    low: int
    high: int
    help: str
    optional: bool = False
    metavar: str = "N"

    def describe(self) -> str:
        text = f"an integer from {self.low} to {self.high}"
        return f"{text} or null" if self.optional else text

    def check(self, value: object) -> int | None:
        if value is None and self.optional:
            return None

        # bool is a subclass of int, but `workers: true` is a mistake, not 1.
        if isinstance(value, bool) or not isinstance(value, int):
            raise _expected(self.describe(), value)
        if not self.low <= value <= self.high:
            raise _expected(self.describe(), value)
        return value


@dataclass(frozen=True, slots=True)
class _FloatRule:
    above: float  # exclusive lower bound
    high: float
    help: str
    metavar: str = "SECONDS"

    def describe(self) -> str:
        return f"a number greater than {self.above:g} and at most {self.high:g}"

    def check(self, value: object) -> float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise _expected(self.describe(), value)

        # YAML reads `.inf` and `.nan` as floats, and neither is a usable duration.
        number = float(value)
        if not math.isfinite(number) or not self.above < number <= self.high:
            raise _expected(self.describe(), value)
        return number


@dataclass(frozen=True, slots=True)
class _TextRule:
    help: str
    choices: tuple[str, ...] = ()  # compared case-insensitively, stored lower-case
    optional: bool = False
    metavar: str = "TEXT"

    def describe(self) -> str:
        text = f"one of {', '.join(self.choices)}" if self.choices else "a non-empty string"
        return f"{text} or null" if self.optional else text

    def check(self, value: object) -> str | None:
        if value is None and self.optional:
            return None
        if not isinstance(value, str) or not value.strip():
            raise _expected(self.describe(), value)
        if not self.choices:
            return value
        if value.strip().lower() not in self.choices:
            raise _expected(self.describe(), value)
        return value.strip().lower()


@dataclass(frozen=True, slots=True)
class _BoolRule:
    help: str
    metavar: str = "BOOL"

    def describe(self) -> str:
        return "true or false"

    def check(self, value: object) -> bool:
        # YAML already reads true/false/yes/no; 0 and 1 are accepted from the environment too.
        if isinstance(value, bool):
            return value
        if isinstance(value, int) and value in (0, 1):
            return bool(value)
        raise _expected(self.describe(), value)


@dataclass(frozen=True, slots=True)
class _FractionRule:
    help: str
    metavar: str = "FRACTION"

    def describe(self) -> str:
        return "a number from 0 to 1"

    def check(self, value: object) -> float:
        if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value <= 1:
            raise _expected(self.describe(), value)
        return float(value)


_ScalarRule = _IntRule | _FloatRule | _TextRule | _BoolRule | _FractionRule

_NUMWANT_MAX = 10_000

_SCALAR_RULES: dict[str, _ScalarRule] = {
    "forwarders_file": _TextRule(
        "YAML file with a list of upstream trackers, added after the inline forwarders. "
        "A relative path in the config file is resolved against the config file's folder",
        optional=True,
        metavar="PATH",
    ),
    "announce_interval": _IntRule(1, _DAY_S, "seconds sent to clients as `interval`", metavar="SECONDS"),
    "min_interval": _IntRule(
        1, _DAY_S, "seconds sent to clients as `min interval`, capped at the interval sent", metavar="SECONDS"
    ),
    "first_interval": _IntRule(
        1, _DAY_S, "seconds sent as `interval` to a client that got no upstream peers yet", metavar="SECONDS"
    ),
    "first_announce_wait_ms": _IntRule(
        0, 60_000, "maximum milliseconds that a first announce waits for upstream peers", metavar="MS"
    ),
    "peer_ttl": _IntRule(1, _WEEK_S, "seconds a local peer stays listed without re-announcing", metavar="SECONDS"),
    "upstream_peer_ttl": _IntRule(
        1, _WEEK_S, "seconds an upstream peer list stays usable after the reply that brought it", metavar="SECONDS"
    ),
    "workers": _IntRule(1, 4096, "number of workers that send upstream announces concurrently"),
    "default_numwant": _IntRule(0, _NUMWANT_MAX, "peers returned to a client that sends no numwant"),
    "max_numwant": _IntRule(0, _NUMWANT_MAX, "maximum peers returned to a client, whatever numwant it sends"),
    "upstream_numwant": _IntRule(0, _NUMWANT_MAX, "numwant sent to upstream trackers"),
    "upstream_timeout_s": _FloatRule(0, 3600, "seconds before an upstream announce times out"),
    "upstream_max_body_bytes": _IntRule(
        1, 64 * 1024 * 1024, "maximum size in bytes of an upstream reply body", metavar="BYTES"
    ),
    "upstream_port": _IntRule(
        1,
        65_535,
        "port announced to upstream trackers. By default, the port of the most recent local peer",
        optional=True,
        metavar="PORT",
    ),
    "retry_base_s": _FloatRule(0, _DAY_S, "seconds of back-off after the first upstream failure"),
    "retry_max_s": _FloatRule(0, _DAY_S, "maximum seconds of back-off after repeated upstream failures"),
    "tracker_id": _TextRule("`tracker id` sent in replies", optional=True),
    "log_level": _TextRule("log level", choices=_LOG_LEVELS, metavar="LEVEL"),
    "max_scrape_hashes": _IntRule(1, 1000, "maximum info_hash values in one HTTP scrape"),
    "http_server": _TextRule(
        "HTTP server of the client port: fast (a lean httptools server) or aiohttp",
        choices=("fast", "aiohttp"),
        metavar="KIND",
    ),
    "full_scrape": _BoolRule("serve /scrape without info_hash, listing every swarm"),
    "infohash_denylist": _TextRule(
        "file of infohashes (40 hex digits a line) that are rejected and never forwarded upstream. "
        "A relative path in the config file is resolved against the config file's folder",
        optional=True,
        metavar="PATH",
    ),
    "infohash_allowlist": _TextRule(
        "file of infohashes (40 hex digits a line); when set, every other infohash is rejected. "
        "A relative path in the config file is resolved against the config file's folder",
        optional=True,
        metavar="PATH",
    ),
    "forwarder_max_inflight": _IntRule(1, 1024, "maximum concurrent announces to one forwarder"),
    "upstream_connect_timeout_s": _FloatRule(0, 3600, "seconds before a TCP connect to an upstream times out"),
    "upstream_udp_tries": _IntRule(1, 10, "sends of one UDP upstream request, each waiting upstream_timeout_s"),
    "dns_cache_ttl_s": _FloatRule(0, _DAY_S, "seconds a resolved upstream host name is reused"),
    "suspend_s": _FloatRule(0, _WEEK_S, "seconds a forwarder is suspended after HTTP 429 or 503 without Retry-After"),
    "disable_after_failures": _IntRule(1, 1_000_000, "consecutive upstream failures that disable a forwarder"),
    "probe_base_s": _FloatRule(0, _DAY_S, "seconds before a disabled forwarder is probed the first time"),
    "probe_max_s": _FloatRule(0, _WEEK_S, "maximum seconds between probes of a disabled forwarder"),
    "drain_timeout_s": _FloatRule(0, 3600, "seconds in-flight upstream announces get at shutdown"),
    "gc_freeze_interval_s": _IntRule(
        0, 3600, "seconds between freezes of long-lived objects out of full garbage collections (0 turns it off)"
    ),
    "backlog_capacity": _IntRule(1, 100_000_000, "ready backlog at which pressure reaches 1.0", metavar="BATCHES"),
    "min_workers": _IntRule(1, 4096, "fewest upstream workers when scaling down"),
    "max_workers": _IntRule(1, 4096, "most upstream workers when scaling up"),
    "scale_up_threshold": _FractionRule("pressure above which upstream workers are added"),
    "scale_down_threshold": _FractionRule("pressure below which upstream workers are removed"),
    "scale_up_lag_s": _FloatRule(0, _DAY_S, "flush lag in seconds above which upstream workers are added"),
    "scale_cooldown_s": _FloatRule(0, _DAY_S, "minimum seconds between two worker scaling steps"),
    "throttle_threshold": _FractionRule("pressure above which only the best forwarders get batches (0 turns it off)"),
    "throttle_top_n": _IntRule(1, 100_000, "forwarders that keep getting batches while throttling"),
    "throttle_defer_s": _FloatRule(
        0, _DAY_S, "mean seconds a throttled forwarder's batch is deferred, each time from 0.5 to 1.5 times this"
    ),
    "max_forwarders_per_infohash": _IntRule(
        0, 100_000, "forwarders a new infohash is announced to, best first (0 for all)"
    ),
    "rate_limit_threshold": _FractionRule(
        "pressure above which new infohashes must pass a token bucket (0 turns it off)"
    ),
    "rate_limit_per_s": _FloatRule(
        0, 1_000_000, "new infohashes admitted per second under pressure", metavar="PER_SECOND"
    ),
    "rate_limit_burst": _IntRule(1, 10_000_000, "new infohashes admitted at once under pressure"),
    "retry_interval": _IntRule(
        1, _DAY_S, "seconds sent as `interval` when a new infohash is not admitted", metavar="SECONDS"
    ),
    "overload_reply": _TextRule(
        "reply to a client whose new infohash is not admitted: local peers, or a BEP 31 failure",
        choices=("peers", "failure"),
        metavar="KIND",
    ),
    "max_batches": _IntRule(0, 1_000_000_000, "cap on upstream batches; new pairs beyond it are refused (0 for none)"),
    "state_file": _TextRule(
        "file the state snapshot is written to at shutdown and loaded from at start",
        optional=True,
        metavar="PATH",
    ),
    "access_log": _BoolRule("log client requests as JSON"),
    "access_log_sample": _FractionRule("fraction of client requests logged when access_log is on"),
}

_LIST_KEYS = ("listen", "forwarders", "udp_listen", "trusted_proxies", "trusted_ip_param_networks", "admin_listen")
_KEYS = (*_LIST_KEYS, *_SCALAR_RULES)
_FILE_KEYS = ("forwarders_file", "infohash_denylist", "infohash_allowlist", "state_file")

# Pairs (smaller, larger) whose order load_settings enforces after the per-key checks.
_ORDERED_PAIRS = (
    ("default_numwant", "max_numwant"),
    ("first_interval", "announce_interval"),
    ("min_interval", "announce_interval"),
    ("retry_base_s", "retry_max_s"),
    ("probe_base_s", "probe_max_s"),
    ("min_workers", "max_workers"),
    ("scale_down_threshold", "scale_up_threshold"),
)


# --- Hosts and listen addresses -----------------------------------------------------


def _is_host_name(text: str) -> bool:
    labels = text.removesuffix(".").split(".")
    if len(text) > 253 or not all(_HOST_LABEL.fullmatch(label) for label in labels):
        return False

    # No top-level domain is all digits, so a host like "999.1.1.1" is a mistyped IPv4 address.
    return not labels[-1].isdigit()


def _is_ip_address(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


def _format_host_port(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


_LISTEN_EXPECTED = "HOST:PORT or [IPv6]:PORT with a port from 0 to 65535"


def _split_host_port(text: str) -> tuple[str, str]:
    """Split "host:port" or "[v6]:port", raising _Problem when the brackets or port are missing."""
    if text.startswith("["):
        host, bracket, rest = text[1:].partition("]")
        if not bracket or not rest.startswith(":") or not _is_ip_address(host) or ":" not in host:
            raise _expected(_LISTEN_EXPECTED, text)
        return host, rest[1:]

    host, colon, port = text.rpartition(":")

    # A colon left in the host is an IPv6 address without brackets, so the port is unclear.
    if not colon or ":" in host:
        raise _expected(_LISTEN_EXPECTED, text)
    if not _is_ip_address(host) and not _is_host_name(host):
        raise _expected(_LISTEN_EXPECTED, text)
    return host, port


def _parse_listen_address(value: object) -> ListenAddress:
    if not isinstance(value, str):
        raise _expected(_LISTEN_EXPECTED, value)

    text = value.strip()
    host, port_text = _split_host_port(text)
    if not port_text.isascii() or not port_text.isdigit() or int(port_text) > 65_535:
        raise _expected(_LISTEN_EXPECTED, text)

    if _is_ip_address(host):
        host = str(ipaddress.ip_address(host))
    return ListenAddress(host, int(port_text))


def _split_list(value: object) -> list[object]:
    """Return a YAML list as it is, and split a string on commas, as environment values are."""
    if value is None:
        return []
    if isinstance(value, str):
        return [item.strip() for item in value.split(",") if item.strip()]
    if isinstance(value, list):
        return value
    raise _expected("a list or a comma-separated string", value)


def _check_listen(value: object) -> tuple[ListenAddress, ...]:
    addresses = [_parse_listen_address(item) for item in _split_list(value)]
    if not addresses:
        raise _expected("at least one " + _LISTEN_EXPECTED, value)

    # Two sockets cannot bind the same fixed port, but port 0 gets a new port each time.
    seen: set[ListenAddress] = set()
    for address in addresses:
        if address.port != 0 and address in seen:
            raise _Problem(f"{_format_host_port(address.host, address.port)} is listed twice")
        seen.add(address)
    return tuple(addresses)


# --- Forwarders ---------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _ForwarderEntry:
    """Validated forwarder entry before names are assigned across all entries."""

    uri: str
    name: str | None  # explicit name, or None to derive one from the URI
    default_name: str
    ip: str | None
    host: str | None
    label: str  # "forwarders[2]" or "forwarders_file[2]", for messages
    source: str


_URI_EXPECTED = "an http://, https:// or udp:// URL with a host"


def _split_uri(value: object) -> tuple[str, SplitResult]:
    if not isinstance(value, str) or not value.strip():
        raise _expected(_URI_EXPECTED, value)

    uri = value.strip()
    if any(char.isspace() or not char.isprintable() for char in uri):
        raise _expected(_URI_EXPECTED + " and no spaces", value)

    parts = urlsplit(uri)
    if parts.scheme.lower() not in ("http", "https", "udp"):
        raise _expected(_URI_EXPECTED, value)

    host = parts.hostname
    if not host or not (_is_ip_address(host) or _is_host_name(host)):
        raise _expected(_URI_EXPECTED, value)
    return uri, parts


def _uri_port(uri: str, parts: SplitResult) -> int:
    try:
        port = parts.port
    except ValueError as error:
        raise _expected("a URL with a port from 1 to 65535", uri) from error

    # UDP trackers have no standard port, unlike 80 for HTTP and 443 for HTTPS.
    if port is None and parts.scheme.lower() == "udp":
        raise _expected("a udp:// URL with a port, such as udp://tracker.example:6969/announce", uri)
    if port is None:
        return 443 if parts.scheme.lower() == "https" else 80
    if port == 0:
        raise _expected("a URL with a port from 1 to 65535", uri)
    return port


def _check_uri(value: object) -> tuple[str, str]:
    """Validate a forwarder URI and return it stripped, with its default name host:port."""
    uri, parts = _split_uri(value)
    port = _uri_port(uri, parts)
    assert parts.hostname is not None  # _split_uri rejects a URL without a host
    return uri, _format_host_port(parts.hostname, port)


def _check_token(value: object, description: str) -> str | None:
    """Accept None or a non-empty string without spaces or control characters."""
    if value is None:
        return None
    if not isinstance(value, str) or not value or any(c.isspace() or not c.isprintable() for c in value):
        raise _expected(description, value)
    return value


def _check_ip(value: object) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or not _is_ip_address(value.strip()):
        raise _expected("an IPv4 or IPv6 address", value)
    return str(ipaddress.ip_address(value.strip()))


def _entry_fields(entry: object) -> dict[str, object]:
    """Return the keys of one entry, turning a bare URI string into {uri: string}."""
    if isinstance(entry, str):
        return {"uri": entry}
    if not isinstance(entry, dict):
        raise _expected("a URI or a mapping with uri, name, ip, host", entry)

    for key in entry:
        if key not in _FORWARDER_KEYS:
            raise _Problem(f"unknown key {_show(key)}, expected {', '.join(_FORWARDER_KEYS)}")
    if "uri" not in entry:
        raise _Problem(f"missing key 'uri' in {_show(entry)}")
    return entry


def _check_forwarder_entry(entry: object, label: str, source: str) -> _ForwarderEntry:
    with _reporting(label, source):
        fields = _entry_fields(entry)
    with _reporting(f"{label}.uri", source):
        uri, default_name = _check_uri(fields["uri"])
    with _reporting(f"{label}.name", source):
        name = _check_token(fields.get("name"), "a name without spaces")
    with _reporting(f"{label}.ip", source):
        ip = _check_ip(fields.get("ip"))
    with _reporting(f"{label}.host", source):
        host = _check_token(fields.get("host"), "a Host header value without spaces")
    return _ForwarderEntry(uri, name, default_name, ip, host, label, source)


def _check_forwarder_list(value: object, label: str, source: str) -> list[_ForwarderEntry]:
    with _reporting(label, source):
        items = _split_list(value)
    return [_check_forwarder_entry(item, f"{label}[{index}]", source) for index, item in enumerate(items)]


def _free_name(base: str, used_names: set[str]) -> str:
    if base not in used_names:
        return base
    suffix = 2
    while f"{base}-{suffix}" in used_names:
        suffix += 1
    return f"{base}-{suffix}"


def _reject_duplicates(entries: list[_ForwarderEntry]) -> set[str]:
    """Raise ConfigError on a repeated explicit name or entry, and return the explicit names."""
    names: set[str] = set()
    targets: set[tuple[str, str | None, str | None]] = set()
    for entry in entries:
        if entry.name is not None and entry.name in names:
            raise _invalid(f"{entry.label}.name", _Problem(f"name {entry.name!r} is used twice"), entry.source)

        # The same upstream twice with the same ip and Host would only double its traffic.
        target = (entry.uri, entry.ip, entry.host)
        if target in targets:
            raise _invalid(entry.label, _Problem(f"{entry.uri!r} is listed twice"), entry.source)

        if entry.name is not None:
            names.add(entry.name)
        targets.add(target)
    return names


def _name_forwarders(entries: list[_ForwarderEntry]) -> tuple[ForwarderConfig, ...]:
    # Explicit names are reserved first, so a derived name never takes one of them.
    used_names = _reject_duplicates(entries)

    forwarders = []
    for entry in entries:
        name = entry.name if entry.name is not None else _free_name(entry.default_name, used_names)
        used_names.add(name)
        forwarders.append(ForwarderConfig(entry.uri, name, entry.ip, entry.host))
    return tuple(forwarders)


def _load_forwarders_file(path: str) -> list[_ForwarderEntry]:
    document = _read_yaml_file(path, "forwarders_file")
    if document is not None and not isinstance(document, list):
        problem = _expected("a YAML list of forwarders", _kind(document))
        raise ConfigError(f"invalid forwarders_file {path}: {problem}")
    return _check_forwarder_list(document, "forwarders_file", path)


# --- YAML files ---------------------------------------------------------------------


class _UniqueKeyLoader(yaml.SafeLoader):
    """SafeLoader that rejects a repeated mapping key, where plain PyYAML silently keeps the last value."""


def _construct_unique_mapping(loader: _UniqueKeyLoader, node: yaml.MappingNode) -> dict[Any, Any]:
    seen: set[Hashable] = set()
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=True)

        # construct_mapping reports unhashable keys itself, so they are skipped here.
        if isinstance(key, Hashable) and key in seen:
            raise yaml.constructor.ConstructorError(
                None, None, f"duplicate key {_show(key)}", key_node.start_mark
            )
        if isinstance(key, Hashable):
            seen.add(key)
    return loader.construct_mapping(node, deep=True)


_UniqueKeyLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_unique_mapping)


def _yaml_error_text(error: yaml.YAMLError) -> str:
    """Return a one-line description of a YAML error, with line and column when known."""
    if isinstance(error, yaml.MarkedYAMLError):
        where = ""
        if error.problem_mark is not None:
            where = f" at line {error.problem_mark.line + 1}, column {error.problem_mark.column + 1}"
        problem = error.problem or error.context or "syntax error"
        return f"{where}: {problem}"
    return ": " + " ".join(str(error).split())


def _read_yaml_file(path: str, file_role: str) -> object:
    """Parse a YAML file, raising a one-line ConfigError that names the file on failure."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as error:
        raise ConfigError(f"failed to read {file_role} {path}: {error.strerror or error}") from error
    except UnicodeDecodeError as error:
        raise ConfigError(f"failed to read {file_role} {path}: not UTF-8 text at byte {error.start}") from error

    try:
        return yaml.load(text, Loader=_UniqueKeyLoader)
    except yaml.YAMLError as error:
        raise ConfigError(f"invalid YAML in {file_role} {path}{_yaml_error_text(error)}") from error


def _kind(value: object) -> str:
    kinds: dict[type, str] = {dict: "a mapping", list: "a list", str: "a string"}
    return kinds.get(type(value), type(value).__name__)


# --- Sources ------------------------------------------------------------------------

# Raw value and source label of each key that a source sets, such as
# {"workers": ("8", "AGGREGATOR_WORKERS")}.
_Layer = dict[str, tuple[object, str]]


def _suggest(word: str, candidates: Sequence[str], quote: bool = True) -> str:
    """Return " (did you mean X?)" for the closest candidate, or "" when none is close."""
    matches = difflib.get_close_matches(word, candidates, n=1)
    if not matches:
        return ""
    return f" (did you mean {matches[0]!r}?)" if quote else f" (did you mean {matches[0]}?)"


def _read_config_file(path: str) -> _Layer:
    document = _read_yaml_file(path, "config file")
    if document is None:
        return {}
    if not isinstance(document, dict):
        problem = _expected("a YAML mapping of settings", _kind(document))
        raise ConfigError(f"invalid config file {path}: {problem}")

    layer: _Layer = {}
    for key, value in document.items():
        if key not in _KEYS:
            # Dashes are a common slip from the option names, so they still find a suggestion.
            hint = _suggest(str(key).lower().replace("-", "_"), _KEYS)
            raise ConfigError(f"unknown key {_show(key)} in {path}{hint}")
        layer[key] = (value, path)

    # A relative file path belongs next to the config file, wherever the process starts.
    for file_key in _FILE_KEYS:
        file_value = document.get(file_key)
        if isinstance(file_value, str) and file_value.strip():
            resolved = Path(path).parent / file_value.strip()
            layer[file_key] = (str(resolved), path)
    return layer


def _parse_text(key: str, text: str) -> object:
    """Convert an environment or option string to the raw value that the key's rule checks."""
    if key == "admin_listen":
        return text  # one address, or an empty string for none
    if key in _LIST_KEYS:
        return _split_list(text)

    rule = _SCALAR_RULES[key]
    if isinstance(rule, _TextRule):
        # Strings stay as typed, so `AGGREGATOR_TRACKER_ID=123` is not read as a number.
        return None if rule.optional and not text.strip() else text

    # Numbers are YAML scalars, so "8" becomes 8 and an empty string or "null" becomes None.
    # Text that is not valid YAML stays a string, and the rule then reports it.
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text


def _environment_name(key: str) -> str:
    return _ENV_PREFIX + key.upper()


def _read_environment(environ: Mapping[str, str]) -> _Layer:
    keys_by_name = {_environment_name(key): key for key in _KEYS}

    layer: _Layer = {}
    for name, text in environ.items():
        if not name.startswith(_ENV_PREFIX) or name == _CONFIG_ENV:
            continue
        key = keys_by_name.get(name)
        if key is None:
            hint = _suggest(name.upper(), [*keys_by_name, _CONFIG_ENV], quote=False)
            raise ConfigError(f"unknown environment variable {name}{hint}")
        layer[key] = (_parse_text(key, text), name)
    return layer


def _option_name(key: str) -> str:
    if key == "forwarders":
        return "--forwarder"
    return "--" + key.replace("_", "-")


def _read_options(options: Mapping[str, Any]) -> _Layer:
    layer: _Layer = {}
    for key, option_value in options.items():
        if key == "listen":
            # Each --listen may also contain several comma-separated addresses.
            layer[key] = ([item for text in option_value for item in _split_list(text)], "--listen")
        elif key == "forwarders":
            layer[key] = (list(option_value), "--forwarder")
        elif key in _REPEATED_OPTIONS:
            items = [item for text in option_value for item in _split_list(text)]
            layer[key] = (items, _option_name(key))
        else:
            layer[key] = (_parse_text(key, option_value), _option_name(key))
    return layer


# --- Command line -------------------------------------------------------------------


class _ArgumentParser(argparse.ArgumentParser):
    """ArgumentParser that raises ConfigError instead of exiting, like every other config error."""

    def error(self, message: str) -> NoReturn:
        raise ConfigError(f"invalid command line: {message}")


def _default_text(key: str) -> str:
    default = getattr(Settings(), key)
    return "none" if default is None else str(default)


def _scalar_help(key: str, rule: _ScalarRule) -> str:
    return f"{rule.help} ({rule.describe()}, default {_default_text(key)})"


def build_argument_parser() -> argparse.ArgumentParser:
    """Build the parser of the aggregator options, one per setting.

    Options that are not given are left out of the namespace, so that they do not
    override the config file or the environment. A usage error raises ConfigError.
    """
    parser = _ArgumentParser(
        prog="aggregator",
        description="BitTorrent announce aggregator: a tracker that also collects peers from upstream trackers.",
        epilog=(
            "Each setting can also be set in the YAML config file under its key, such as workers, "
            "or by an environment variable AGGREGATOR_<KEY>, such as AGGREGATOR_WORKERS=8. "
            "Options override the environment, which overrides the config file."
        ),
        argument_default=argparse.SUPPRESS,
        allow_abbrev=False,
    )
    parser.add_argument(
        "--config",
        metavar="FILE",
        help=f"YAML file of settings. Default: ${_CONFIG_ENV} if set, otherwise none",
    )
    parser.add_argument(
        "--listen",
        action="append",
        metavar="HOST:PORT",
        help="address to listen on, such as 127.0.0.1:6969 or [::1]:6969. Repeat it for several "
        "addresses. Port 0 lets the OS pick one. Default 127.0.0.1:6969",
    )
    parser.add_argument(
        "--forwarder",
        dest="forwarders",
        action="append",
        metavar="URI",
        help="announce URL of an upstream tracker (http, https or udp). Repeat it for several. "
        "These replace the forwarders list of the config file and environment, "
        "and forwarders_file entries are still added",
    )
    for key, (metavar, text) in _REPEATED_OPTIONS.items():
        parser.add_argument(_option_name(key), dest=key, action="append", metavar=metavar, help=text)
    parser.add_argument(
        "--admin-listen",
        dest="admin_listen",
        metavar="HOST:PORT",
        help="address of the admin listener (metrics, stats, probes); an empty value turns it off. "
        "Default 127.0.0.1:9090",
    )
    for key, rule in _SCALAR_RULES.items():
        parser.add_argument(_option_name(key), dest=key, metavar=rule.metavar, help=_scalar_help(key, rule))
    return parser


# List options that may be repeated or carry comma-separated values: metavar and help.
_REPEATED_OPTIONS = {
    "udp_listen": (
        "HOST:PORT",
        "address of the UDP tracker (BEP 15), such as 127.0.0.1:6969. Repeat it for several. Default: UDP off",
    ),
    "trusted_proxies": (
        "CIDR",
        "network of reverse proxies whose X-Forwarded-For and X-Real-IP headers are trusted. Default: none",
    ),
    "trusted_ip_param_networks": (
        "CIDR",
        "network of clients whose ip, ipv4 and ipv6 announce parameters are used. Default: none",
    ),
}


# --- Validation and entry points ----------------------------------------------------


def _check_scalars(values: _Layer) -> dict[str, object]:
    checked: dict[str, object] = {}
    for key, rule in _SCALAR_RULES.items():
        if key not in values:
            continue
        raw, source = values[key]
        with _reporting(key, source):
            checked[key] = rule.check(raw)
    return checked


def _check_udp_listen(value: object) -> tuple[ListenAddress, ...]:
    # Unlike `listen`, an empty list is valid: it turns the UDP tracker off.
    if not _split_list(value):
        return ()

    return _check_listen(value)


def _check_admin_listen(value: object) -> ListenAddress | None:
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    if isinstance(value, list):
        raise _expected(_LISTEN_EXPECTED + " or null", value)

    return _parse_listen_address(value)


def _check_networks(value: object) -> tuple[str, ...]:
    networks = []
    for item in _split_list(value):
        if not isinstance(item, str):
            raise _expected("a CIDR network such as 10.0.0.0/8 or fd00::/8", item)
        try:
            networks.append(str(ipaddress.ip_network(item.strip(), strict=False)))
        except ValueError:
            raise _expected("a CIDR network such as 10.0.0.0/8 or fd00::/8", item) from None

    return tuple(networks)


_LIST_CHECKERS: dict[str, Callable[[object], object]] = {
    "listen": _check_listen,
    "udp_listen": _check_udp_listen,
    "trusted_proxies": _check_networks,
    "trusted_ip_param_networks": _check_networks,
    "admin_listen": _check_admin_listen,
}


def _check_listen_value(values: _Layer) -> dict[str, object]:
    checked: dict[str, object] = {}
    for key, checker in _LIST_CHECKERS.items():
        if key not in values:
            continue

        raw, source = values[key]
        with _reporting(key, source):
            checked[key] = checker(raw)

    return checked


def _collect_forwarders(values: _Layer, forwarders_file: object) -> tuple[ForwarderConfig, ...]:
    entries: list[_ForwarderEntry] = []
    if "forwarders" in values:
        raw, source = values["forwarders"]
        entries.extend(_check_forwarder_list(raw, "forwarders", source))
    if isinstance(forwarders_file, str):
        entries.extend(_load_forwarders_file(forwarders_file))
    return _name_forwarders(entries)


def _check_order(settings: Settings, sources: Mapping[str, str]) -> None:
    for smaller, larger in _ORDERED_PAIRS:
        low = getattr(settings, smaller)
        high = getattr(settings, larger)
        if low > high:
            problem = _Problem(f"expected at most {larger} ({high:g}), got {low:g}")
            raise _invalid(smaller, problem, sources.get(smaller, "the default"))


def _build_settings(values: _Layer) -> Settings:
    checked = _check_scalars(values)
    checked.update(_check_listen_value(values))
    checked["forwarders"] = _collect_forwarders(values, checked.get("forwarders_file"))

    # Each rule above returns the type of its field, which mypy cannot follow through the table.
    settings = Settings(**dict[str, Any](checked))
    _check_order(settings, {key: source for key, (_, source) in values.items()})
    return settings


def load_settings(argv: Sequence[str] | None = None, environ: Mapping[str, str] | None = None) -> Settings:
    """Merge defaults, the config file, the environment and options into validated Settings.

    argv defaults to sys.argv[1:] and environ to os.environ. The config file is the one
    named by --config, else by $AGGREGATOR_CONFIG, else none. Raises ConfigError with a
    one-line message on the first bad value. --help prints the help and raises SystemExit.
    """
    if environ is None:
        environ = os.environ
    options = vars(build_argument_parser().parse_args(None if argv is None else list(argv)))

    values: _Layer = {}
    config_path = options.pop("config", None) or environ.get(_CONFIG_ENV) or None
    if config_path is not None:
        values.update(_read_config_file(config_path))
    values.update(_read_environment(environ))
    values.update(_read_options(options))
    return _build_settings(values)


def _summarize_forwarder(forwarder: ForwarderConfig) -> dict[str, object]:
    # Private trackers put passkeys in the path or query, so only scheme, host and port are logged.
    parts = urlsplit(forwarder.uri)
    endpoint = f"{parts.scheme.lower()}://{parts.netloc.rpartition('@')[2]}"
    return {"name": forwarder.name, "endpoint": endpoint, "ip": forwarder.ip, "host": forwarder.host}


def settings_summary(settings: Settings) -> dict[str, object]:
    """Return the effective settings as a JSON-friendly dict for the start log line.

    Forwarder URIs are cut to scheme://host:port, because their path or query may
    contain a passkey.
    """
    summary: dict[str, object] = {field.name: getattr(settings, field.name) for field in dataclasses.fields(settings)}
    summary["listen"] = [_format_host_port(address.host, address.port) for address in settings.listen]
    summary["udp_listen"] = [_format_host_port(address.host, address.port) for address in settings.udp_listen]
    admin = settings.admin_listen
    summary["admin_listen"] = None if admin is None else _format_host_port(admin.host, admin.port)
    summary["forwarders"] = [_summarize_forwarder(forwarder) for forwarder in settings.forwarders]
    return summary
