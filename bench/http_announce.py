"""Measure HTTP announce throughput and latency of the aggregator against Debian's opentracker.

Run: python bench/http_announce.py [--rounds 3] [--duration 10] [--forwarders 1 50]
         [--http-servers fast aiohttp] [--floors]

Needs Debian's `wrk` and `opentracker` (apt-get install wrk opentracker); installs nothing.
Starts opentracker (whitelist of --pool infohashes), one instant fake upstream tracker
(bench/fake_upstream.py) and one aggregator per --forwarders count and --http-servers value
(the `http_server` setting), all on 127.0.0.1 and pinned to core 0. wrk runs on core 1 with
bench/announce.lua, which sends valid announces drawn from the infohash pool. Each swarm
contains at most --swarm-size peers, so after the warm-up every announce refreshes an existing
peer, as in steady state.

Two modes: "keepalive" reuses each of the --connections connections, and "close" sends
`Connection: close`, so every announce opens a new connection. Rounds alternate the order of
the servers. The table shows announces/s and latency percentiles per server, mode and round,
and the ratio aggregator / opentracker per round and as a median. --json writes every figure.
--floors adds two servers that return a fixed reply without tracker work (bench/http_floor.py),
which show how fast the HTTP layer alone can be. --profile-dir runs one extra wrk run per mode
and output format against the first aggregator under `py-spy record` (pip install py-spy),
outside the measured rounds.
"""

import argparse
import json
import resource
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from harness import (
    BENCH_DIR,
    LOAD_CORE,
    Aggregator,
    FakeUpstream,
    FloorServer,
    OpenTracker,
    ProfileRecorder,
    cpu_seconds,
    http_announce,
    infohash_pool,
    machine_summary,
    median,
    percent_encode,
    require_executable,
    rss_bytes,
    write_json,
)

LUA_SCRIPT = BENCH_DIR / "announce.lua"
MODES = ("keepalive", "close")


class Server:
    """A server under test: its label, HTTP port and pid (for CPU time)."""

    def __init__(self, label: str, port: int, pid: int) -> None:
        self.label = label
        self.port = port
        self.pid = pid


def run_wrk(server: Server, mode: str, args: argparse.Namespace, pool_file: Path, duration_s: float) -> dict[str, Any]:
    """Run wrk against `server` on the load core and return its counts, rates and CPU use."""
    wrk = require_executable("wrk", "wrk")
    argv = [
        "taskset", "-c", str(LOAD_CORE), wrk,
        f"-t{args.threads}", f"-c{args.connections}", f"-d{duration_s:g}s", "--timeout", "5s",
        "-s", str(LUA_SCRIPT), f"http://127.0.0.1:{server.port}/announce",
        "--", str(pool_file), str(args.swarm_size), mode,
    ]  # fmt: skip
    server_cpu_before = cpu_seconds(server.pid)
    children_before = resource.getrusage(resource.RUSAGE_CHILDREN)
    completed = subprocess.run(argv, capture_output=True, text=True, timeout=duration_s + 60, check=False)
    children_after = resource.getrusage(resource.RUSAGE_CHILDREN)
    server_cpu = cpu_seconds(server.pid) - server_cpu_before
    if completed.returncode != 0:
        sys.exit(f"wrk failed with exit code {completed.returncode}: {' '.join(argv)}\n{completed.stderr}")

    lines = [line for line in completed.stdout.splitlines() if line.startswith("RESULT ")]
    if not lines:
        sys.exit(f"wrk printed no RESULT line:\n{completed.stdout}\n{completed.stderr}")
    result: dict[str, Any] = json.loads(lines[-1].removeprefix("RESULT "))

    elapsed_s = result["duration_us"] / 1e6
    wrk_cpu = children_after.ru_utime + children_after.ru_stime - children_before.ru_utime - children_before.ru_stime
    result["announces_per_s"] = result["requests"] / elapsed_s
    result["server_cpu_share"] = server_cpu / elapsed_s
    result["wrk_cpu_share"] = wrk_cpu / elapsed_s
    result["errors"] = sum(result[key] for key in result if key.startswith("errors_"))

    return result


def check_replies(server: Server, pool: Sequence[bytes]) -> int:
    """Announce a few times with the script's request form; return the peer count of the last reply.

    Exits if a reply is a failure, so that a rejected request never counts as a fast one.
    """
    peers = 0
    for index, info_hash in enumerate(pool[:5]):
        peer_id = f"-BN0001-{index + 1:06d}{index:06d}".encode()
        reply = http_announce(server.port, info_hash, peer_id, 10000 + index, 12345)
        if b"failure reason" in reply:
            sys.exit(f"{server.label} rejected a benchmark announce: {reply[b'failure reason']!r}")
        peers = len(reply.get(b"peers", b"")) // 6

    return peers


