"""Burst benchmark: a wave of client announces for new infohashes, and the upstream work it causes.

Run: PYTHONPATH=. python bench/burst.py [--quick] [--json PATH] [--parts burst,memory,handoff,overdue]

Everything runs in this process on 127.0.0.1. Fake upstream trackers (bench/burst_upstreams.py)
are fast, slow, dead or rate-limiting. An in-process `aggregator.service.Service` forwards to
them, and clients (bench/burst_client.py) send announces to it at a fixed arrival rate. The
clients, the trackers and the service share one event loop, so client latencies include the
time that the loop spends on the trackers and on the clients themselves.

Parts (--parts):
- burst: the client trace against the aggregator, then the same trace against a reference
  model that queues one upstream job per client announce (bench/burst_reference.py). Each is
  measured until every pair of a replying tracker was announced once, or the reference has
  no job left, or for at most --deadline seconds after the client phase.
- memory: traced Python memory per batch after opening --memory-batches batches in a fresh
  BatchTable and DueIndex (bench/burst_micro.py).
- handoff: how many due batches per second the Dispatcher hands to workers whose run_batch
  does nothing (bench/burst_micro.py).
- overdue: client reply latency at --overdue-rate announces/s while --overdue-batches batches
  are past their due time.
"""

import argparse
import asyncio
import gc
import hashlib
import json
import os
import platform
import random
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path
from typing import Any
from urllib.parse import quote_from_bytes

import bencode2
from burst_client import HttpReplyError, RawHttpClient
from burst_measure import (
    SAMPLE_PERIOD_S,
    Sampler,
    bounded,
    coverage_by_kind,
    first_request_delays,
    histogram_quantiles,
    latency_summary,
    listen_overflows,
    pair_summary,
    upstream_outcomes,
)
from burst_micro import measure_batch_memory, run_handoff
from burst_reference import JobQueueReference
from burst_report import check_targets, print_burst, print_handoff, print_memory, print_overdue, print_targets
from burst_upstreams import DEAD, FAST, HANGING, LIMITED, SLOW, FakeUpstreams

from aggregator.config import ForwarderConfig, ListenAddress, Settings
from aggregator.log import configure_logging
from aggregator.service import Service

# Service.stop() gets this long (its drain_timeout_s here is 1 s) before the benchmark calls it hung.
STOP_LIMIT_S = 15.0
# The wait after the client phase ends early once every pair of these kinds was announced.
# Pairs of dead, rate-limiting and hanging trackers are reported, but the wait ignores them.
REPLYING_KINDS = (FAST, SLOW)
CLIENT_TIMEOUT_S = 30.0

DEFAULTS: dict[str, Any] = {
    "announces": 10_000,
    "seconds": 10.0,
    "infohashes": 2_000,
    "fast": 30,
    "slow": 15,
    "dead": 5,
    "limited": 0,
    "k": 100,
    "deadline": 60.0,
    "memory_batches": 1_000_000,
    "handoff_batches": 100_000,
    "handoff_rounds": 3,
    "overdue_batches": 50_000,
    "overdue_forwarders": 50,
    "overdue_rate": 2_000.0,
    "overdue_seconds": 5.0,
}
QUICK: dict[str, Any] = {
    "announces": 2_000,
    "seconds": 4.0,
    "infohashes": 400,
    "fast": 6,
    "slow": 3,
    "dead": 1,
    "deadline": 20.0,
    "memory_batches": 100_000,
    "handoff_batches": 20_000,
    "handoff_rounds": 1,
    "overdue_batches": 10_000,
    "overdue_forwarders": 10,
    "overdue_rate": 1_000.0,
    "overdue_seconds": 2.0,
}
PARTS = ("burst", "memory", "handoff", "overdue")


# --- Trace and clients --------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ClientAnnounce:
    """One announce of the trace."""

    at_s: float  # send time, in seconds after the start of the client phase
    info_hash: bytes
    query: str  # raw query string, every id byte percent-encoded


def infohash_list(count: int, label: str) -> list[bytes]:
    return [hashlib.sha1(f"burst-{label}-{n}".encode()).digest() for n in range(count)]


