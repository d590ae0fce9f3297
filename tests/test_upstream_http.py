"""Tests for HTTP upstream announces (aggregator.upstream_http) against FakeTracker on 127.0.0.1."""

import asyncio
import email.utils
import gzip
import re
import socket
import string
from collections.abc import AsyncIterator

import aiohttp
import bencode2
import pytest
import pytest_asyncio
from aiohttp import web

from aggregator import __version__
from aggregator.batch import UpstreamEvent
from aggregator.query import parse_query
from aggregator.upstream_http import (
    HttpTarget,
    HttpUpstream,
    UpstreamAnnounce,
    UpstreamIdentity,
    azureus_prefix,
    parse_retry_after,
)
from aggregator.upstream_reply import FailureKind, UpstreamFailure, UpstreamReply
from tests.fake_tracker import FakeTracker, compact_peer

# Bytes that a naive encoder gets wrong (space, '+', NUL, 0xFF, query delimiters) next to unreserved ones.
TRICKY_HASH = b" +\x00\xffabcXYZ09-._~%&=?/#"
OTHER_HASH = bytes(range(100, 120))
UNRESERVED_CHARS = frozenset(string.ascii_letters + string.digits + "-._~")
CALL_BOUND_S = 10.0  # Upper bound on one announce, so that a hang fails the test instead of blocking the run.


def make_announce(
    info_hash: bytes = TRICKY_HASH,
    event: UpstreamEvent = UpstreamEvent.NONE,
    numwant: int = 80,
    tracker_id: bytes | None = None,
) -> UpstreamAnnounce:
    return UpstreamAnnounce(
        info_hash=info_hash, port=6881, left=12345, event=event, numwant=numwant, tracker_id=tracker_id
    )


def raw_value(raw_query: str, name: str) -> str:
    """Return the still-encoded value of the first `name` parameter in a raw query string."""
    for field in raw_query.split("&"):
        key, _, value = field.partition("=")
        if key == name:
            return value

    raise AssertionError(f"parameter {name} not found in {raw_query!r}")


@pytest_asyncio.fixture
async def tracker() -> AsyncIterator[FakeTracker]:
    fake = FakeTracker()
    await fake.start()
    yield fake
    await fake.stop()


@pytest_asyncio.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as client_session:
        yield client_session


def make_upstream(
    session: aiohttp.ClientSession,
    identity: UpstreamIdentity | None = None,
    timeout_s: float = 5.0,
    max_body_bytes: int = 65536,
) -> HttpUpstream:
    return HttpUpstream(session, identity or UpstreamIdentity(), timeout_s, max_body_bytes)


def target_for(tracker: FakeTracker, ip: str | None = None, host: str | None = None) -> HttpTarget:
    return HttpTarget(uri=tracker.announce_url, ip=ip, host=host)


async def announce_once(
    upstream: HttpUpstream, target: HttpTarget, announce: UpstreamAnnounce | None = None
) -> UpstreamReply:
    return await asyncio.wait_for(upstream.announce(target, announce or make_announce()), CALL_BOUND_S)


async def announce_failure(
    upstream: HttpUpstream, target: HttpTarget, announce: UpstreamAnnounce | None = None
) -> UpstreamFailure:
    with pytest.raises(UpstreamFailure) as caught:
        await announce_once(upstream, target, announce)

    return caught.value


# Query string


async def test_http_info_hash_escaped(tracker: FakeTracker, session: aiohttp.ClientSession) -> None:
    await announce_once(make_upstream(session), target_for(tracker))

    recorded = tracker.announces[0]
    encoded = raw_value(recorded.raw_query, "info_hash")
    assert "+" not in encoded
    assert re.fullmatch(r"(?:%[0-9A-Fa-f]{2}|[A-Za-z0-9\-._~])*", encoded), encoded
    for byte in TRICKY_HASH:
        if chr(byte) not in UNRESERVED_CHARS:
            assert f"%{byte:02X}" in encoded.upper(), f"byte {byte:#04x} not percent-encoded in {encoded}"
    assert dict(parse_query(recorded.raw_query))["info_hash"] == TRICKY_HASH
    assert recorded.fields["info_hash"] == TRICKY_HASH


async def test_http_peer_id_stable(tracker: FakeTracker, session: aiohttp.ClientSession) -> None:
    upstream = make_upstream(session)

    await announce_once(upstream, target_for(tracker), make_announce(TRICKY_HASH))
    await announce_once(upstream, target_for(tracker), make_announce(OTHER_HASH))

    first, second = (recorded.fields["peer_id"] for recorded in tracker.announces)
    assert first.startswith(b"-AG")
    assert len(first) == 20
    assert first == second
    assert "+" not in raw_value(tracker.announces[0].raw_query, "peer_id")


