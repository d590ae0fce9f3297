"""HTTP(S) upstream announces over one shared aiohttp client session."""

import asyncio
import email.utils
import hashlib
import hmac
import os
import re
import time
from dataclasses import dataclass
from urllib.parse import quote_from_bytes

import aiohttp
from yarl import URL

from aggregator import __version__
from aggregator.batch import UpstreamEvent
from aggregator.upstream_reply import FailureKind, UpstreamFailure, UpstreamReply, parse_announce_reply


class UpstreamIdentity:
    """Identity of this aggregator process upstream: one peer_id, and one key per infohash."""

    def __init__(self) -> None:
        prefix = azureus_prefix(__version__)
        self.peer_id = prefix + os.urandom(20 - len(prefix))
        self._key_secret = os.urandom(16)

    def key_for(self, info_hash: bytes) -> str:
        """Return the stable `key` for one infohash: 8 hex digits (32 bits, the minimum that BEP 7 requires)."""
        return hmac.new(self._key_secret, info_hash, hashlib.sha256).hexdigest()[:8]


def azureus_prefix(version: str) -> bytes:
    """Build the Azureus-style peer_id prefix "-AGxxxx-": one base-36 character per version part.

    "0.1.0" gives "-AG0100-"; parts of 36 and above are capped, and suffixes such as "rc1" ignored.
    """
    parts = [int(part) for part in re.findall(r"\d+", version.split("+")[0])[:3]]
    digits = "".join(_BASE36[min(part, 35)] for part in parts).ljust(4, "0")

    return f"-AG{digits}-".encode()


_BASE36 = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ"


@dataclass(frozen=True, slots=True)
class UpstreamAnnounce:
    """One announce that the aggregator sends upstream as itself."""

    info_hash: bytes
    port: int
    left: int
    event: UpstreamEvent
    numwant: int
    tracker_id: bytes | None


@dataclass(frozen=True, slots=True)
class HttpTarget:
    """Destination of the HTTP announces of one forwarder: URI, `ip=` override and Host header."""

    uri: str
    ip: str | None
    host: str | None


