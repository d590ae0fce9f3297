"""Measure the memory of local peers, swarms and upstream batches, in one process with no network.

Run: python bench/memory.py [--peers 1000000] [--swarms 100000] [--batches 1000000] [--forwarders 50 1]

Each measurement runs in a fresh child process, twice: once reading the resident set size
(RSS) before and after, and once with tracemalloc, which counts only the memory that Python
allocates. Every object that the service would keep is created inside the measured part:
infohashes, endpoints, peer ids and last-seen times.

- peers: SwarmRegistry.announce of --peers peers spread evenly over --swarms infohashes.
- swarms: the same infohashes with one peer each. The difference from "peers" is the cost of
  the extra peers alone, and what remains of "swarms" after one peer is the cost of a swarm.
- batches: BatchTable.open of --batches / F infohashes with F forwarders, so --batches batches
  in the due-time index ("opened"). The infohashes exist before the measurement, because the
  service shares one infohash object between a swarm and its batches. Then every batch goes
  through one upstream announce with DueIndex.pop_due, start_announce and after_success, as a
  worker does, so it gets its own due and last-success times ("after a reply").
"""

import argparse
import gc
import json
import os
import struct
import subprocess
import sys
import time
import tracemalloc
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

from aggregator.batch_table import BatchTable  # noqa: E402
from aggregator.due_index import DueIndex  # noqa: E402
from aggregator.swarm import SwarmRegistry  # noqa: E402

PAGE_BYTES = os.sysconf("SC_PAGE_SIZE")
PEER_TTL_S = 3600.0
_ENDPOINT = struct.Struct("!IH")  # IPv4 address and port: a 6-byte compact endpoint
_PEER_ID = struct.Struct("!8sQI")  # client prefix and two counters: 20 bytes


def rss_bytes() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * PAGE_BYTES


def make_info_hash(index: int) -> bytes:
    return index.to_bytes(20, "big")


def fill_swarms(swarm_count: int, peers_per_swarm: int) -> SwarmRegistry:
    """Announce peers_per_swarm distinct peers to each of swarm_count infohashes."""
    registry = SwarmRegistry(PEER_TTL_S, lambda info_hash: None)
    start_s = time.monotonic()
    peer_number = 0
    for swarm_index in range(swarm_count):
        info_hash = make_info_hash(swarm_index)
        for slot in range(peers_per_swarm):
            endpoint = _ENDPOINT.pack(0x0A000000 + peer_number, 10000 + slot)
            peer_id = _PEER_ID.pack(b"-BN0001-", swarm_index, slot)
            left = 0 if slot % 4 == 0 else 1_000_000 + slot
            # A new float per announce, as clock() returns in the service.
            now_s = start_s + peer_number * 1e-6
            registry.announce(info_hash, endpoint, peer_id, left, now_s)
            peer_number += 1

    return registry


def open_batches(info_hashes: list[bytes], forwarder_count: int) -> tuple[BatchTable, DueIndex]:
    index = DueIndex()
    table = BatchTable(
        forwarder_count=forwarder_count, index=index, first_wait_s=0.0, retry_base_s=30.0, retry_max_s=1800.0
    )
    now_s = time.monotonic()
    for info_hash in info_hashes:
        table.open(info_hash, now_s)

    return table, index


def reply_to_every_batch(table: BatchTable, index: DueIndex) -> int:
    """Take every due batch through one successful upstream announce; return how many."""
    now_s = time.monotonic() + 1.0
    replied = 0
    while (batch := index.pop_due(now_s)) is not None:
        sent_event = table.start_announce(batch)
        # A new float per reply, as the worker's clock() returns.
        table.after_success(batch, sent_event, 1800.0, 900.0, 50, now_s + replied * 1e-6)
        replied += 1

    return replied


def measure(method: str, build: Callable[[], Any]) -> tuple[int, Any]:
    """Return the bytes that `build` adds, read by `method`, and what it built (kept alive)."""
    gc.collect()
    if method == "tracemalloc":
        tracemalloc.start()
        before = tracemalloc.get_traced_memory()[0]
        built = build()
        gc.collect()
        after = tracemalloc.get_traced_memory()[0]
        tracemalloc.stop()
    else:
        before = rss_bytes()
        built = build()
        gc.collect()
        after = rss_bytes()

    return after - before, built


