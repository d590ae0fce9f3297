"""A server that returns one fixed 50-peer announce reply to every GET, to measure the HTTP layer alone.

Run: python bench/http_floor.py --kind aiohttp|protocol --port PORT

bench/http_announce.py --floors starts one of each next to the aggregator. Both run on uvloop,
as the aggregator does, and do no tracker work, so their rate is the ceiling that the HTTP layer
leaves for the announce handler.

- aiohttp: a web.Application with one GET route and no access log, as the aggregator builds it.
- protocol: an asyncio.Protocol that splits requests at the blank line after the headers and
  writes the reply, with keep-alive unless the request has `Connection: close`. It parses
  nothing else, so it is a lower bound for any Python HTTP layer on asyncio.
"""

import argparse
import asyncio
from typing import cast

import bencode2
import uvloop
from aiohttp import web

# 50 compact IPv4 peers in 127.0.1.0/24, as the aggregator's replies carry in the benchmark.
PEERS = b"".join(bytes([127, 0, 1, index]) + (20000 + index).to_bytes(2, "big") for index in range(1, 51))
REPLY_BODY = bencode2.bencode(
    {b"complete": 25, b"incomplete": 75, b"interval": 1800, b"min interval": 900, b"peers": PEERS}
)
HEADER_END = b"\r\n\r\n"


def http_response(keep_alive: bool) -> bytes:
    connection = "keep-alive" if keep_alive else "close"
    head = (
        f"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {len(REPLY_BODY)}\r\n"
        f"Connection: {connection}\r\n\r\n"
    )

    return head.encode() + REPLY_BODY


KEEP_ALIVE_RESPONSE = http_response(keep_alive=True)
CLOSE_RESPONSE = http_response(keep_alive=False)


class FixedReplyProtocol(asyncio.Protocol):
    def __init__(self) -> None:
        self._buffer = b""
        self._transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports do not derive from asyncio.Transport, so no isinstance check.
        self._transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        assert self._transport is not None
        self._buffer += data
        while (end := self._buffer.find(HEADER_END)) >= 0:
            head = self._buffer[:end]
            self._buffer = self._buffer[end + len(HEADER_END) :]
            if b"\r\nConnection: close" in head:
                self._transport.write(CLOSE_RESPONSE)
                self._transport.close()
                return

            self._transport.write(KEEP_ALIVE_RESPONSE)


async def serve_protocol(port: int) -> None:
    server = await asyncio.get_running_loop().create_server(FixedReplyProtocol, "127.0.0.1", port)
    async with server:
        await server.serve_forever()


async def serve_aiohttp(port: int) -> None:
    async def announce(request: web.Request) -> web.Response:
        return web.Response(body=REPLY_BODY, content_type="text/plain")

    app = web.Application()
    app.router.add_get("/announce", announce)
    runner = web.AppRunner(app, access_log=None, handle_signals=False)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    await asyncio.Event().wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--kind", choices=("aiohttp", "protocol"), required=True, help="HTTP layer to run")
    parser.add_argument("--port", type=int, required=True, help="TCP port on 127.0.0.1")
    args = parser.parse_args()
    serve = serve_aiohttp if args.kind == "aiohttp" else serve_protocol
    uvloop.run(serve(args.port))


if __name__ == "__main__":
    main()