class HttpUpstream:
    """Sends announces to HTTP(S) trackers and parses their replies.

    Certificates are verified (aiohttp's default). One redirect is followed, and only to the same
    scheme and host name, because a tracker that moved elsewhere must be reconfigured by a person.
    """

    def __init__(
        self,
        session: aiohttp.ClientSession,
        identity: UpstreamIdentity,
        timeout_s: float,
        max_body_bytes: int,
        connect_timeout_s: float | None = None,
    ) -> None:
        self._session = session
        self._identity = identity
        self._timeout = aiohttp.ClientTimeout(total=timeout_s, sock_connect=connect_timeout_s)
        self._max_body_bytes = max_body_bytes

    def build_url(self, target: HttpTarget, announce: UpstreamAnnounce) -> str:
        """Build the announce URL; every byte outside the unreserved set is sent as %XX, never as '+'."""
        fields = [
            ("info_hash", quote_from_bytes(announce.info_hash, safe="")),
            ("peer_id", quote_from_bytes(self._identity.peer_id, safe="")),
            ("port", str(announce.port)),
            ("uploaded", "0"),
            ("downloaded", "0"),
            ("left", str(announce.left)),
            ("compact", "1"),
            ("numwant", str(announce.numwant)),
            ("key", self._identity.key_for(announce.info_hash)),
        ]
        if announce.event is not UpstreamEvent.NONE:
            fields.append(("event", announce.event.value))
        if announce.tracker_id is not None:
            fields.append(("trackerid", quote_from_bytes(announce.tracker_id, safe="")))
        if target.ip is not None:
            fields.append(("ip", quote_from_bytes(target.ip.encode(), safe="")))

        separator = "&" if "?" in target.uri else "?"

        return target.uri + separator + "&".join(f"{name}={value}" for name, value in fields)

    async def announce(self, target: HttpTarget, announce: UpstreamAnnounce) -> UpstreamReply:
        """Send one announce; raise UpstreamFailure for every kind of failure."""
        url = URL(self.build_url(target, announce), encoded=True)  # encoded: keep our %XX as they are
        headers = {"Host": target.host} if target.host else None

        try:
            body = await self._fetch(url, headers, redirects_left=1)
        except asyncio.TimeoutError:
            raise UpstreamFailure(FailureKind.TIMEOUT, f"no reply within {self._timeout.total} s") from None
        except aiohttp.ClientConnectorDNSError as error:
            raise UpstreamFailure(FailureKind.DNS, str(error)) from None
        except aiohttp.ClientConnectorError as error:
            kind = FailureKind.REFUSED if isinstance(error.os_error, ConnectionRefusedError) else FailureKind.CONNECTION
            raise UpstreamFailure(kind, str(error)) from None
        except (aiohttp.ClientError, OSError) as error:
            raise UpstreamFailure(FailureKind.CONNECTION, f"{type(error).__name__}: {error}") from None

        return parse_announce_reply(body)

    async def _fetch(self, url: URL, headers: dict[str, str] | None, redirects_left: int) -> bytes:
        async with self._session.get(url, headers=headers, timeout=self._timeout, allow_redirects=False) as response:
            if response.status == 200:
                return await self._read_body(response)

            location = response.headers.get("Location")
            if response.status in _REDIRECT_STATUSES and location is not None:
                next_url = url.join(URL(location))
                if redirects_left > 0 and _same_origin_host(url, next_url):
                    return await self._fetch(next_url, headers, redirects_left - 1)

                raise UpstreamFailure(
                    FailureKind.CLIENT_ERROR, f"HTTP {response.status} redirect to {next_url.host} not followed"
                )

            raise _status_failure(response)

    async def _read_body(self, response: aiohttp.ClientResponse) -> bytes:
        """Read the (already decompressed) body, failing once it passes the size cap."""
        if response.content_length is not None and response.content_length > self._max_body_bytes:
            raise UpstreamFailure(
                FailureKind.BODY_TOO_LARGE, f"Content-Length {response.content_length} > {self._max_body_bytes}"
            )

        body = bytearray()
        async for chunk in response.content.iter_chunked(65536):
            body += chunk
            if len(body) > self._max_body_bytes:
                raise UpstreamFailure(FailureKind.BODY_TOO_LARGE, f"body passed {self._max_body_bytes} bytes")

        return bytes(body)


_REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})
# A Retry-After further away than this is treated as this long: no upstream is skipped for days.
MAX_RETRY_AFTER_S = 86400.0


def _same_origin_host(current: URL, following: URL) -> bool:
    """Allow a redirect only to the same scheme and host name; the port may change."""
    return following.scheme == current.scheme and (following.host or "").lower() == (current.host or "").lower()


def _status_failure(response: aiohttp.ClientResponse) -> UpstreamFailure:
    status = response.status
    detail = f"HTTP {status} {response.reason or ''}".rstrip()
    if status in (429, 503):
        return UpstreamFailure(
            FailureKind.RATE_LIMITED, detail, retry_after_s=parse_retry_after(response.headers.get("Retry-After"))
        )
    if status >= 500:
        return UpstreamFailure(FailureKind.SERVER_ERROR, detail)

    return UpstreamFailure(FailureKind.CLIENT_ERROR, detail)


def parse_retry_after(value: str | None, now_s: float | None = None) -> float | None:
    """Parse Retry-After (RFC 9110): delay seconds or an HTTP date; None when absent or invalid."""
    if value is None:
        return None

    text = value.strip()
    if text.isdigit():
        return min(float(text), MAX_RETRY_AFTER_S)

    try:
        moment = email.utils.parsedate_to_datetime(text)
    except (TypeError, ValueError):
        return None
    if moment.tzinfo is None:
        return None

    wall_now_s = time.time() if now_s is None else now_s

    return min(max(moment.timestamp() - wall_now_s, 0.0), MAX_RETRY_AFTER_S)