def run_child(part: str, method: str, args: argparse.Namespace) -> dict[str, Any]:
    """Build one part and return its byte counts; runs in a fresh process."""
    started = time.perf_counter()
    if part == "peers":
        added, registry = measure(method, lambda: fill_swarms(args.swarms, args.peers // args.swarms))
        result = {"bytes": added, "peers": registry.peer_count, "swarms": len(registry)}
    elif part == "swarms":
        added, registry = measure(method, lambda: fill_swarms(args.swarms, 1))
        result = {"bytes": added, "peers": registry.peer_count, "swarms": len(registry)}
    else:
        forwarder_count = int(part.removeprefix("batches-f"))
        # Created before the measurement: the service keeps one infohash object for swarm and batches.
        info_hashes = [make_info_hash(index) for index in range(args.batches // forwarder_count)]
        opened, (table, index) = measure(method, lambda: open_batches(info_hashes, forwarder_count))
        replied_bytes, replied = measure(method, lambda: reply_to_every_batch(table, index))
        result = {
            "bytes": opened,
            "bytes_after_reply": opened + replied_bytes,
            "batches": table.batch_count,
            "indexed": len(index),
            "replied": replied,
            "torrents": len(table),
        }
    result["seconds"] = time.perf_counter() - started

    return result


def run_part(part: str, method: str, args: argparse.Namespace) -> dict[str, Any]:
    argv = [
        sys.executable, __file__, "--child", part, method,
        "--peers", str(args.peers), "--swarms", str(args.swarms), "--batches", str(args.batches),
    ]  # fmt: skip
    completed = subprocess.run(argv, capture_output=True, text=True, check=False)
    if completed.returncode != 0:
        sys.exit(f"measurement {part} ({method}) failed:\n{completed.stderr}")
    result: dict[str, Any] = json.loads(completed.stdout.strip().splitlines()[-1])

    return result


def report(args: argparse.Namespace) -> dict[str, Any]:
    results: dict[str, dict[str, Any]] = {}
    parts = ["peers", "swarms"] + [f"batches-f{count}" for count in args.forwarders]
    for part in parts:
        for method in ("rss", "tracemalloc"):
            results[f"{part}/{method}"] = run_part(part, method, args)
            print(f"measured {part} ({method}) in {results[f'{part}/{method}']['seconds']:.1f} s", file=sys.stderr)

    print(f"{'bytes':<56} {'RSS':>10} {'tracemalloc':>12}")
    for method_figures in _per_unit_rows(results, args):
        label, rss, traced = method_figures
        print(f"{label:<56} {rss:>10.1f} {traced:>12.1f}")

    return results


def _per_unit_rows(results: dict[str, dict[str, Any]], args: argparse.Namespace) -> list[tuple[str, float, float]]:
    """Return (label, bytes per unit by RSS, bytes per unit by tracemalloc) for the table."""

    def per_unit(key: str, field: str, unit: str) -> tuple[float, float]:
        return tuple(  # type: ignore[return-value]
            results[f"{key}/{method}"][field] / results[f"{key}/{method}"][unit] for method in ("rss", "tracemalloc")
        )

    peers = results["peers/rss"]["peers"]
    swarms = results["peers/rss"]["swarms"]
    rows = [(f"all-in per peer ({peers:,} peers, {swarms:,} swarms)", *per_unit("peers", "bytes", "peers"))]

    marginal = []
    per_swarm = []
    for method in ("rss", "tracemalloc"):
        full = results[f"peers/{method}"]
        single = results[f"swarms/{method}"]
        extra_peers = full["peers"] - single["peers"]
        peer_bytes = (full["bytes"] - single["bytes"]) / extra_peers
        marginal.append(peer_bytes)
        per_swarm.append((single["bytes"] - single["peers"] * peer_bytes) / single["swarms"])
    rows.append(("per peer beyond the first of a swarm", marginal[0], marginal[1]))
    rows.append(("per swarm, its first peer excluded", per_swarm[0], per_swarm[1]))

    for count in args.forwarders:
        key = f"batches-f{count}"
        forwarders = f"{count} forwarder" if count == 1 else f"{count} forwarders"
        batches = results[f"{key}/rss"]["batches"]
        rows.append((f"per batch, opened ({batches:,} batches, {forwarders})", *per_unit(key, "bytes", "batches")))
        rows.append((f"per batch, after a reply ({forwarders})", *per_unit(key, "bytes_after_reply", "batches")))

    return rows


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--peers", type=int, default=1_000_000, help="local peers in the peers measurement")
    parser.add_argument("--swarms", type=int, default=100_000, help="infohashes the peers are spread over")
    parser.add_argument("--batches", type=int, default=1_000_000, help="batches in the due-time index")
    parser.add_argument(
        "--forwarders", type=int, nargs="+", default=[50, 1], help="forwarder counts, one batch measurement each"
    )
    parser.add_argument("--json", type=Path, help="write every figure to this JSON file")
    parser.add_argument("--child", nargs=2, metavar=("PART", "METHOD"), help=argparse.SUPPRESS)

    return parser.parse_args()


def main() -> None:
    args = parse_args()
    if args.child is not None:
        part, method = args.child
        print(json.dumps(run_child(part, method, args)))
        return

    results = report(args)
    if args.json is not None:
        settings = {key: value for key, value in vars(args).items() if key not in ("json", "child")}
        args.json.write_text(json.dumps({"settings": settings, "results": results}, indent=2) + "\n")
        print(f"results written to {args.json}")


if __name__ == "__main__":
    main()
