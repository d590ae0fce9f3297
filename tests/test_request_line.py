"""Request lines that the HTTP parsers reject before any handler of ours runs."""

import asyncio

import pytest
from aiohttp import http_parser

from tests.service_harness import serving, settings_for

# aiohttp's compiled parser (llhttp) rejects raw bytes >= 0x80 in the request target, as RFC 3986
# requires. Its pure-Python fallback, used with AIOHTTP_NO_EXTENSIONS=1 or without the compiled
# extension, accepts them.
C_PARSER = http_parser.HttpRequestParser.__module__ == "aiohttp._http_parser"


async def send_raw(host: str, port: int, request: bytes) -> bytes:
    reader, writer = await asyncio.open_connection(host, port)
    try:
        writer.write(request)
        await writer.drain()
        return await asyncio.wait_for(reader.read(), timeout=5)
    finally:
        writer.close()
        await writer.wait_closed()


@pytest.mark.parametrize("http_server", ["fast", "aiohttp"])
@pytest.mark.parametrize("path", [b"/announce", b"/scrape"])
async def test_raw_high_bytes_get_plain_400(path: bytes, http_server: str) -> None:
    # httptools, behind the fast server, is llhttp as well, so both reject the same bytes.
    if http_server == "aiohttp" and not C_PARSER:
        pytest.skip("aiohttp runs its pure-Python HTTP parser here")

    async with serving(settings_for([], http_server=http_server)) as (service, session, url):
        host, port = service.bound[0]
        target = path + b"?info_hash=" + bytes(range(0x80, 0x94))
        request = b"GET " + target + b" HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n"

        response = await send_raw(host, port, request)

    status_line, _, rest = response.partition(b"\r\n")
    assert status_line.split(b" ")[1] == b"400"
    body = rest.partition(b"\r\n\r\n")[2]
    assert not body.startswith(b"d")  # plain text from the HTTP layer, not a bencoded failure reason