def print_table(rounds: list[dict[str, Any]], labels: list[str]) -> None:
    print()
    print(f"{'mode':<10} {'round':>5} {'server':<16} {'announces/s':>12} {'p50 ms':>8} {'p99 ms':>8} "
          f"{'errors':>7} {'server CPU':>10} {'wrk CPU':>8} {'ratio':>6}")  # fmt: skip
    for mode in MODES:
        for entry in (entry for entry in rounds if entry["mode"] == mode):
            baseline = entry["results"]["opentracker"]["announces_per_s"]
            for label in labels:
                result = entry["results"][label]
                ratio = "" if label == "opentracker" else f"{result['announces_per_s'] / baseline:.2f}"
                print(
                    f"{mode:<10} {entry['round']:>5} {label:<16} {result['announces_per_s']:>12,.0f} "
                    f"{result['latency_p50_us'] / 1000:>8.2f} {result['latency_p99_us'] / 1000:>8.2f} "
                    f"{result['errors']:>7} {result['server_cpu_share']:>10.0%} {result['wrk_cpu_share']:>8.0%} "
                    f"{ratio:>6}"
                )


def summarize(rounds: list[dict[str, Any]], labels: list[str]) -> dict[str, Any]:
    """Return the medians over rounds of every server's figures and of the per-round ratios."""
    summary: dict[str, Any] = {}
    for mode in MODES:
        entries = [entry for entry in rounds if entry["mode"] == mode]
        if not entries:
            continue

        per_label: dict[str, Any] = {}
        for label in labels:
            results = [entry["results"][label] for entry in entries]
            per_label[label] = {
                "announces_per_s": median([r["announces_per_s"] for r in results]),
                "latency_p50_ms": median([r["latency_p50_us"] / 1000 for r in results]),
                "latency_p99_ms": median([r["latency_p99_us"] / 1000 for r in results]),
                "server_cpu_share": median([r["server_cpu_share"] for r in results]),
            }
            if label != "opentracker":
                ratios = [
                    entry["results"][label]["announces_per_s"] / entry["results"]["opentracker"]["announces_per_s"]
                    for entry in entries
                ]
                per_label[label]["ratio_per_round"] = ratios
                per_label[label]["ratio_median"] = median(ratios)
        summary[mode] = per_label

    return summary


def print_summary(summary: dict[str, Any], labels: list[str]) -> None:
    print()
    print(f"{'mode':<10} {'server':<16} {'median announces/s':>19} {'p50 ms':>8} {'p99 ms':>8} {'median ratio':>13}")
    for mode, per_label in summary.items():
        for label in labels:
            figures = per_label[label]
            ratio = f"{figures['ratio_median']:.2f}" if "ratio_median" in figures else ""
            print(
                f"{mode:<10} {label:<16} {figures['announces_per_s']:>19,.0f} {figures['latency_p50_ms']:>8.2f} "
                f"{figures['latency_p99_ms']:>8.2f} {ratio:>13}"
            )


def profile_aggregator(aggregator: Server, args: argparse.Namespace, pool_file: Path, modes: Sequence[str]) -> None:
    """Run wrk once per output format and mode while py-spy records the aggregator."""
    for mode in modes:
        for output_format, suffix in (("flamegraph", "svg"), ("raw", "txt")):
            native = "-native" if args.profile_native else ""
            output = args.profile_dir / f"http-{aggregator.label}-{mode}{native}.{suffix}"
            recorder = ProfileRecorder(aggregator.pid, output, output_format, args.duration, args.profile_native)
            result = run_wrk(aggregator, mode, args, pool_file, args.duration)
            recorder.wait()
            print(
                f"profile {mode} ({output_format}): {result['announces_per_s']:,.0f} announces/s "
                f"under py-spy, written to {output}"
            )


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3, help="measured rounds per mode")
    parser.add_argument("--duration", type=float, default=10.0, help="seconds of load per wrk run")
    parser.add_argument("--warmup", type=float, default=5.0, help="seconds of keep-alive load per server first")
    parser.add_argument("--connections", type=int, default=64, help="concurrent wrk connections")
    parser.add_argument("--threads", type=int, default=1, help="wrk threads, all on the load core")
    parser.add_argument("--pool", type=int, default=1000, help="infohashes in the pool")
    parser.add_argument("--swarm-size", type=int, default=100, help="distinct peers per infohash")
    parser.add_argument(
        "--forwarders", type=int, nargs="+", default=[1], help="one aggregator per count, e.g. --forwarders 1 50"
    )
    parser.add_argument(
        "--http-servers",
        nargs="+",
        choices=("fast", "aiohttp"),
        default=["fast"],
        help="the aggregator's `http_server` settings to run, one aggregator per value and forwarder count",
    )
    parser.add_argument("--modes", nargs="+", choices=MODES, default=list(MODES), help="connection modes to run")
    parser.add_argument(
        "--floors",
        action="store_true",
        help="also measure bench/http_floor.py (fixed reply on aiohttp, and on a bare asyncio.Protocol)",
    )
    parser.add_argument("--json", type=Path, help="write every figure to this JSON file")
    parser.add_argument(
        "--profile-dir", type=Path, help="also profile the first aggregator with py-spy, outside the rounds"
    )
    parser.add_argument(
        "--profile-native", action="store_true", help="let py-spy sample C frames too (much slower under load)"
    )
    parser.add_argument(
        "--upstream-timeout", type=float, default=120.0, help="seconds to wait for the first upstream announces"
    )

    return parser.parse_args()


