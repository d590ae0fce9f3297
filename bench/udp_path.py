"""Measure the CPU cost of a UDP (BEP 15) announce in one process, without sockets or system calls.

Run: taskset -c 0 python bench/udp_path.py [--announces 100000] [--repeats 5] [--profile]

Builds the service's components with Service(settings) and one forwarder, but starts nothing, so
nothing listens and no upstream is contacted. A transport stand-in takes the replies and counts
them. Datagrams go to UdpTracker.handle_datagram, DATAGRAMS_PER_ITERATION per event-loop
iteration, as they would from the event loop, so the replies go out at the end of each: first a
connect request, whose reply carries the connection id, then the announces that the
--load-processes load processes of bench/udp_announce.py send. The warm-up sends each of them
once, which fills most of the 100 peer slots of each of the --pool swarms, and caches 50 upstream
peers per infohash, so every reply carries 50 peers as in that benchmark. Then it times
handle_datagram over --announces of the same announces and prints microseconds per announce,
the median over --repeats runs. It also times Tracker.begin_announce alone on the same announces,
so the difference is the cost of the UDP layer: parsing, connection id, metrics and reply.
`bench/udp_announce.py --floor` measures the sockets and the system calls that this leaves out.
"""

import argparse
import asyncio
import cProfile
import pstats
import statistics
import struct
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from aggregator.config import ForwarderConfig, Settings  # noqa: E402
from aggregator.announce import AnnounceLimits  # noqa: E402
from aggregator.service import Service  # noqa: E402
from aggregator.udp_codec import parse_announce_body  # noqa: E402
from aggregator.udp_front import UdpTracker  # noqa: E402

from announce_path import UPSTREAM_PEERS  # noqa: E402
from harness import infohash_pool  # noqa: E402
from udp_announce import ACTION_ANNOUNCE, ACTION_CONNECT, CONNECT_REPLY, PROTOCOL_ID, build_bodies  # noqa: E402

CLIENT_ADDRESS = ("127.0.0.1", 40000)
CLIENT_PACKED_IP = bytes([127, 0, 0, 1])
REQUEST_HEAD = struct.Struct("!QII")  # connection id, action, transaction id
ANNOUNCE_REPLY_BYTES = 20
PEER_BYTES = 6
# Datagrams handled per event-loop iteration; libuv reads up to 32 per readiness event.
DATAGRAMS_PER_ITERATION = 32


class CountingTransport:
    """Fake datagram transport that keeps the last reply and counts the replies."""

    def __init__(self) -> None:
        self.replies = 0
        self.last_reply = b""

    def sendto(self, data: bytes, addr: Any = None) -> None:
        self.replies += 1
        self.last_reply = data

    def is_closing(self) -> bool:
        return False


async def request_connection_id(udp: UdpTracker, transport: Any) -> int:
    """Send a BEP 15 connect request from CLIENT_ADDRESS and return the connection id of the reply."""
    udp.handle_datagram(transport, REQUEST_HEAD.pack(PROTOCOL_ID, ACTION_CONNECT, 1), CLIENT_ADDRESS)
    await asyncio.sleep(0)  # replies go out at the end of a loop iteration
    action, _, connection_id = CONNECT_REPLY.unpack(transport.last_reply)
    if action != ACTION_CONNECT:
        sys.exit(f"connect failed: expected a connect reply, got action {action}: {transport.last_reply!r}")

    return int(connection_id)


def announce_packets(connection_id: int, bodies: Sequence[bytes], count: int) -> list[bytes]:
    """Return `count` announce requests that cycle through `bodies`, each with its own transaction id."""
    return [
        REQUEST_HEAD.pack(connection_id, ACTION_ANNOUNCE, index) + bodies[index % len(bodies)] for index in range(count)
    ]


