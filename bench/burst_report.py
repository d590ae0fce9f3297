"""The printed tables of bench/burst.py and the check of its figures against the design targets."""

from typing import Any


def thousands(value: float | None, digits: int = 0) -> str:
    if value is None:
        return "-"

    return f"{value:,.{digits}f}"


def ratio(numerator: float | None, denominator: float | None) -> str:
    if numerator is None or not denominator:
        return "-"

    return f"{numerator / denominator:.3g}x"


def print_burst(burst: dict[str, Any]) -> None:
    agg = burst["aggregator"]
    ref = burst["reference"]
    agg_attempts = sum(sum(outcomes.values()) for outcomes in agg["upstream_attempts_by_kind"].values())
    rows: list[tuple[str, float | None, float | None, int]] = [
        ("client replies", agg["clients"]["replies"], ref["clients"]["replies"], 0),
        ("client reply p50 ms", agg["clients"]["latency"]["p50_ms"], ref["clients"]["latency"]["p50_ms"], 2),
        ("client reply p99 ms", agg["clients"]["latency"]["p99_ms"], ref["clients"]["latency"]["p99_ms"], 2),
        ("client reply max ms", agg["clients"]["latency"]["max_ms"], ref["clients"]["latency"]["max_ms"], 2),
        ("upstream requests received", agg["upstream"]["requests"], ref["upstream"]["requests"], 0),
        ("upstream attempts (incl. refused)", agg_attempts, ref["jobs"]["executed"], 0),
        ("requests needed for the trace", agg["admitted_pairs"], ref["jobs"]["offered"], 0),
        ("pairs requested at least once", agg["upstream"]["pairs"], ref["upstream"]["pairs"], 0),
        ("requests per requested pair, mean", agg["upstream"]["per_pair_mean"], ref["upstream"]["per_pair_mean"], 3),
        ("requests per requested pair, max", agg["upstream"]["per_pair_max"], ref["upstream"]["per_pair_max"], 0),
        ("retries (repeat before a success)", agg["upstream"]["retries"], ref["upstream"]["retries"], 0),
        (
            "repeats after a success",
            agg["upstream"]["repeats_after_success"],
            ref["upstream"]["repeats_after_success"],
            0,
        ),
        (
            "replies after the client left",
            agg["upstream"]["replies_after_client_left"],
            ref["upstream"]["replies_after_client_left"],
            0,
        ),
        ("peak batches / peak queue", agg["peak_batches"], ref["peak_queue"], 0),
        ("peak ready backlog / peak queue", agg["peak_ready_backlog"], ref["peak_queue"], 0),
        (
            "max concurrent requests at trackers",
            agg["upstream"]["max_concurrent_at_trackers"],
            ref["upstream"]["max_concurrent_at_trackers"],
            0,
        ),
        ("max event-loop stall ms", agg["max_loop_stall_ms"], ref["max_loop_stall_ms"], 1),
        ("max gen-2 GC pause ms", agg["gc"]["gen2"]["max_ms"], ref["gc"]["gen2"]["max_ms"], 1),
    ]
    print(f"\nBurst: forwarders {burst['forwarder_kinds']}")
    print(f"{'':38} {'aggregator':>12} {'reference':>12} {'ratio':>9}")
    for label, agg_value, ref_value, digits in rows:
        print(
            f"{label:38} {thousands(agg_value, digits):>12} {thousands(ref_value, digits):>12} {ratio(agg_value, ref_value):>9}"
        )

    print(
        "\nPairs announced at least once, by tracker kind, out of the admitted pairs (aggregator) or the pairs"
        " in the trace (reference); times count from the first client announce:"
    )
    for name, result in (("aggregator", agg), ("reference", ref)):
        for kind, cover in result["coverage"].items():
            after = cover["all_announced_after_s"]
            when = f"all after {after} s" if after is not None else "not all"
            delay = result["first_request_delay"].get(kind)
            delay_text = f", first request p50 {delay['p50_s']} s p99 {delay['p99_s']} s" if delay else ""
            print(f"  {name:10} {kind:8} {cover['announced']:>7,} of {cover['pairs']:>7,} ({when}){delay_text}")
    print(
        f"  waited after the client phase: aggregator {agg['waited_after_clients_s']} s, "
        f"reference {ref['waited_after_clients_s']} s"
    )

    print("\nAggregator overload counters:")
    print(
        f"  admission {agg['admission']}, refused pairs {agg['refused_pairs']}, "
        f"throttled batches {agg['throttled_batches']}, deferred batches {agg['deferred_batches']}"
    )
    print(
        f"  flush lag {agg['flush_lag']}, peak pressure {agg['peak_pressure']}, "
        f"peak workers {agg['peak_workers']}, peak busy workers {agg['peak_busy_workers']}"
    )
    print(
        f"  throttling in {agg['throttled_samples']} of {agg['samples']} samples, "
        f"waiting for a forwarder slot: peak {agg['peak_waiting_for_slot']}, at the end {agg['final_waiting_for_slot']}"
    )
    print(f"  upstream attempts by kind and outcome {agg['upstream_attempts_by_kind']}")
    print(f"  live batches at the end {agg['batches_at_end']}")
    print(
        f"  repeats after a success by kind {agg['repeats_after_success_by_kind']}, GC-tracked objects after "
        f"the client phase: aggregator {agg['gc_tracked_objects_after_clients']:,}, "
        f"reference {ref['gc_tracked_objects_after_clients']:,}"
    )
    print(
        f"  forwarder states at the end {agg['forwarder_states']}, client reply intervals {agg['clients']['reply_intervals']}"
    )
    print(f"  Service.stop() {agg['service_stop']}")
    print("\nReference jobs:", ref["jobs"])


