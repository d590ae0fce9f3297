"""Measurements for bench/burst.py: sampling, event-loop stalls, garbage-collector pauses and statistics."""

import asyncio
import gc
import math
import statistics
import sys
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable
from pathlib import Path
from typing import Any

from burst_upstreams import RequestCounts

from aggregator.service import Service

SAMPLE_PERIOD_S = 0.1
LAG_TICK_S = 0.002


# --- Sampling -----------------------------------------------------------------------


class GcPauses:
    """Durations of the garbage collector's runs, by generation, between `start` and `stop`."""

    def __init__(self) -> None:
        self.pauses_s: dict[int, list[float]] = {0: [], 1: [], 2: []}
        self._started_s = 0.0

    def _record(self, phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            self._started_s = time.perf_counter()
        else:
            self.pauses_s[info["generation"]].append(time.perf_counter() - self._started_s)

    def start(self) -> None:
        gc.callbacks.append(self._record)

    def stop(self) -> None:
        gc.callbacks.remove(self._record)

    def summary(self) -> dict[str, Any]:
        return {
            f"gen{generation}": {"runs": len(pauses), "max_ms": round(max(pauses, default=0.0) * 1000, 1)}
            for generation, pauses in self.pauses_s.items()
        }


class Sampler:
    """Calls `probe` every SAMPLE_PERIOD_S and keeps the samples, and measures event-loop stalls.

    A second task sleeps for LAG_TICK_S at a time and records how much longer each sleep took.
    Both run on the service's loop, so a long synchronous step anywhere in the process, a
    garbage collection included, shows up as a stall.
    """

    def __init__(self, probe: Callable[[], dict[str, float]]) -> None:
        self._probe = probe
        self.samples: list[dict[str, float]] = []
        self.max_stall_s = 0.0
        self.stalls_over_10ms = 0
        self.gc_pauses = GcPauses()
        self._tasks: list[asyncio.Task[None]] = []

    def start(self) -> None:
        self.gc_pauses.start()
        loop = asyncio.get_running_loop()
        self._tasks = [
            loop.create_task(self._sample(), name="burst-sampler"),
            loop.create_task(self._measure_lag(), name="burst-loop-lag"),
        ]

    async def stop(self) -> None:
        if not self._tasks:
            return

        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks = []
        self.gc_pauses.stop()

    async def _sample(self) -> None:
        started_s = time.monotonic()
        planned_s = started_s
        while True:
            planned_s += SAMPLE_PERIOD_S
            await asyncio.sleep(max(planned_s - time.monotonic(), 0.0))
            now_s = time.monotonic()
            sample = self._probe()
            sample["t_s"] = now_s - started_s
            self.samples.append(sample)
            planned_s = max(planned_s, now_s - SAMPLE_PERIOD_S)  # no burst of catch-up samples

    async def _measure_lag(self) -> None:
        while True:
            slept_from_s = time.monotonic()
            await asyncio.sleep(LAG_TICK_S)
            stall_s = time.monotonic() - slept_from_s - LAG_TICK_S
            self.max_stall_s = max(self.max_stall_s, stall_s)
            if stall_s > 0.010:
                self.stalls_over_10ms += 1

    def peak(self, key: str) -> float:
        return max((sample[key] for sample in self.samples), default=0.0)

    def low(self, key: str) -> float:
        return min((sample[key] for sample in self.samples), default=0.0)


def listen_overflows() -> int | None:
    """Return the kernel's TcpExt ListenOverflows counter (Linux), or None where it cannot be read.

    It counts connections dropped because a listening socket's accept queue was full, on the
    whole machine. The client sends a dropped SYN again after 1 s (Linux's initial
    retransmission timeout), which shows as client latency.
    """
    try:
        lines = Path("/proc/net/netstat").read_text().splitlines()
    except OSError:
        return None

    for names, values in zip(lines[::2], lines[1::2]):
        if names.startswith("TcpExt:"):
            fields = dict(zip(names.split()[1:], values.split()[1:]))
            return int(fields["ListenOverflows"]) if "ListenOverflows" in fields else None

    return None


async def bounded(awaitable: Awaitable[Any], limit_s: float, label: str) -> Any:
    """Await with a time limit. Past it, print the stack of every task to stderr and raise TimeoutError."""
    task = asyncio.ensure_future(awaitable)
    done, _ = await asyncio.wait({task}, timeout=limit_s)
    if not done:
        print(f"{label} did not finish within {limit_s:.0f} s; task stacks follow", file=sys.stderr)
        for other in asyncio.all_tasks():
            other.print_stack(limit=8, file=sys.stderr)
        task.cancel()
        raise TimeoutError(f"{label} did not finish within {limit_s:.0f} s")

    return task.result()


# --- Statistics ---------------------------------------------------------------------


def percentile(values: list[float], fraction: float) -> float | None:
    """Return the nearest-rank percentile, or None for no values."""
    if not values:
        return None

    ordered = sorted(values)
    rank = max(math.ceil(fraction * len(ordered)), 1)

    return ordered[min(rank, len(ordered)) - 1]


def latency_summary(latencies_s: list[float]) -> dict[str, float | None]:
    def in_ms(value: float | None) -> float | None:
        return None if value is None else round(value * 1000, 2)

    return {
        "p50_ms": in_ms(percentile(latencies_s, 0.50)),
        "p99_ms": in_ms(percentile(latencies_s, 0.99)),
        "max_ms": in_ms(max(latencies_s, default=None)),
    }


def pair_summary(counts: RequestCounts) -> dict[str, Any]:
    """Summarize the requests per (forwarder, infohash) pair, over the pairs that received at least one."""
    per_pair = list(counts.per_pair.values())

    return {
        "requests": counts.total,
        "pairs": len(per_pair),
        "per_pair_mean": round(statistics.fmean(per_pair), 3) if per_pair else None,
        "per_pair_max": max(per_pair, default=0),
        "retries": counts.retries,
        "repeats_after_success": counts.repeats_after_success,
        "max_concurrent_at_trackers": counts.max_in_flight,
        "replies_after_client_left": counts.replies_after_client_left,
        "statuses": {str(status): number for status, number in sorted(counts.statuses.items())},
    }


def coverage_by_kind(
    pairs: Iterable[tuple[int, bytes]], kinds: list[str], counts: RequestCounts, start_s: float
) -> dict[str, dict[str, Any]]:
    """Return per tracker kind the pairs expected, those announced at least once, and when the last one was."""
    expected: dict[str, list[tuple[int, bytes]]] = {}
    for pair in pairs:
        expected.setdefault(kinds[pair[0]], []).append(pair)

    coverage = {}
    for kind, kind_pairs in sorted(expected.items()):
        seen = [counts.first_seen_s[pair] for pair in kind_pairs if pair in counts.first_seen_s]
        complete = len(seen) == len(kind_pairs)
        coverage[kind] = {
            "pairs": len(kind_pairs),
            "announced": len(seen),
            "all_announced_after_s": round(max(seen) - start_s, 2) if complete and seen else None,
        }

    return coverage


def first_request_delays(
    counts: RequestCounts, kinds: list[str], first_seen: dict[bytes, float]
) -> dict[str, dict[str, float | None]]:
    """Return per tracker kind the delay from an infohash's first client announce to its first request there."""
    delays: dict[str, list[float]] = {}
    for (index, info_hash), arrived_s in counts.first_seen_s.items():
        client_s = first_seen.get(info_hash)
        if client_s is not None:
            delays.setdefault(kinds[index], []).append(arrived_s - client_s)

    return {
        kind: {
            "p50_s": _rounded(percentile(values, 0.50)),
            "p99_s": _rounded(percentile(values, 0.99)),
            "max_s": _rounded(max(values)),
        }
        for kind, values in sorted(delays.items())
    }


def _rounded(value: float | None) -> float | None:
    return None if value is None else round(value, 3)


def histogram_quantiles(service: Service, name: str, fractions: tuple[float, ...]) -> dict[str, Any]:
    """Read quantiles of a histogram in the service's metrics registry, each as the upper bound of its bucket."""
    buckets: list[tuple[float, float]] = []
    for family in service.metrics.registry.collect():
        if family.name == name:
            buckets = [(float(s.labels["le"]), s.value) for s in family.samples if s.name.endswith("_bucket")]
    total = buckets[-1][1] if buckets else 0.0

    quantiles: dict[str, Any] = {"observations": int(total)}
    for fraction in fractions:
        bound = next((le for le, cumulative in buckets if total and cumulative >= fraction * total), None)
        quantiles[f"p{round(fraction * 100)}_le_s"] = bound

    return quantiles


def upstream_outcomes(service: Service, kinds: list[str]) -> dict[str, dict[str, int]]:
    """Return the upstream announce attempts that the aggregator counted, by tracker kind and outcome."""
    outcomes: dict[str, Counter[str]] = {}
    for family in service.metrics.registry.collect():
        if family.name != "aggregator_upstream_requests":
            continue

        for sample in family.samples:
            if sample.name.endswith("_total"):
                kind = kinds[int(sample.labels["forwarder"].split("-")[0][1:])]
                outcomes.setdefault(kind, Counter())[sample.labels["outcome"]] += int(sample.value)

    return {kind: dict(counter) for kind, counter in sorted(outcomes.items())}
