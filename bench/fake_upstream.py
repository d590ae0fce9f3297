"""An instant fake upstream tracker for the benchmarks: every GET gets one fixed announce reply.

Run: python bench/fake_upstream.py --port PORT
Listens on 127.0.0.1 only. `GET /count` returns the number of announces served so far as
decimal text, and every other GET path is an announce. The reply carries interval 1800, so
the aggregator sends each batch once and then stays idle upstream while a benchmark measures.
Keep-alive is supported; request bodies are not, since trackers are only sent GETs.
"""

import argparse
import asyncio
from typing import cast

import bencode2

# 50 compact IPv4 peers in 127.0.1.0/24, so that every peer address in a reply is on this machine.
PEERS = b"".join(bytes([127, 0, 1, index]) + (20000 + index).to_bytes(2, "big") for index in range(1, 51))
REPLY_BODY = bencode2.bencode(
    {b"interval": 1800, b"min interval": 900, b"complete": 40, b"incomplete": 10, b"peers": PEERS}
)
HEADER_END = b"\r\n\r\n"
MAX_HEADER_BYTES = 65536


def http_response(body: bytes) -> bytes:
    head = f"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {len(body)}\r\n\r\n"

    return head.encode() + body


ANNOUNCE_RESPONSE = http_response(REPLY_BODY)


class FakeTrackerProtocol(asyncio.Protocol):
    announces = 0

    def __init__(self) -> None:
        self._buffer = b""
        self._transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports do not derive from asyncio.Transport, so no isinstance check.
        self._transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        assert self._transport is not None
        self._buffer += data
        while True:
            end = self._buffer.find(HEADER_END)
            if end < 0:
                if len(self._buffer) > MAX_HEADER_BYTES:
                    self._transport.close()
                break

            head = self._buffer[:end]
            self._buffer = self._buffer[end + len(HEADER_END) :]
            request_line = head.split(b"\r\n", 1)[0]
            path = request_line.split(b" ")[1] if request_line.count(b" ") >= 2 else b""
            if path == b"/count":
                self._transport.write(http_response(str(FakeTrackerProtocol.announces).encode()))
            else:
                FakeTrackerProtocol.announces += 1
                self._transport.write(ANNOUNCE_RESPONSE)


async def serve(port: int) -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(FakeTrackerProtocol, "127.0.0.1", port)
    async with server:
        await server.serve_forever()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--port", type=int, required=True, help="TCP port on 127.0.0.1")
    args = parser.parse_args()
    asyncio.run(serve(args.port))


if __name__ == "__main__":
    main()