def print_memory(rows: list[dict[str, Any]]) -> None:
    print("\nMemory per batch (tracemalloc, fresh BatchTable + DueIndex):")
    for row in rows:
        print(
            f"  {row['batches']:>9,} batches over {row['forwarders']} forwarders: "
            f"{row['bytes_per_batch']} bytes per batch (Batch object alone {row['batch_object_bytes']} bytes), "
            f"one full GC run {row['full_gc_ms']} ms"
        )


def print_handoff(rows: list[dict[str, Any]]) -> None:
    print("\nDispatcher hand-off, no-op run_batch:")
    for row in rows:
        admission = "with forwarder admission" if row["forwarder_admission"] else "bare"
        print(
            f"  {row['workers']:>3} workers, {admission:25} median {row['median_per_s']:>9,} batches/s "
            f"(rounds {row['rounds_per_s']})"
        )


def print_overdue(results: dict[str, dict[str, Any]]) -> None:
    print("\nClient latency while batches are overdue:")
    for label, result in results.items():
        latency = result["clients"]["latency"]
        print(
            f"  {label}: {result['forwarders']} forwarders, {result['overdue_at_start']:,} overdue at start "
            f"(lowest during load {result['min_ready_backlog_during_load']:,.0f}), "
            f"{result['rate_per_s']:,.0f} announces/s: p50 {latency['p50_ms']} ms, p99 {latency['p99_ms']} ms, "
            f"max {latency['max_ms']} ms, loop stall max {result['max_loop_stall_ms']} ms, "
            f"gen-2 GC pause max {result['gc']['gen2']['max_ms']} ms, "
            f"listen overflows {result['clients']['listen_overflows']}, "
            f"upstream requests {result['upstream_requests']:,}, throttled batches {result['throttled_batches']:,}, "
            f"stop hung: {result['service_stop']['hung']}"
        )


def check_targets(report: dict[str, Any]) -> list[dict[str, Any]]:
    """Compare the measured figures with the targets of the burst design, one row per target."""
    targets = []
    burst = report.get("burst")
    if burst is not None:
        agg = burst["aggregator"]["upstream"]
        targets.append(
            {
                "target": "upstream requests per pair per interval <= 1.0, plus retries",
                "measured": f"{agg['repeats_after_success']} repeats after a success, "
                f"{agg['retries']} retries, max {agg['per_pair_max']} per pair",
                "met": agg["repeats_after_success"] == 0,
            }
        )
        needed = burst["aggregator"]["admitted_pairs"] / burst["reference"]["jobs"]["offered"]
        sent = agg["requests"] / max(burst["reference"]["upstream"]["requests"], 1)
        targets.append(
            {
                "target": ">= 10x fewer upstream requests than the reference",
                "measured": f"requests needed {needed:.3f}x, requests sent within the run {sent:.3g}x",
                "met": needed <= 0.1,
            }
        )

    memory = report.get("memory")
    if memory:
        worst = max(row["bytes_per_batch"] for row in memory)
        targets.append(
            {
                "target": "<= 200 bytes per batch",
                "measured": f"{worst} bytes (worst forwarder count)",
                "met": worst <= 200,
            }
        )

    handoff = report.get("handoff")
    if handoff:
        slowest = min(row["median_per_s"] for row in handoff)
        targets.append(
            {
                "target": "dispatcher hand-off >= 50,000 batches/s",
                "measured": f"{slowest:,} batches/s (slowest configuration)",
                "met": slowest >= 50_000,
            }
        )

    overdue = report.get("overdue")
    if overdue:
        for label, result in overdue.items():
            p99 = result["clients"]["latency"]["p99_ms"]
            targets.append(
                {
                    "target": f"client p99 < 20 ms at {result['rate_per_s']:,.0f}/s, "
                    f"{result['overdue_at_start']:,} overdue ({label})",
                    "measured": f"p99 {p99} ms",
                    "met": p99 is not None and p99 < 20,
                }
            )

    return targets


def print_targets(targets: list[dict[str, Any]]) -> None:
    print("\nTargets:")
    for row in targets:
        verdict = "met" if row["met"] else "MISSED"
        print(f"  {verdict:7} {row['target']}: {row['measured']}")
