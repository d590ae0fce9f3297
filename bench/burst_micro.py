"""Micro-benchmarks for bench/burst.py: memory per batch and the dispatcher's hand-off rate."""

import asyncio
import gc
import statistics
import sys
import time
import tracemalloc
from typing import Any

from aggregator.batch import Batch, TorrentBatches
from aggregator.batch_table import BatchTable
from aggregator.config import Settings
from aggregator.dispatcher import Dispatcher
from aggregator.due_index import DueIndex
from aggregator.forwarder import ForwarderRegistry, HealthPolicy


def measure_batch_memory(batch_count: int, forwarders: int) -> dict[str, Any]:
    """Open batch_count batches (batch_count / forwarders infohashes) and return the traced bytes per batch.

    The infohash bytes objects are created before tracing starts, because in the service the
    local swarms hold them as well. Each infohash is opened at its own time, as in the service.
    """
    info_hashes = [n.to_bytes(20, "big") for n in range(batch_count // forwarders)]
    gc.collect()
    tracemalloc.start()
    before, _ = tracemalloc.get_traced_memory()
    table = BatchTable(forwarders, DueIndex(), first_wait_s=0.0, retry_base_s=30.0, retry_max_s=1800.0, max_batches=0)
    for n, info_hash in enumerate(info_hashes):
        table.open(info_hash, 1000.0 + n * 0.001)
    gc.collect()
    after, _ = tracemalloc.get_traced_memory()
    tracemalloc.stop()

    # Every Batch refers to its TorrentBatches and back, so only the cyclic collector frees them,
    # and a full collection visits each of them.
    collect_started_s = time.perf_counter()
    gc.collect()
    full_collection_s = time.perf_counter() - collect_started_s

    opened = table.batch_count
    del table
    gc.collect()

    return {
        "batches": opened,
        "forwarders": forwarders,
        "traced_bytes": after - before,
        "bytes_per_batch": round((after - before) / opened, 1),
        "batch_object_bytes": sys.getsizeof(Batch(TorrentBatches(bytes(20)), 0)),
        "full_gc_ms": round(full_collection_s * 1000, 1),
    }


async def measure_handoff(batch_count: int, workers: int, forwarders: int, with_registry: bool) -> float:
    """Return batches handed off per second by a Dispatcher to workers whose run_batch does nothing.

    With `with_registry`, every batch also passes ForwarderRegistry.admit and release, with the
    default in-flight cap per forwarder, as in the service.
    """
    index = DueIndex()
    for n in range(batch_count // forwarders):
        torrent = TorrentBatches(n.to_bytes(20, "big"))
        for forwarder_index in range(forwarders):
            batch = Batch(torrent, forwarder_index)
            torrent.batches.append(batch)
            index.schedule(batch, 0.0)  # time.monotonic() is far past 0, so every batch is due
    total = len(index)

    registry = None
    if with_registry:
        defaults = Settings()
        policy = HealthPolicy(
            max_inflight=defaults.forwarder_max_inflight,
            suspend_s=defaults.suspend_s,
            disable_after_failures=defaults.disable_after_failures,
            probe_base_s=defaults.probe_base_s,
            probe_max_s=defaults.probe_max_s,
        )
        registry = ForwarderRegistry([f"f{n}" for n in range(forwarders)], policy, index, time.monotonic)

    finished = asyncio.Event()
    handled = 0

    async def run_batch(batch: Batch) -> None:
        nonlocal handled
        handled += 1
        if registry is not None:
            registry.release(batch.forwarder_index)
        if handled == total:
            finished.set()

    if registry is not None:
        dispatcher = Dispatcher(index, run_batch, workers, time.monotonic, admit=registry.admit)
    else:
        dispatcher = Dispatcher(index, run_batch, workers, time.monotonic)

    started_s = time.perf_counter()
    dispatcher.start()
    await finished.wait()
    elapsed_s = time.perf_counter() - started_s
    await dispatcher.stop()

    return total / elapsed_s


async def run_handoff(batch_count: int, rounds: int) -> list[dict[str, Any]]:
    """Measure the hand-off rate bare and with forwarder admission, with 16 and 64 workers."""
    rows = []
    for with_registry in (False, True):
        for workers in (16, 64):
            rates = [await measure_handoff(batch_count, workers, 50, with_registry) for _ in range(rounds)]
            rows.append(
                {
                    "workers": workers,
                    "forwarder_admission": with_registry,
                    "batches": batch_count,
                    "rounds_per_s": [round(rate) for rate in rates],
                    "median_per_s": round(statistics.median(rates)),
                }
            )

    return rows
