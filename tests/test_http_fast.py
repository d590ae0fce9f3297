"""The lean HTTP server of the client port, spoken to over raw sockets."""

import asyncio

import bencode2
import pytest

from aggregator import http_fast
from tests.fake_tracker import FakeTracker, compact_peer

from tests.service_harness import announce_query, serving, settings_for

INFO_HASH = b"\x71" * 20


async def exchange(host: str, port: int, data: bytes, until_closed: bool = True) -> bytes:
    reader, writer = await asyncio.open_connection(host, port)
    try:
        writer.write(data)
        await writer.drain()
        if until_closed:
            return await asyncio.wait_for(reader.read(), timeout=5)
        return await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), timeout=5)
    finally:
        writer.close()


def split_responses(data: bytes) -> list[tuple[bytes, dict[bytes, bytes], bytes]]:
    """Split concatenated HTTP responses into (status line, headers, body)."""
    responses = []
    while data:
        head, _, rest = data.partition(b"\r\n\r\n")
        lines = head.split(b"\r\n")
        headers = dict(line.split(b": ", 1) for line in lines[1:])
        length = int(headers[b"Content-Length"])
        responses.append((lines[0], headers, rest[:length]))
        data = rest[length:]
    return responses


def get(target: str, extra: str = "", version: str = "1.1") -> bytes:
    return f"GET {target} HTTP/{version}\r\nHost: t\r\n{extra}\r\n".encode()


async def test_pipelined_requests_answered_in_order() -> None:
    async with serving(settings_for([])) as (service, session, url):
        host, port = service.bound[0]
        requests = b"".join(get(f"/announce?{announce_query(7000 + n, INFO_HASH)}") for n in range(5))
        requests += get("/scrape?info_hash=" + "%71" * 20, "Connection: close\r\n")

        responses = split_responses(await exchange(host, port, requests))

    assert len(responses) == 6
    assert all(status == b"HTTP/1.1 200 OK" for status, _, _ in responses)
    counts = [bencode2.bdecode(body)[b"incomplete"] for _, _, body in responses[:5]]
    assert counts == [1, 2, 3, 4, 5]  # each announce saw the ones before it
    assert bencode2.bdecode(responses[5][2])[b"files"][INFO_HASH][b"incomplete"] == 5
    assert responses[5][1][b"Connection"] == b"close"
    assert b"Connection" not in responses[0][1]


async def test_http_1_0_closes_unless_keep_alive() -> None:
    async with serving(settings_for([])) as (service, session, url):
        host, port = service.bound[0]
        target = f"/announce?{announce_query(7001, INFO_HASH)}"

        closed = split_responses(await exchange(host, port, get(target, version="1.0")))
        kept = await exchange(host, port, get(target, "Connection: keep-alive\r\n", version="1.0"), until_closed=False)

    assert closed[0][1][b"Connection"] == b"close"
    assert b"Connection: keep-alive" in kept


async def test_unknown_path_and_method() -> None:
    async with serving(settings_for([])) as (service, session, url):
        host, port = service.bound[0]
        not_found = await exchange(host, port, get("/favicon.ico", "Connection: close\r\n"))
        post = await exchange(host, port, b"POST /announce HTTP/1.1\r\nHost: t\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")

    assert not_found.startswith(b"HTTP/1.1 404 Not Found\r\n")
    assert post.startswith(b"HTTP/1.1 405 Method Not Allowed\r\n")


async def test_oversized_head_rejected() -> None:
    async with serving(settings_for([])) as (service, session, url):
        host, port = service.bound[0]
        request = get("/announce?" + "a" * 20_000)

        response = await exchange(host, port, request)

    assert response.startswith(b"HTTP/1.1 431 ")


async def test_garbage_gets_400_and_close() -> None:
    async with serving(settings_for([])) as (service, session, url):
        host, port = service.bound[0]

        response = await exchange(host, port, b"\x16\x03\x01\x02\x00 not http at all\r\n\r\n")

    assert response.startswith(b"HTTP/1.1 400 Bad Request\r\n")
    assert len(service.swarms) == 0


async def test_pipelined_requests_wait_behind_first_round() -> None:
    # The first announce of a new infohash waits for the upstream reply; the requests pipelined
    # behind it on the same connection are sent only after its reply, in order.
    upstream_peer = compact_peer("10.9.9.9", 6999)
    tracker = FakeTracker(reply={b"interval": 1800, b"peers": upstream_peer}, hold=asyncio.Event())
    await tracker.start()
    try:
        async with serving(settings_for([tracker])) as (service, session, url):
            host, port = service.bound[0]
            requests = get(f"/announce?{announce_query(7100, INFO_HASH)}")
            requests += get(f"/announce?{announce_query(7101, INFO_HASH)}")
            requests += get("/scrape?info_hash=" + "%71" * 20, "Connection: close\r\n")
            reader, writer = await asyncio.open_connection(host, port)
            writer.write(requests)
            await writer.drain()

            await tracker.wait_for_announces(1)
            tracker.hold.set()  # type: ignore[union-attr]
            responses = split_responses(await asyncio.wait_for(reader.read(), timeout=5))
            writer.close()
    finally:
        await tracker.stop()

    assert len(responses) == 3
    first, second = (bencode2.bdecode(body) for _, _, body in responses[:2])
    assert upstream_peer in first[b"peers"]
    assert first[b"incomplete"] >= 1
    assert second[b"incomplete"] >= 2
    assert b"files" in bencode2.bdecode(responses[2][2])


async def test_idle_connection_closed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(http_fast, "IDLE_TIMEOUT_S", 0.05)
    async with serving(settings_for([])) as (service, session, url):
        host, port = service.bound[0]
        reader, writer = await asyncio.open_connection(host, port)
        writer.write(get(f"/announce?{announce_query(7200, INFO_HASH)}"))
        await writer.drain()
        await reader.readuntil(b"\r\n\r\n")

        # Nothing more is sent, so a sweep closes the connection within two periods.
        await asyncio.wait_for(reader.read(), timeout=5)
        closed = reader.at_eof()
        writer.close()

    assert closed


@pytest.mark.parametrize("http_server", ["fast", "aiohttp"])
async def test_both_servers_wait_for_first_round(http_server: str) -> None:
    # The first announce of a new infohash gets the upstream peer; the next one gets its reply at once.
    upstream_peer = compact_peer("10.9.9.8", 6998)
    tracker = FakeTracker(reply={b"interval": 1800, b"peers": upstream_peer})
    await tracker.start()
    try:
        async with serving(settings_for([tracker], http_server=http_server)) as (service, session, url):
            replies = []
            for port in (7300, 7301):
                async with session.get(f"{url}/announce?{announce_query(port, INFO_HASH)}") as response:
                    replies.append(bencode2.bdecode(await response.read()))
    finally:
        await tracker.stop()

    assert upstream_peer in replies[0][b"peers"]
    assert upstream_peer in replies[1][b"peers"]
    assert replies[1][b"incomplete"] == 2