@pytest.mark.parametrize(
    ("version", "prefix"),
    [("0.1.0", b"-AG0100-"), ("1.12.3rc1", b"-AG1C30-"), ("2.0", b"-AG2000-"), ("40.1.0", b"-AGZ100-")],
)
def test_identity_version_prefix(version: str, prefix: bytes) -> None:
    assert azureus_prefix(version) == prefix


def test_identity_uses_package_version() -> None:
    assert UpstreamIdentity().peer_id[:8] == azureus_prefix(__version__)


async def test_http_key_per_info_hash(tracker: FakeTracker, session: aiohttp.ClientSession) -> None:
    upstream = make_upstream(session)

    await announce_once(upstream, target_for(tracker), make_announce(TRICKY_HASH))
    await announce_once(upstream, target_for(tracker), make_announce(TRICKY_HASH))
    await announce_once(upstream, target_for(tracker), make_announce(OTHER_HASH))

    first, repeat, other = (recorded.fields["key"] for recorded in tracker.announces)
    assert re.fullmatch(rb"[0-9a-f]{8}", first), first
    assert first == repeat
    assert first != other


async def test_http_fixed_fields(tracker: FakeTracker, session: aiohttp.ClientSession) -> None:
    await announce_once(make_upstream(session), target_for(tracker), make_announce(numwant=77))

    fields = tracker.announces[0].fields
    assert fields["compact"] == b"1"
    assert fields["numwant"] == b"77"
    assert fields["port"] == b"6881"
    assert fields["left"] == b"12345"
    assert fields["uploaded"] == b"0"
    assert fields["downloaded"] == b"0"


async def test_http_event_none_omitted(tracker: FakeTracker, session: aiohttp.ClientSession) -> None:
    await announce_once(make_upstream(session), target_for(tracker), make_announce(event=UpstreamEvent.NONE))

    assert "event" not in tracker.announces[0].fields


@pytest.mark.parametrize("event", [UpstreamEvent.STARTED, UpstreamEvent.COMPLETED, UpstreamEvent.STOPPED])
async def test_http_event_sent(tracker: FakeTracker, session: aiohttp.ClientSession, event: UpstreamEvent) -> None:
    await announce_once(make_upstream(session), target_for(tracker), make_announce(event=event))

    assert tracker.announces[0].fields["event"] == event.value.encode()


async def test_http_tracker_id_echoed(tracker: FakeTracker, session: aiohttp.ClientSession) -> None:
    tracker_id = b"id +&=\x01\xff"

    await announce_once(make_upstream(session), target_for(tracker), make_announce(tracker_id=tracker_id))

    assert tracker.announces[0].fields["trackerid"] == tracker_id


async def test_http_tracker_id_absent(tracker: FakeTracker, session: aiohttp.ClientSession) -> None:
    await announce_once(make_upstream(session), target_for(tracker))

    assert "trackerid" not in tracker.announces[0].fields


async def test_http_ip_and_host(tracker: FakeTracker, session: aiohttp.ClientSession) -> None:
    target = target_for(tracker, ip="2001:db8::7", host="tracker.example.org")

    await announce_once(make_upstream(session), target)

    recorded = tracker.announces[0]
    assert recorded.fields["ip"] == b"2001:db8::7"
    assert recorded.headers["Host"] == "tracker.example.org"


async def test_http_no_ip_default_host(tracker: FakeTracker, session: aiohttp.ClientSession) -> None:
    await announce_once(make_upstream(session), target_for(tracker))

    recorded = tracker.announces[0]
    assert "ip" not in recorded.fields
    assert recorded.headers["Host"] == f"127.0.0.1:{tracker.port}"


async def test_http_uri_with_query(tracker: FakeTracker, session: aiohttp.ClientSession) -> None:
    target = HttpTarget(uri=tracker.announce_url + "?passkey=abc123", ip=None, host=None)

    await announce_once(make_upstream(session), target)

    recorded = tracker.announces[0]
    assert recorded.raw_query.startswith("passkey=abc123&")
    assert recorded.fields["passkey"] == b"abc123"
    assert recorded.fields["info_hash"] == TRICKY_HASH


# Replies


