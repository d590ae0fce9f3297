"""Measure the CPU cost of each step of an HTTP announce in one process, without the HTTP layer.

Run: python bench/announce_path.py [--announces 20000] [--repeats 5] [--forwarders 1]

Builds the service's components with Service(settings) and --forwarders forwarders, but starts
nothing, so nothing listens. Then it fills --pool swarms with --swarm-size peers and 50 upstream
peers each, as bench/http_announce.py does in its warm-up. Last, it times each step of the
aggregator's HTTP announce handler on the kind of queries that bench/announce.lua sends. It
prints microseconds per call, the median over --repeats runs, and how long one full garbage
collection takes over everything the process then keeps. The HTTP layer's own cost is what
bench/http_announce.py --floors measures.
"""

import argparse
import asyncio
import gc
import random
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from multidict import CIMultiDict

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from aggregator.announce import AnnounceLimits, parse_announce  # noqa: E402
from aggregator.config import ForwarderConfig, Settings  # noqa: E402
from aggregator.http_front import AnnounceHandler  # noqa: E402
from aggregator.query import parse_first_values  # noqa: E402
from aggregator.replies import encode_announce_reply  # noqa: E402
from aggregator.service import Service  # noqa: E402

from harness import infohash_pool, percent_encode  # noqa: E402

CLIENT_IP = "127.0.0.1"
UPSTREAM_PEERS = [bytes([127, 0, 1, index]) + (20000 + index).to_bytes(2, "big") for index in range(1, 51)]


def announce_queries(pool: list[bytes], swarm_size: int, count: int, rng: random.Random) -> list[str]:
    """Return raw query strings like those of bench/announce.lua: a random infohash and peer slot each."""
    encoded = [percent_encode(info_hash) for info_hash in pool]
    queries = []
    for _ in range(count):
        hash_index = rng.randrange(len(pool))
        slot = rng.randrange(swarm_size)
        left = 0 if slot % 4 == 0 else rng.randrange(1, 1_000_000_000)
        queries.append(
            f"info_hash={encoded[hash_index]}&peer_id=-BN0001-{hash_index + 1:06d}{slot:06d}&port={10000 + slot}"
            f"&uploaded=0&downloaded=0&left={left}&compact=1&numwant=50"
        )

    return queries


def time_per_call(run_all: Callable[[], Any], calls: int, repeats: int) -> float:
    """Return the median over `repeats` runs of run_all's duration divided by `calls`, in microseconds."""
    durations = []
    for _ in range(repeats):
        started = time.perf_counter()
        run_all()
        durations.append(time.perf_counter() - started)

    return statistics.median(durations) / calls * 1e6


async def measure(args: argparse.Namespace) -> dict[str, float]:
    # Nothing is started, so these forwarders are never contacted.
    forwarders = tuple(
        ForwarderConfig(f"http://127.0.0.1:9/forwarder-{index}/announce", f"unused-{index}", None, None)
        for index in range(args.forwarders)
    )
    settings = Settings(
        forwarders=forwarders,
        first_announce_wait_ms=0,
        admin_listen=None,
    )
    service = Service(settings)
    tracker = service.tracker
    rules = service.address_rules
    metrics = service.metrics
    limits = AnnounceLimits(settings.default_numwant, settings.max_numwant)
    pool = infohash_pool(args.pool)
    rng = random.Random(1)

    # Steady state: every swarm full, and the forwarder's 50 peers cached for every infohash.
    packed_ip = bytes([127, 0, 0, 1])
    for query in announce_queries(pool, args.swarm_size, args.pool * args.swarm_size * 3, rng):
        await tracker.announce(parse_announce(query, limits), packed_ip)
    now_s = time.monotonic()
    for info_hash in pool:
        service.cache.store(info_hash, 0, UPSTREAM_PEERS, 40, 10, 0, now_s)

    queries = announce_queries(pool, args.swarm_size, args.announces, rng)
    requests = [parse_announce(query, limits) for query in queries]
    headers: CIMultiDict[str] = CIMultiDict()
    results = [await tracker.announce(request, packed_ip) for request in requests]
    calls = len(queries)
    costs: dict[str, float] = {}

    costs["parse_announce (query decoding and validation)"] = time_per_call(
        lambda: [parse_announce(query, limits) for query in queries], calls, args.repeats
    )
    costs["  of which parse_first_values (query decoding)"] = time_per_call(
        lambda: [parse_first_values(query) for query in queries], calls, args.repeats
    )

    handler = AnnounceHandler(tracker, limits, None, rules, metrics)
    costs["client address (cached per socket peer)"] = time_per_call(
        lambda: [handler.client_endpoint(CLIENT_IP, headers, request) for request in requests], calls, args.repeats
    )
    costs["Tracker.begin_announce (swarm, batches, peer selection)"] = time_per_call(
        lambda: [tracker.begin_announce(request, packed_ip) for request in requests], calls, args.repeats
    )

    swarm = tracker.swarms.get(requests[0].info_hash)
    assert swarm is not None
    own_endpoint = packed_ip + requests[0].port.to_bytes(2, "big")
    costs[f"  of which Swarm.sample(50) of {len(swarm)} peers"] = time_per_call(
        lambda: [swarm.sample(50, own_endpoint) for _ in range(calls)], calls, args.repeats
    )
    costs["encode_announce_reply (50 peers)"] = time_per_call(
        lambda: [encode_announce_reply(result, True, False, None) for result in results], calls, args.repeats
    )
    costs["Metrics.observe_announce (counter and histogram)"] = time_per_call(
        lambda: [metrics.observe_announce("http", "none", "ok", 0.0001) for _ in range(calls)], calls, args.repeats
    )
    raw_queries = [query.encode() for query in queries]
    whole = time_per_call(
        lambda: [handler.begin(query, CLIENT_IP, headers) for query in raw_queries], calls, args.repeats
    )
    costs["reply peer count (check)"] = float(len(results[-1].peers4) // 6 + len(results[-1].peers6) // 18)
    costs["whole AnnounceHandler.begin (check)"] = whole
    costs["tracked objects (check)"] = float(len(gc.get_objects()))
    started = time.perf_counter()
    gc.collect()
    costs["full garbage collection, gc.collect() (check)"] = (time.perf_counter() - started) * 1e6

    return costs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--announces", type=int, default=20000, help="timed calls per step and run")
    parser.add_argument("--repeats", type=int, default=5, help="runs per step; the median is printed")
    parser.add_argument("--pool", type=int, default=1000, help="infohashes")
    parser.add_argument("--swarm-size", type=int, default=100, help="peer slots per infohash")
    parser.add_argument("--forwarders", type=int, default=1, help="forwarders, so batches per infohash")
    args = parser.parse_args()

    costs = asyncio.run(measure(args))
    peers = costs.pop("reply peer count (check)")
    tracked = costs.pop("tracked objects (check)")
    collection_us = costs.pop("full garbage collection, gc.collect() (check)")
    whole = costs.pop("whole AnnounceHandler.begin (check)")
    print(f"{'step':<62} {'µs per call':>12}")
    for step, micros in costs.items():
        print(f"{step:<62} {micros:>12.2f}")
    steps = [micros for step, micros in costs.items() if not step.startswith("  ")]
    print(f"{'sum of the steps':<62} {sum(steps):>12.2f}")
    print(f"{'whole AnnounceHandler.begin, all steps in one call':<62} {whole:>12.2f}")
    print(f"(each reply carries {peers:.0f} peers)")
    print(f"one full garbage collection over {tracked:,.0f} tracked objects: {collection_us / 1000:.1f} ms")


if __name__ == "__main__":
    main()