def build_trace(info_hashes: list[bytes], announces: int, seconds: float, seed: int) -> list[ClientAnnounce]:
    """Spread `announces` over the infohashes round-robin, shuffle them, and space them evenly over `seconds`.

    Announce n goes to infohash n mod len(info_hashes), as its (n div len)-th peer, so every
    infohash gets announces from different peers (peer_id and port differ).
    """
    slots = [(n % len(info_hashes), n // len(info_hashes)) for n in range(announces)]
    random.Random(seed).shuffle(slots)
    spacing_s = seconds / announces

    trace = []
    for position, (hash_index, peer_number) in enumerate(slots):
        info_hash = info_hashes[hash_index]
        peer_id = b"-BU0001-" + hash_index.to_bytes(8, "big") + peer_number.to_bytes(4, "big")
        port = 1024 + (hash_index * 97 + peer_number) % 64_000
        query = (
            f"info_hash={quote_from_bytes(info_hash, safe='')}&peer_id={quote_from_bytes(peer_id, safe='')}"
            f"&port={port}&uploaded=0&downloaded=0&left=1000&compact=1&event=started"
        )
        trace.append(ClientAnnounce(position * spacing_s, info_hash, query))

    return trace


@dataclass
class ClientResults:
    """Replies and timings of one client phase."""

    start_s: float  # time.monotonic() at offset 0 of the trace
    latencies_s: list[float] = field(default_factory=list)
    intervals: Counter[int] = field(default_factory=Counter)  # `interval` of the replies
    failure_replies: int = 0  # bencoded `failure reason`
    errors: Counter[str] = field(default_factory=Counter)  # HTTP status or exception name
    max_send_lag_s: float = 0.0  # how late the generator sent its most delayed request
    wall_s: float = 0.0  # from the first scheduled send to the last reply
    cpu_s: float = 0.0  # CPU time of the whole process meanwhile: service, trackers and clients
    connections: int = 0  # client connections opened
    listen_overflows: int | None = None  # connections the kernel dropped meanwhile (see listen_overflows)


async def drive_clients(
    host: str, port: int, trace: list[ClientAnnounce], connections: int, keep_alive: bool = True
) -> ClientResults:
    """Send the trace open-loop to http://host:port/announce, each announce at its own time, and wait for every reply.

    Latency runs from the scheduled send time to the end of the reply, so a stalled event
    loop shows as latency even though the stalled loop also delays the send.
    """
    client = RawHttpClient(host, port, connections, keep_alive)
    loop = asyncio.get_running_loop()
    results = ClientResults(start_s=time.monotonic() + 0.05)
    cpu_started_s = time.process_time()
    overflows_before = listen_overflows()

    async def send(item: ClientAnnounce, due_s: float) -> None:
        try:
            async with asyncio.timeout(CLIENT_TIMEOUT_S):
                status, body = await client.get(f"/announce?{item.query}")
        except (HttpReplyError, OSError, TimeoutError) as error:
            results.errors[type(error).__name__] += 1
            return

        results.latencies_s.append(time.monotonic() - due_s)
        if status != 200:
            results.errors[f"http_{status}"] += 1
            return

        reply = bencode2.bdecode(body)
        if b"failure reason" in reply:
            results.failure_replies += 1
        results.intervals[reply.get(b"interval", -1)] += 1

    tasks = []
    for item in trace:
        due_s = results.start_s + item.at_s
        delay_s = due_s - time.monotonic()
        if delay_s > 0:
            await asyncio.sleep(delay_s)
        results.max_send_lag_s = max(results.max_send_lag_s, time.monotonic() - due_s)
        tasks.append(loop.create_task(send(item, due_s)))
    await asyncio.gather(*tasks)
    await client.close()

    results.wall_s = time.monotonic() - results.start_s
    results.cpu_s = time.process_time() - cpu_started_s
    results.connections = client.connections_opened
    overflows_after = listen_overflows()
    if overflows_before is not None and overflows_after is not None:
        results.listen_overflows = overflows_after - overflows_before

    return results


def first_sight_s(trace: list[ClientAnnounce], start_s: float) -> dict[bytes, float]:
    """Return the time.monotonic() at which each infohash was first announced by a client."""
    first: dict[bytes, float] = {}
    for item in trace:
        first.setdefault(item.info_hash, start_s + item.at_s)

    return first


# --- Burst: the aggregator ----------------------------------------------------------


def forwarder_configs(upstreams: FakeUpstreams) -> tuple[ForwarderConfig, ...]:
    """Name forwarder i "f<i>-<kind>", which upstream_outcomes reads back."""
    return tuple(
        ForwarderConfig(uri=url, name=f"f{index}-{upstreams.kinds[index]}", ip=None, host=None)
        for index, url in enumerate(upstreams.announce_urls)
    )


def burst_settings(upstreams: FakeUpstreams, first_wait_ms: int) -> Settings:
    """Return the default settings with port 0, no admin listener, the given first-announce wait and a 1 s drain."""
    return Settings(
        listen=(ListenAddress("127.0.0.1", 0),),
        forwarders=forwarder_configs(upstreams),
        first_announce_wait_ms=first_wait_ms,
        admin_listen=None,
        drain_timeout_s=1.0,
    )


def service_probe(service: Service) -> Callable[[], dict[str, float]]:
    """Return a function that reads the service's scheduling state for the Sampler."""

    def probe() -> dict[str, float]:
        dispatcher = service.dispatcher
        return {
            "batches": service.table.batch_count,
            "ready": service.count_ready(time.monotonic()),
            "waiting_for_slot": sum(len(health.waiting) for health in service.registry.forwarders),
            "busy_workers": dispatcher.busy_workers if dispatcher is not None else 0,
            "workers": dispatcher.target_workers if dispatcher is not None else 0,
            "pressure": service.overload.pressure,
            "throttling": float(service.overload.throttling),
        }

    return probe


def batch_whereabouts(service: Service, kinds: list[str]) -> dict[str, Any]:
    """Count where the live batches are: in the due-time index, in flight, or waiting for a forwarder slot.

    A live batch in none of these places is lost: nothing would ever announce it again. A few
    batches may be counted so while the dispatcher has handed them to a task that has not
    started yet; `busy_workers` bounds that number.
    """
    waiting = {id(batch) for health in service.registry.forwarders for batch in health.waiting}
    places: Counter[str] = Counter()
    waiting_by_kind: Counter[str] = Counter()
    for torrent in service.table.torrents():
        for batch in torrent.batches:
            if batch.retired:
                continue
            if id(batch) in waiting:
                places["waiting_for_slot"] += 1
                waiting_by_kind[kinds[batch.forwarder_index]] += 1
            elif batch.in_index:
                places["in_index"] += 1
            elif batch.in_flight:
                places["in_flight"] += 1
            else:
                places["nowhere"] += 1

    busy = service.dispatcher.busy_workers if service.dispatcher is not None else 0

    return {**places, "busy_workers": busy, "waiting_by_kind": dict(waiting_by_kind)}


def admitted_pairs(service: Service) -> set[tuple[int, bytes]]:
    """Return the (forwarder index, infohash) pairs that have a live batch."""
    return {
        (batch.forwarder_index, torrent.info_hash)
        for torrent in service.table.torrents()
        for batch in torrent.batches
        if not batch.retired
    }


async def wait_for_pairs(
    pairs: Iterable[tuple[int, bytes]], upstreams: FakeUpstreams, deadline_s: float, idle: Callable[[], bool]
) -> None:
    """Wait until every pair of a replying kind was requested once, `idle()` holds, or deadline_s passes."""
    waiting_for = {pair for pair in pairs if upstreams.kinds[pair[0]] in REPLYING_KINDS}
    while time.monotonic() < deadline_s:
        waiting_for -= upstreams.counts.first_seen_s.keys()
        if not waiting_for or idle():
            return
        await asyncio.sleep(SAMPLE_PERIOD_S)


async def run_aggregator_burst(
    args: argparse.Namespace, upstreams: FakeUpstreams, trace: list[ClientAnnounce]
) -> dict[str, Any]:
    """Send the trace to a fresh Service, wait for the upstream announces, and return the figures."""
    collect_garbage()
    service = Service(burst_settings(upstreams, args.first_wait_ms))
    await service.start()
    sampler = Sampler(service_probe(service))
    sampler.start()
    freeze_heap(args.gc_freeze)
    try:
        host, port = service.bound[0]
        clients = await drive_clients(host, port, trace, args.connections, not args.connection_per_announce)
        client_end_s = time.monotonic()
        tracked_objects = len(gc.get_objects())
        pairs = admitted_pairs(service)
        # The service is never idle: failed and deferred batches stay scheduled.
        await wait_for_pairs(pairs, upstreams, client_end_s + args.deadline, lambda: False)
        waited_s = time.monotonic() - client_end_s
        await sampler.stop()

        counts = upstreams.counts
        worker = service.worker
        result = {
            "clients": client_summary(clients),
            "upstream": pair_summary(counts),
            "upstream_attempts_by_kind": upstream_outcomes(service, upstreams.kinds),
            "upstream_succeeded": worker.succeeded,
            "upstream_failed": worker.failed,
            "admitted_pairs": len(pairs),
            "coverage": coverage_by_kind(pairs, upstreams.kinds, counts, clients.start_s),
            "first_request_delay": first_request_delays(counts, upstreams.kinds, first_sight_s(trace, clients.start_s)),
            "waited_after_clients_s": round(waited_s, 2),
            "peak_batches": sampler.peak("batches"),
            "peak_ready_backlog": sampler.peak("ready"),
            "peak_waiting_for_slot": sampler.peak("waiting_for_slot"),
            "final_waiting_for_slot": sampler.samples[-1]["waiting_for_slot"] if sampler.samples else None,
            "peak_pressure": round(sampler.peak("pressure"), 3),
            "peak_workers": sampler.peak("workers"),
            "peak_busy_workers": sampler.peak("busy_workers"),
            "throttled_samples": sum(1 for sample in sampler.samples if sample["throttling"]),
            "samples": len(sampler.samples),
            "max_loop_stall_ms": round(sampler.max_stall_s * 1000, 1),
            "loop_stalls_over_10ms": sampler.stalls_over_10ms,
            "gc": sampler.gc_pauses.summary(),
            "flush_lag": histogram_quantiles(service, "aggregator_flush_lag_seconds", (0.5, 0.99)),
            "admission": {decision.value: number for decision, number in service.tracker.admission_counts.items()},
            "throttled_batches": service.registry.throttled,
            "deferred_batches": service.registry.deferred,
            "refused_pairs": service.table.refused_pairs,
            "coalesced_announces": service.tracker.coalesced,
            "forwarder_states": dict(
                Counter(
                    f"{upstreams.kinds[health.index]} {health.state.value}" for health in service.registry.forwarders
                )
            ),
            "batches_at_end": batch_whereabouts(service, upstreams.kinds),
            "repeats_after_success_by_kind": kind_counts(counts.repeats_by_forwarder, upstreams.kinds),
            "gc_tracked_objects_after_clients": tracked_objects,
            "timeline": timeline(sampler.samples),
        }
    finally:
        gc.unfreeze()
        await sampler.stop()
        stop = await stop_service(service)

    result["service_stop"] = stop
    return result


async def stop_service(service: Service) -> dict[str, Any]:
    """Stop the service and return how long that took and whether it hung.

    Service.stop() waits for the dispatcher task to end after cancelling it. On Python 3.11
    the dispatcher can lose that cancellation in asyncio.wait_for (CPython issue gh-86296)
    and keep dispatching, so stop() never returns. Past STOP_LIMIT_S, the dispatcher task is
    cancelled again until stop() returns, and the result records the hang.
    """
    started_s = time.monotonic()
    stopping = asyncio.ensure_future(service.stop())
    done, _ = await asyncio.wait({stopping}, timeout=STOP_LIMIT_S)
    extra_cancels = 0
    while not done and extra_cancels < 10:
        dispatcher = service.dispatcher
        task = getattr(dispatcher, "_dispatcher_task", None)
        if task is not None:
            task.cancel()
        extra_cancels += 1
        done, _ = await asyncio.wait({stopping}, timeout=5.0)
    if not done:
        raise TimeoutError(f"Service.stop() did not return after {extra_cancels} extra cancels of the dispatcher")

    stopping.result()
    return {"stop_s": round(time.monotonic() - started_s, 2), "hung": extra_cancels > 0, "extra_cancels": extra_cancels}


def collect_garbage() -> None:
    """Run a full collection before a phase, so the garbage of the previous phase is not freed during this one.

    A stopped service leaves thousands of Batch <-> TorrentBatches cycles that only the cyclic
    collector frees, and freeing them takes as long as a collection of live batches.
    """
    gc.collect()


def freeze_heap(enabled: bool) -> None:
    """With --gc-freeze, move every object that exists now out of the collector's reach.

    gc.freeze() keeps later collections from visiting the objects built before the client
    phase (the service, its batches, the trace), which shows how much of a latency figure is
    garbage collection.
    """
    if enabled:
        gc.collect()
        gc.freeze()


def kind_counts(per_forwarder: Counter[int], kinds: list[str]) -> dict[str, int]:
    """Sum counts per forwarder index into counts per tracker kind."""
    by_kind: Counter[str] = Counter()
    for index, number in per_forwarder.items():
        by_kind[kinds[index]] += number

    return dict(by_kind)


def client_summary(clients: ClientResults) -> dict[str, Any]:
    """Return the JSON figures of one client phase."""
    return {
        "replies": len(clients.latencies_s),
        "latency": latency_summary(clients.latencies_s),
        "failure_replies": clients.failure_replies,
        "errors": dict(clients.errors),
        "reply_intervals": {str(interval): number for interval, number in sorted(clients.intervals.items())},
        "max_send_lag_ms": round(clients.max_send_lag_s * 1000, 1),
        "process_cpu_share": round(clients.cpu_s / clients.wall_s, 3) if clients.wall_s else None,
        "connections": clients.connections,
        "listen_overflows": clients.listen_overflows,
    }


def timeline(samples: list[dict[str, float]]) -> list[dict[str, float]]:
    """Return one sample per second, for the JSON output."""
    per_second: list[dict[str, float]] = []
    for sample in samples:
        if not per_second or sample["t_s"] - per_second[-1]["t_s"] >= 1.0:
            per_second.append({key: round(value, 3) for key, value in sample.items()})

    return per_second


# --- Burst: the reference model ------------------------------------------------------


async def run_reference_burst(
    args: argparse.Namespace, upstreams: FakeUpstreams, trace: list[ClientAnnounce]
) -> dict[str, Any]:
    """Send the trace to the job-queue reference model, let its workers run, and return the figures."""
    collect_garbage()
    defaults = Settings()
    reference = JobQueueReference(
        upstreams.announce_urls,
        workers=args.reference_workers,
        capacity=args.reference_capacity,
        timeout_s=defaults.upstream_timeout_s,
        connect_timeout_s=defaults.upstream_connect_timeout_s,
    )
    await reference.start()
    sampler = Sampler(lambda: {"queue": reference.queue_length})
    sampler.start()
    freeze_heap(args.gc_freeze)
    try:
        clients = await drive_clients(
            "127.0.0.1", reference.port, trace, args.connections, not args.connection_per_announce
        )
        client_end_s = time.monotonic()
        tracked_objects = len(gc.get_objects())
        offered = {(index, item.info_hash) for item in trace for index in range(len(upstreams.kinds))}
        # Once its queue is empty and its workers are idle, the reference sends nothing more.
        await wait_for_pairs(offered, upstreams, client_end_s + args.deadline, lambda: reference.idle)
        waited_s = time.monotonic() - client_end_s
        await sampler.stop()

        stats = reference.stats
        counts = upstreams.counts
        elapsed_s = (stats.last_job_s or client_end_s) - (stats.first_job_s or client_end_s)
        rate_per_s = stats.executed / elapsed_s if elapsed_s > 0 else None
        remaining = reference.queue_length
        return {
            "clients": client_summary(clients),
            "upstream": pair_summary(counts),
            "jobs": {
                "offered": stats.offered,
                "queued": stats.queued,
                "dropped": stats.dropped,
                "suppressed_duplicates": stats.suppressed,
                "executed": stats.executed,
                "left_in_queue": remaining,
                "outcomes": dict(stats.outcomes),
                "executed_per_s": None if rate_per_s is None else round(rate_per_s, 1),
                # An estimate: the queue left at the deadline divided by the rate measured so far.
                "estimated_drain_s": round(remaining / rate_per_s, 1) if remaining and rate_per_s else 0.0,
            },
            "offered_pairs": len(offered),
            "coverage": coverage_by_kind(offered, upstreams.kinds, counts, clients.start_s),
            "first_request_delay": first_request_delays(counts, upstreams.kinds, first_sight_s(trace, clients.start_s)),
            "waited_after_clients_s": round(waited_s, 2),
            "peak_queue": max(stats.peak_queue, int(sampler.peak("queue"))),
            "gc_tracked_objects_after_clients": tracked_objects,
            "max_loop_stall_ms": round(sampler.max_stall_s * 1000, 1),
            "loop_stalls_over_10ms": sampler.stalls_over_10ms,
            "gc": sampler.gc_pauses.summary(),
        }
    finally:
        gc.unfreeze()
        await sampler.stop()
        await reference.stop()


async def run_burst(args: argparse.Namespace) -> dict[str, Any]:
    """Run the same trace against the aggregator, then against the reference model, on the same trackers."""
    kinds = [FAST] * args.fast + [SLOW] * args.slow + [DEAD] * args.dead + [LIMITED] * args.limited
    upstreams = FakeUpstreams(kinds, args.k)
    await upstreams.start()
    trace = build_trace(infohash_list(args.infohashes, "burst"), args.announces, args.seconds, args.seed)
    # Bound on each phase: the client phase, the wait, and time to stop, with a wide margin.
    limit_s = args.seconds + args.deadline + 60.0
    try:
        aggregator = await bounded(run_aggregator_burst(args, upstreams, trace), limit_s, "aggregator burst")
        # Let late replies of slow trackers to the stopped service finish before counting anew.
        await asyncio.sleep(2.5)
        upstreams.new_phase()
        reference = await bounded(run_reference_burst(args, upstreams, trace), limit_s, "reference burst")
    finally:
        await upstreams.stop()

    return {"forwarder_kinds": dict(Counter(kinds)), "aggregator": aggregator, "reference": reference}


# --- Overdue backlog and client latency ---------------------------------------------


async def run_overdue(args: argparse.Namespace) -> dict[str, Any]:
    """Open --overdue-batches batches due 60 s ago, then send clients at --overdue-rate announces/s."""
    results = {}
    for kind in (HANGING, FAST):
        for keep_alive in (True, False):
            label = f"{kind}, {'keep-alive' if keep_alive else 'connection per announce'}"
            upstreams = FakeUpstreams([kind] * args.overdue_forwarders, args.k)
            await upstreams.start()
            try:
                limit_s = args.overdue_seconds + 60.0
                overdue = _overdue_with(args, upstreams, keep_alive)
                results[label] = await bounded(overdue, limit_s, f"overdue test ({label})")
            finally:
                await upstreams.stop()

    return results


async def _overdue_with(args: argparse.Namespace, upstreams: FakeUpstreams, keep_alive: bool) -> dict[str, Any]:
    """Open the overdue batches directly in the batch table of a fresh Service, then measure the clients."""
    collect_garbage()
    service = Service(burst_settings(upstreams, first_wait_ms=0))
    await service.start()
    sampler = Sampler(service_probe(service))
    try:
        info_hashes = infohash_list(max(args.overdue_batches // args.overdue_forwarders, 1), "overdue")
        past_s = time.monotonic() - 60.0
        for info_hash in info_hashes:
            service.table.open(info_hash, past_s)
        ready_at_start = service.count_ready(time.monotonic())

        announces = int(args.overdue_rate * args.overdue_seconds)
        trace = build_trace(info_hashes, announces, args.overdue_seconds, args.seed)
        freeze_heap(args.gc_freeze)
        sampler.start()
        host, port = service.bound[0]
        clients = await drive_clients(host, port, trace, args.connections, keep_alive)
        tracked_objects = len(gc.get_objects())
        await sampler.stop()

        result = {
            "tracker_kind": upstreams.kinds[0],
            "client_keep_alive": keep_alive,
            "gc_tracked_objects_after_clients": tracked_objects,
            "forwarders": len(upstreams.kinds),
            "overdue_at_start": ready_at_start,
            "min_ready_backlog_during_load": sampler.low("ready"),
            "peak_workers": sampler.peak("workers"),
            "throttled_samples": sum(1 for sample in sampler.samples if sample["throttling"]),
            "announces": announces,
            "rate_per_s": args.overdue_rate,
            "clients": client_summary(clients),
            "upstream_requests": upstreams.counts.total,
            "throttled_batches": service.registry.throttled,
            "max_loop_stall_ms": round(sampler.max_stall_s * 1000, 1),
            "loop_stalls_over_10ms": sampler.stalls_over_10ms,
            "gc": sampler.gc_pauses.summary(),
        }
    finally:
        gc.unfreeze()
        await sampler.stop()
        stop = await stop_service(service)

    result["service_stop"] = stop
    return result


# --- Command line -------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--quick", action="store_true", help="smoke-run preset: 2,000 announces over 4 s, 10 forwarders"
    )
    parser.add_argument(
        "--announces", type=int, help=f"client announces in the burst (default {DEFAULTS['announces']:,})"
    )
    parser.add_argument(
        "--seconds", type=float, help=f"length of the client phase in seconds (default {DEFAULTS['seconds']})"
    )
    parser.add_argument(
        "--infohashes", type=int, help=f"distinct infohashes in the burst (default {DEFAULTS['infohashes']:,})"
    )
    parser.add_argument("--fast", type=int, help=f"trackers replying after 20 ms (default {DEFAULTS['fast']})")
    parser.add_argument("--slow", type=int, help=f"trackers replying after 2 s (default {DEFAULTS['slow']})")
    parser.add_argument("--dead", type=int, help=f"trackers on a closed port (default {DEFAULTS['dead']})")
    parser.add_argument("--limited", type=int, help="trackers replying HTTP 429 after K requests (default 0)")
    parser.add_argument(
        "--k", type=int, help=f"requests a --limited tracker serves before HTTP 429 (default {DEFAULTS['k']})"
    )
    parser.add_argument(
        "--deadline", type=float, help="seconds to wait after the client phase for every pair (default 60)"
    )
    parser.add_argument(
        "--first-wait-ms", type=int, default=0, help="first_announce_wait_ms of the service (default 0)"
    )
    parser.add_argument(
        "--connections", type=int, default=256, help="most keep-alive client connections to the tracker (default 256)"
    )
    parser.add_argument("--reference-workers", type=int, default=16, help="workers of the reference model (default 16)")
    parser.add_argument("--reference-capacity", type=int, default=10_000, help="FIFO slots of the reference model")
    parser.add_argument("--memory-batches", type=int, help="batches opened for the memory figure (default 1,000,000)")
    parser.add_argument(
        "--memory-forwarders",
        type=int,
        nargs="+",
        default=[50, 5],
        help="forwarders per infohash in the memory measurement, one table each (default 50 5)",
    )
    parser.add_argument("--handoff-batches", type=int, help="due batches in the hand-off benchmark (default 100,000)")
    parser.add_argument("--handoff-rounds", type=int, help="rounds per hand-off configuration (default 3)")
    parser.add_argument("--overdue-batches", type=int, help="overdue batches opened first (default 50,000)")
    parser.add_argument("--overdue-forwarders", type=int, help="forwarders that the overdue batches go to (default 50)")
    parser.add_argument("--overdue-rate", type=float, help="client announces/s during the overdue test (default 2,000)")
    parser.add_argument("--overdue-seconds", type=float, help="length of the overdue client phase (default 5)")
    parser.add_argument(
        "--parts", default=",".join(PARTS), help=f"comma-separated parts to run (default {','.join(PARTS)})"
    )
    parser.add_argument(
        "--connection-per-announce",
        action="store_true",
        help="burst clients open a new connection for each announce instead of keep-alive connections",
    )
    parser.add_argument(
        "--gc-freeze",
        action="store_true",
        help="call gc.freeze() after the setup of each phase, so collections skip the objects built before it",
    )
    parser.add_argument("--seed", type=int, default=1, help="seed of the trace order (default 1)")
    parser.add_argument("--loop", choices=("uvloop", "asyncio"), default="uvloop", help="event loop (default uvloop)")
    parser.add_argument(
        "--log-level",
        choices=("debug", "info", "warning", "error"),
        default="error",
        help="log level of the service, whose JSON log lines go to stdout (default error)",
    )
    parser.add_argument("--json", type=Path, help="also write every figure to this JSON file")
    args = parser.parse_args(argv)

    preset = {**DEFAULTS, **(QUICK if args.quick else {})}
    for name, value in preset.items():
        if getattr(args, name) is None:
            setattr(args, name, value)

    parts = [part for part in args.parts.split(",") if part]
    unknown = sorted(set(parts) - set(PARTS))
    if unknown:
        parser.error(f"unknown --parts {unknown}, expected some of {', '.join(PARTS)}")
    args.parts = parts

    return args


async def run_async_parts(args: argparse.Namespace, report: dict[str, Any]) -> None:
    if "handoff" in args.parts:
        report["handoff"] = await run_handoff(args.handoff_batches, args.handoff_rounds)
        print_handoff(report["handoff"])
    if "burst" in args.parts:
        report["burst"] = await run_burst(args)
        print_burst(report["burst"])
    if "overdue" in args.parts:
        report["overdue"] = await run_overdue(args)
        print_overdue(report["overdue"])


def aggregator_version() -> str:
    """Return the git commit of the repository, with "+dirty" when aggregator/ has uncommitted changes."""
    repository = Path(__file__).resolve().parents[1]
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=repository, capture_output=True, text=True, check=True
        ).stdout.strip()
        changes = subprocess.run(
            ["git", "status", "--porcelain", "aggregator"], cwd=repository, capture_output=True, text=True, check=True
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"

    return commit + ("+dirty" if changes else "")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    configure_logging(args.log_level)
    report: dict[str, Any] = {
        "date": date.today().isoformat(),
        "python": platform.python_version(),
        "loop": args.loop,
        "command": " ".join(sys.argv),
        "load_average_at_start": os.getloadavg(),
        "aggregator_version": aggregator_version(),
        "http_server": getattr(Settings(), "http_server", "aiohttp"),
        "settings": {name: value for name, value in vars(args).items() if name not in ("json",)},
    }

    print(
        f"aggregator {report['aggregator_version']}, client port server {report['http_server']}, "
        f"{args.loop} loop, Python {report['python']}, load average {report['load_average_at_start'][0]:.2f}"
    )
    if "memory" in args.parts:
        report["memory"] = [measure_batch_memory(args.memory_batches, count) for count in args.memory_forwarders]
        print_memory(report["memory"])

    if args.loop == "uvloop":
        try:
            import uvloop
        except ImportError:
            sys.exit("uvloop is not installed: pip install uvloop, or run with --loop asyncio")

        uvloop.run(run_async_parts(args, report))
    else:
        asyncio.run(run_async_parts(args, report))

    report["targets"] = check_targets(report)
    print_targets(report["targets"])

    if args.json is not None:
        args.json.write_text(json.dumps(report, indent=2, default=str) + "\n")
        print(f"\nwrote {args.json}")

    return 0


if __name__ == "__main__":
    sys.exit(main())