async def test_http_reply_parsed(tracker: FakeTracker, session: aiohttp.ClientSession) -> None:
    peers = compact_peer("192.0.2.1", 6881) + compact_peer("198.51.100.7", 51413)
    tracker.reply = {b"interval": 900, b"peers": peers, b"complete": 4, b"incomplete": 2}

    reply = await announce_once(make_upstream(session), target_for(tracker))

    assert reply.endpoints == [peers[:6], peers[6:]]
    assert reply.interval_s == 900
    assert reply.complete == 4
    assert reply.incomplete == 2


async def test_http_tracker_failure(tracker: FakeTracker, session: aiohttp.ClientSession) -> None:
    tracker.reply = {b"failure reason": b"unregistered torrent", b"retry in": b"never"}

    failure = await announce_failure(make_upstream(session), target_for(tracker))

    assert failure.kind is FailureKind.TRACKER_FAILURE
    assert failure.detail == "unregistered torrent"
    assert failure.retry_in_min == -1


@pytest.mark.parametrize(
    ("status", "kind"),
    [
        (404, FailureKind.CLIENT_ERROR),
        (403, FailureKind.CLIENT_ERROR),
        (500, FailureKind.SERVER_ERROR),
        (502, FailureKind.SERVER_ERROR),
        (503, FailureKind.RATE_LIMITED),
        (429, FailureKind.RATE_LIMITED),
    ],
)
async def test_http_status_error(
    tracker: FakeTracker, session: aiohttp.ClientSession, status: int, kind: FailureKind
) -> None:
    tracker.reply = lambda recorded: web.Response(status=status, body=bencode2.bencode({b"interval": 900}))

    failure = await announce_failure(make_upstream(session), target_for(tracker))

    assert failure.kind is kind
    assert str(status) in failure.detail
    assert failure.retry_after_s is None


async def test_http_retry_after_seconds(tracker: FakeTracker, session: aiohttp.ClientSession) -> None:
    tracker.reply = lambda recorded: web.Response(status=429, headers={"Retry-After": "120"})

    failure = await announce_failure(make_upstream(session), target_for(tracker))

    assert failure.kind is FailureKind.RATE_LIMITED
    assert failure.retry_after_s == 120.0


def test_retry_after_http_date() -> None:
    now_s = 1_800_000_000.0
    date = email.utils.formatdate(now_s + 90, usegmt=True)

    assert parse_retry_after(date, now_s=now_s) == pytest.approx(90.0)
    assert parse_retry_after("garbage") is None
    assert parse_retry_after(None) is None
    assert parse_retry_after("999999999") == 86400.0


async def test_http_redirect_loop_stops(tracker: FakeTracker, session: aiohttp.ClientSession) -> None:
    tracker.reply = lambda recorded: web.Response(status=302, headers={"Location": "/announce"})

    failure = await announce_failure(make_upstream(session), target_for(tracker))

    assert failure.kind is FailureKind.CLIENT_ERROR
    assert "302" in failure.detail
    assert len(tracker.announces) == 2


async def test_http_redirect_other_port_followed(tracker: FakeTracker, session: aiohttp.ClientSession) -> None:
    moved = FakeTracker(reply={b"interval": 900, b"peers": compact_peer("192.0.2.7", 6881)})
    await moved.start()
    try:
        tracker.reply = lambda recorded: web.Response(
            status=301, headers={"Location": f"{moved.announce_url}?{recorded.raw_query}"}
        )

        reply = await make_upstream(session).announce(target_for(tracker), make_announce(TRICKY_HASH))

        assert reply.endpoints == [compact_peer("192.0.2.7", 6881)]
        assert moved.announces[0].fields["info_hash"] == TRICKY_HASH
    finally:
        await moved.stop()


async def test_http_redirect_other_host_rejected(tracker: FakeTracker, session: aiohttp.ClientSession) -> None:
    # "localhost" is another host name than "127.0.0.1", even though both reach this machine.
    tracker.reply = lambda recorded: web.Response(
        status=302, headers={"Location": f"http://localhost:{tracker.port}/announce"}
    )

    failure = await announce_failure(make_upstream(session), target_for(tracker))

    assert failure.kind is FailureKind.CLIENT_ERROR
    assert "not followed" in failure.detail
    assert len(tracker.announces) == 1


async def test_http_body_at_limit(tracker: FakeTracker, session: aiohttp.ClientSession) -> None:
    body = bencode2.bencode({b"interval": 900, b"peers": compact_peer("192.0.2.1", 6881)})
    tracker.reply = body

    reply = await announce_once(make_upstream(session, max_body_bytes=len(body)), target_for(tracker))

    assert reply.endpoints == [compact_peer("192.0.2.1", 6881)]