async def send_all(udp: UdpTracker, transport: Any, packets: Sequence[bytes]) -> float:
    """Hand every packet to the tracker, DATAGRAMS_PER_ITERATION per loop iteration, and return the seconds it took."""
    handle = udp.handle_datagram
    started = time.perf_counter()
    for first in range(0, len(packets), DATAGRAMS_PER_ITERATION):
        for packet in packets[first : first + DATAGRAMS_PER_ITERATION]:
            handle(transport, packet, CLIENT_ADDRESS)
        await asyncio.sleep(0)  # one loop iteration, which sends the replies

    return time.perf_counter() - started


async def measure(args: argparse.Namespace) -> None:
    # Nothing is started, so this forwarder is never contacted.
    forwarders = (ForwarderConfig("http://127.0.0.1:9/forwarder-0/announce", "unused-0", None, None),)
    settings = Settings(forwarders=forwarders, first_announce_wait_ms=0, admin_listen=None)
    service = Service(settings)
    udp = service.udp
    transport = CountingTransport()
    pool = infohash_pool(args.pool)
    # The seeds of the load processes, so the swarms fill up as in bench/udp_announce.py.
    bodies = [body for seed in range(args.load_processes) for body in build_bodies(pool, args.swarm_size, seed)]
    connection_id = await request_connection_id(udp, transport)

    # Steady state: the swarms as full as the load makes them, and 50 upstream peers cached per infohash.
    await send_all(udp, transport, announce_packets(connection_id, bodies, len(bodies)))
    now_s = time.monotonic()
    for info_hash in pool:
        service.cache.store(info_hash, 0, UPSTREAM_PEERS, 40, 10, 0, now_s)

    packets = announce_packets(connection_id, bodies, args.announces)
    replies_before = udp.announce_replies
    durations = [await send_all(udp, transport, packets) for _ in range(args.repeats)]
    replies = udp.announce_replies - replies_before
    if replies != args.announces * args.repeats:
        sys.exit(f"expected {args.announces * args.repeats} announce replies, got {replies}")
    peers = (len(transport.last_reply) - ANNOUNCE_REPLY_BYTES) // PEER_BYTES
    total_us = statistics.median(durations) / args.announces * 1e6
    print(f"{total_us:.2f} µs per announce through UdpTracker.handle_datagram "
          f"(median of {args.repeats} runs of {args.announces:,}, {peers} peers per reply)")  # fmt: skip

    limits = AnnounceLimits(settings.default_numwant, settings.max_numwant)
    requests = [parse_announce_body(packet, limits)[0] for packet in packets]
    begin_announce = service.tracker.begin_announce
    tracker_durations = []
    for _ in range(args.repeats):
        started = time.perf_counter()
        for request in requests:
            begin_announce(request, CLIENT_PACKED_IP, same_family_only=True)
        tracker_durations.append(time.perf_counter() - started)
    tracker_us = statistics.median(tracker_durations) / args.announces * 1e6
    print(f"{tracker_us:.2f} µs of it in Tracker.begin_announce, {total_us - tracker_us:.2f} µs in the UDP layer")

    if args.profile:
        profiler = cProfile.Profile()
        profiler.enable()
        await send_all(udp, transport, packets)
        profiler.disable()
        print("\nprofile of one more run (cProfile slows every call, so shares are rough):")
        pstats.Stats(profiler).sort_stats("tottime").print_stats(args.profile_lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--announces", type=int, default=100_000, help="announces per timed run")
    parser.add_argument("--repeats", type=int, default=5, help="timed runs; the median is printed")
    parser.add_argument("--pool", type=int, default=1000, help="infohashes in the pool")
    parser.add_argument("--swarm-size", type=int, default=100, help="distinct peers per infohash")
    parser.add_argument(
        "--load-processes", type=int, default=4, help="load processes of bench/udp_announce.py whose announces to send"
    )
    parser.add_argument("--profile", action="store_true", help="also profile one run with cProfile")
    parser.add_argument("--profile-lines", type=int, default=25, help="functions to list in the profile")
    args = parser.parse_args()
    asyncio.run(measure(args))


if __name__ == "__main__":
    main()
