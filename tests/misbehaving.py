"""Reply factories for FakeTracker that misbehave the way public trackers do."""

import gzip
from collections.abc import Callable

import bencode2
from aiohttp import web

from tests.fake_tracker import RecordedAnnounce

Reply = Callable[[RecordedAnnounce], web.StreamResponse]


def status(code: int, retry_after: str | None = None) -> Reply:
    headers = {"Retry-After": retry_after} if retry_after is not None else {}

    return lambda recorded: web.Response(status=code, text="busy", headers=headers)


def html_page() -> bytes:
    return b"<!DOCTYPE html><html><body>Cloudflare says hello</body></html>"


def truncated_bencode() -> bytes:
    return bencode2.bencode({b"interval": 1800, b"peers": b"\x0a\x00\x00\x01\x1a\xe1"})[:-5]


def gzip_reply(reply: dict[bytes, object]) -> Reply:
    body = gzip.compress(bencode2.bencode(reply))

    return lambda recorded: web.Response(body=body, headers={"Content-Encoding": "gzip"})


def huge_body(size_bytes: int = 10 * 1024 * 1024) -> Reply:
    body = b"d5:peers" + str(size_bytes).encode() + b":" + b"\x01" * size_bytes + b"e"

    return lambda recorded: web.Response(body=body)


def redirect_to(url: str) -> Reply:
    return lambda recorded: web.Response(status=302, headers={"Location": f"{url}?{recorded.raw_query}"})