def main() -> None:
    args = parse_args()
    require_executable("wrk", "wrk")
    require_executable("opentracker", "opentracker")
    pool = infohash_pool(args.pool)

    started: list[Any] = []
    with tempfile.TemporaryDirectory(prefix="bench-http-") as tmp:
        workdir = Path(tmp)
        pool_file = workdir / "pool.txt"
        pool_file.write_text("".join(percent_encode(info_hash) + "\n" for info_hash in pool))
        try:
            opentracker = OpenTracker(workdir / "opentracker", pool)
            started.append(opentracker)
            opentracker.wait_ready()
            upstream = FakeUpstream(workdir)
            started.append(upstream)

            servers = [Server("opentracker", opentracker.port, opentracker.process.pid)]
            for http_server in args.http_servers:
                for count in args.forwarders:
                    label = f"agg-{http_server}-f{count}"
                    aggregator = Aggregator(
                        workdir / label, upstream.forwarder_uris(count), extra_settings={"http_server": http_server}
                    )
                    started.append(aggregator)
                    servers.append(Server(label, aggregator.port, aggregator.pid))
            if args.floors:
                for kind in ("aiohttp", "protocol"):
                    floor = FloorServer(workdir, kind)
                    started.append(floor)
                    servers.append(Server(f"floor-{kind}", floor.port, floor.process.pid))
            labels = [server.label for server in servers]

            run(args, servers, labels, pool, pool_file, upstream)
        finally:
            for process in reversed(started):
                process.stop()


def run(
    args: argparse.Namespace,
    servers: list[Server],
    labels: list[str],
    pool: list[bytes],
    pool_file: Path,
    upstream: FakeUpstream,
) -> None:
    for server in servers:
        warmup = run_wrk(server, "keepalive", args, pool_file, args.warmup)
        print(f"warm-up {server.label}: {warmup['announces_per_s']:,.0f} announces/s, {warmup['errors']} errors")

    expected = len(pool) * sum(args.forwarders) * len(args.http_servers)
    count = upstream.wait_for_announces(expected, args.upstream_timeout)
    print(f"upstream announces before the rounds: {count:,} (expected {expected:,})")
    if count < expected:
        print("WARNING: the aggregators had not sent every first upstream announce; results include that work")
    for server in servers:
        print(f"{server.label}: a 50-numwant reply carries {check_replies(server, pool)} IPv4 peers")

    rounds: list[dict[str, Any]] = []
    for round_number in range(1, args.rounds + 1):
        for mode in args.modes:
            # Alternate the order, so that no server always runs first after a pause.
            order = servers if round_number % 2 == 1 else list(reversed(servers))
            results = {}
            for server in order:
                result = run_wrk(server, mode, args, pool_file, args.duration)
                result["server_rss_bytes"] = rss_bytes(server.pid)
                results[server.label] = result
                print(
                    f"round {round_number} {mode:<9} {server.label:<16} {result['announces_per_s']:>10,.0f}/s "
                    f"p99 {result['latency_p99_us'] / 1000:.2f} ms"
                )
            rounds.append({"round": round_number, "mode": mode, "results": results})

    upstream_after = upstream.announce_count()
    print_table(rounds, labels)
    summary = summarize(rounds, labels)
    print_summary(summary, labels)
    print(f"\nupstream announces during the rounds: {upstream_after - count:,}")

    if args.json is not None:
        excluded = ("json", "profile_dir", "profile_native")
        settings = {key: value for key, value in vars(args).items() if key not in excluded}
        write_json(
            args.json,
            {
                "machine": machine_summary(),
                "settings": settings,
                "rounds": rounds,
                "summary": summary,
                "upstream_announces_during_rounds": upstream_after - count,
            },
        )

    if args.profile_dir is not None:
        first_aggregator = servers[1]  # servers[0] is opentracker
        profile_aggregator(first_aggregator, args, pool_file, args.modes)


if __name__ == "__main__":
    main()