async def test_http_content_length_too_large(tracker: FakeTracker, session: aiohttp.ClientSession) -> None:
    body = bencode2.bencode({b"interval": 900, b"peers": compact_peer("192.0.2.1", 6881) * 50})
    tracker.reply = body

    failure = await announce_failure(make_upstream(session, max_body_bytes=100), target_for(tracker))

    assert failure.kind is FailureKind.BODY_TOO_LARGE
    assert "Content-Length" in failure.detail


async def test_http_chunked_too_large(tracker: FakeTracker, session: aiohttp.ClientSession) -> None:
    async def stream_body() -> AsyncIterator[bytes]:
        yield b"d8:intervali900e5:peers3000:"
        for _ in range(10):
            yield compact_peer("192.0.2.1", 6881) * 50
        yield b"e"

    tracker.reply = lambda recorded: web.Response(body=stream_body())
    async with session.get(tracker.announce_url) as probe:
        # The streamed reply must carry no Content-Length, so only the read loop can catch it.
        assert probe.content_length is None
        assert probe.headers.get("Transfer-Encoding") == "chunked"
        await probe.read()

    failure = await announce_failure(make_upstream(session, max_body_bytes=1000), target_for(tracker))

    assert failure.kind is FailureKind.BODY_TOO_LARGE
    assert "Content-Length" not in failure.detail


async def test_http_gzip_decoded(tracker: FakeTracker, session: aiohttp.ClientSession) -> None:
    body = bencode2.bencode({b"interval": 900, b"peers": compact_peer("192.0.2.1", 6881)})
    tracker.reply = lambda recorded: web.Response(body=gzip.compress(body), headers={"Content-Encoding": "gzip"})

    reply = await announce_once(make_upstream(session), target_for(tracker))

    assert reply.endpoints == [compact_peer("192.0.2.1", 6881)]
    assert reply.interval_s == 900


async def test_http_gzip_expands_too_large(tracker: FakeTracker, session: aiohttp.ClientSession) -> None:
    body = bencode2.bencode({b"interval": 900, b"peers": compact_peer("192.0.2.1", 6881) * 5000})
    compressed = gzip.compress(body)
    assert len(compressed) < 1000
    tracker.reply = lambda recorded: web.Response(body=compressed, headers={"Content-Encoding": "gzip"})

    failure = await announce_failure(make_upstream(session, max_body_bytes=1000), target_for(tracker))

    assert failure.kind is FailureKind.BODY_TOO_LARGE


async def test_http_html_body(tracker: FakeTracker, session: aiohttp.ClientSession) -> None:
    tracker.reply = lambda recorded: web.Response(
        text="<html><body>Welcome to nginx!</body></html>", content_type="text/html"
    )

    failure = await announce_failure(make_upstream(session), target_for(tracker))

    assert failure.kind is FailureKind.NOT_A_TRACKER


# Transport failures


async def test_http_timeout(tracker: FakeTracker, session: aiohttp.ClientSession) -> None:
    tracker.hold = asyncio.Event()  # never set here, so the fake tracker never replies

    failure = await announce_failure(make_upstream(session, timeout_s=0.3), target_for(tracker))

    assert failure.kind is FailureKind.TIMEOUT
    assert len(tracker.announces) == 1


async def test_http_timeout_mid_body(tracker: FakeTracker, session: aiohttp.ClientSession) -> None:
    never_set = asyncio.Event()

    async def stalled_body() -> AsyncIterator[bytes]:
        yield b"d8:intervali900e"
        await never_set.wait()
        yield b"e"

    tracker.reply = lambda recorded: web.Response(body=stalled_body())

    failure = await announce_failure(make_upstream(session, timeout_s=0.3), target_for(tracker))

    never_set.set()
    assert failure.kind is FailureKind.TIMEOUT


async def test_http_closed_port(session: aiohttp.ClientSession) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        closed_port = probe.getsockname()[1]
    target = HttpTarget(uri=f"http://127.0.0.1:{closed_port}/announce", ip=None, host=None)

    failure = await announce_failure(make_upstream(session), target)

    assert failure.kind is FailureKind.REFUSED


async def test_http_connection_dropped(tracker: FakeTracker, session: aiohttp.ClientSession) -> None:
    async def stream_then_drop() -> AsyncIterator[bytes]:
        yield b"d8:intervali900e"
        raise ConnectionResetError("dropped by the test")

    tracker.reply = lambda recorded: web.Response(body=stream_then_drop())

    failure = await announce_failure(make_upstream(session), target_for(tracker))

    assert failure.kind is FailureKind.CONNECTION
