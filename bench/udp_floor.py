"""A UDP tracker that sends one fixed 50-peer announce reply to every announce, to measure the event loop alone.

Run: python bench/udp_floor.py --port PORT [--work-us 0]

bench/udp_announce.py --floor starts it next to the aggregator. It is a bare DatagramProtocol on
uvloop, as the aggregator runs, and does no tracker work. It replies to a BEP 15 connect request
with connection id 0 and to every other packet of 16 bytes or more with a 320-byte announce
reply: the 20-byte head with the request's transaction id, then 50 compact IPv4 peers. That is
the size of the aggregator's reply in the benchmark. Its rate is the ceiling that the event loop
and the send and receive system calls leave for a Python UDP tracker on one core.

The cost of the loop and the system calls per announce depends on the rate. At a lower rate the
load processes wait for replies, so each reply wakes one of them, and on loopback the sender's
system call pays for that. --work-us busy-waits that many microseconds per announce, so the floor
runs near the aggregator's rate, and its CPU time per announce minus --work-us is the loop's cost
at that rate.
"""

import argparse
import asyncio
import struct
import time
from typing import Any, cast

import uvloop

ACTION_CONNECT = 0
ACTION_ANNOUNCE = 1
HEADER_BYTES = 16  # connection id, action, transaction id
# 50 compact IPv4 peers in 127.0.1.0/24, as the aggregator's replies carry in the benchmark.
PEERS = b"".join(bytes([127, 0, 1, index]) + (20000 + index).to_bytes(2, "big") for index in range(1, 51))
CONNECT_ACTION_BYTES = struct.pack("!I", ACTION_CONNECT)
ANNOUNCE_ACTION_BYTES = struct.pack("!I", ACTION_ANNOUNCE)
# After the transaction id: interval, leechers, seeders, then the peers.
ANNOUNCE_REPLY_TAIL = struct.pack("!III", 1800, 75, 25) + PEERS
CONNECT_REPLY_TAIL = bytes(8)  # connection id 0, which this server never checks


class FixedReplyProtocol(asyncio.DatagramProtocol):
    def __init__(self, work_s: float) -> None:
        self._transport: asyncio.DatagramTransport | None = None
        self._work_s = work_s  # busy-wait per announce, in place of tracker work

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's UDP transport does not derive from asyncio.DatagramTransport, so no isinstance check.
        self._transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: Any) -> None:
        if self._transport is None or len(data) < HEADER_BYTES:
            return

        transaction_id = data[12:16]
        if data[8:12] == CONNECT_ACTION_BYTES:
            self._transport.sendto(CONNECT_ACTION_BYTES + transaction_id + CONNECT_REPLY_TAIL, addr)
            return

        if self._work_s > 0:
            work_until = time.perf_counter() + self._work_s
            while time.perf_counter() < work_until:
                pass
        self._transport.sendto(ANNOUNCE_ACTION_BYTES + transaction_id + ANNOUNCE_REPLY_TAIL, addr)


async def serve(port: int, work_s: float) -> None:
    loop = asyncio.get_running_loop()
    await loop.create_datagram_endpoint(lambda: FixedReplyProtocol(work_s), local_addr=("127.0.0.1", port))
    await asyncio.Event().wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--port", type=int, required=True, help="UDP port on 127.0.0.1")
    parser.add_argument(
        "--work-us", type=float, default=0.0, help="microseconds to busy-wait per announce before the reply"
    )
    args = parser.parse_args()
    uvloop.run(serve(args.port, args.work_us / 1e6))


if __name__ == "__main__":
    main()
