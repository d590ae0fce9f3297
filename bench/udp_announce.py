"""Measure UDP (BEP 15) announce throughput of the aggregator against Debian's opentracker.

Run: python bench/udp_announce.py [--rounds 3] [--duration 10] [--processes 4] [--window 32]
         [--floor] [--floor-work-us 0]

Needs Debian's `opentracker` (apt-get install opentracker); installs nothing. Starts
opentracker (whitelist of --pool infohashes), an instant fake upstream tracker
(bench/fake_upstream.py) and the aggregator with `udp_listen`, all on 127.0.0.1 and pinned to
core 0. The load generator is --processes processes pinned to core 1. Each has its own socket,
connects once per run (BEP 15 connect), then keeps --window announces in flight for --duration
seconds. Announces draw an infohash from the pool and a peer slot from --swarm-size slots, as
bench/http_announce.py does. A reply missing for 0.2 s counts as lost and is replaced.
Rounds alternate the order of the servers, and the table shows announces/s per server and
round, the server's CPU time per announce and the ratio to opentracker.

--floor adds bench/udp_floor.py, a bare DatagramProtocol on uvloop that sends a fixed announce
reply of the aggregator's size without tracker work. Its CPU time per announce is what the event
loop and the system calls cost at its own rate. That cost grows as the rate falls, because each
reply then wakes a waiting load process. --floor-work-us makes the floor busy-wait per announce,
so that it runs near the aggregator's rate: its CPU time per announce minus the busy-wait is then
the loop's share of the aggregator's figure.
"""

import argparse
import multiprocessing
import os
import random
import resource
import socket
import struct
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from harness import (
    LOAD_CORE,
    LOOPBACK,
    Aggregator,
    FakeUpstream,
    OpenTracker,
    ProfileRecorder,
    UdpFloorServer,
    cpu_seconds,
    infohash_pool,
    machine_summary,
    median,
    rss_bytes,
    write_json,
)

PROTOCOL_ID = 0x41727101980
ACTION_CONNECT = 0
ACTION_ANNOUNCE = 1
ACTION_ERROR = 3
CONNECT_REQUEST = struct.Struct("!QII")  # protocol id, action, transaction id
REPLY_HEADER = struct.Struct("!II")  # action, transaction id
CONNECT_REPLY = struct.Struct("!IIQ")  # action, transaction id, connection id
# After the 16-byte header: info_hash, peer_id, downloaded, left, uploaded, event, IP, key,
# num_want, port.
ANNOUNCE_BODY = struct.Struct("!20s20sqqqIIIiH")
ANNOUNCE_REPLY_BYTES = 20
PEER_BYTES = 6
LOST_AFTER_S = 0.2
LATENCY_EVERY = 8  # keep the latency of every 8th reply, so the load generator stays cheap
VARIANTS = 1 << 16  # pre-built announce bodies per process, so the swarms fill up as over HTTP


def build_bodies(pool: Sequence[bytes], swarm_size: int, seed: int) -> list[bytes]:
    """Return announce bodies (after the transaction id) for random (infohash, peer slot) pairs."""
    rng = random.Random(seed)
    bodies = []
    for _ in range(VARIANTS):
        hash_index = rng.randrange(len(pool))
        slot = rng.randrange(swarm_size)
        peer_id = f"-BN0001-{hash_index:06d}{slot:06d}".encode()
        left = 0 if slot % 4 == 0 else rng.randrange(1, 1_000_000_000)
        bodies.append(ANNOUNCE_BODY.pack(pool[hash_index], peer_id, 0, left, 0, 0, 0, slot, 50, 10000 + slot))

    return bodies


def connect(sock: socket.socket) -> int:
    """Run a BEP 15 connect on the connected socket and return the connection id."""
    for attempt in range(5):
        transaction_id = random.getrandbits(32)
        sock.send(CONNECT_REQUEST.pack(PROTOCOL_ID, ACTION_CONNECT, transaction_id))
        deadline = time.monotonic() + 1.0
        while time.monotonic() < deadline:
            try:
                reply = sock.recv(2048)
            except TimeoutError:
                break
            if len(reply) >= CONNECT_REPLY.size:
                action, received_id, connection_id = CONNECT_REPLY.unpack_from(reply)
                if action == ACTION_CONNECT and received_id == transaction_id:
                    return int(connection_id)

    raise RuntimeError("BEP 15 connect failed: no reply to 5 requests, 1 s apart")


def load_process(
    port: int,
    pool: list[bytes],
    swarm_size: int,
    window: int,
    start_at: float,
    duration_s: float,
    seed: int,
    results: "multiprocessing.Queue[dict[str, Any]]",
) -> None:
    """Send pipelined announces from start_at for duration_s and put the counts into `results`."""
    os.sched_setaffinity(0, {LOAD_CORE})
    bodies = build_bodies(pool, swarm_size, seed)
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.connect((LOOPBACK, port))
    sock.settimeout(1.0)
    prefix = struct.pack("!QI", connect(sock), ACTION_ANNOUNCE)

    ring = 1 << 16  # send times by transaction id; far more slots than requests in flight
    sent_at = [0.0] * ring
    latencies: list[float] = []
    replies = errors = lost = peers = 0
    transaction_id = 0
    in_flight = 0
    send = sock.send
    recv = sock.recv
    clock = time.perf_counter
    unpack_header = REPLY_HEADER.unpack_from

    time.sleep(max(0.0, start_at - time.time()))
    sock.settimeout(LOST_AFTER_S)
    started = clock()
    deadline = started + duration_s
    now = started
    while now < deadline:
        while in_flight < window:
            transaction_id = (transaction_id + 1) & 0xFFFFFFFF
            sent_at[transaction_id & (ring - 1)] = clock()
            send(prefix + transaction_id.to_bytes(4, "big") + bodies[transaction_id % VARIANTS])
            in_flight += 1

        try:
            reply = recv(2048)
        except TimeoutError:
            lost += in_flight
            in_flight = 0
            now = clock()
            continue

        now = clock()
        in_flight = max(in_flight - 1, 0)
        action, received_id = unpack_header(reply)
        if action == ACTION_ANNOUNCE:
            replies += 1
            if replies % LATENCY_EVERY == 0:
                latencies.append(now - sent_at[received_id & (ring - 1)])
                peers = (len(reply) - ANNOUNCE_REPLY_BYTES) // PEER_BYTES
        else:
            errors += 1

    elapsed_s = clock() - started
    sock.close()
    usage = resource.getrusage(resource.RUSAGE_SELF)
    results.put(
        {
            "replies": replies,
            "errors": errors,
            "lost": lost,
            "elapsed_s": elapsed_s,
            "latencies": latencies,
            "last_peer_count": peers,
            "cpu_s": usage.ru_utime + usage.ru_stime,
        }
    )


def run_load(port: int, pid: int, pool: list[bytes], args: argparse.Namespace, duration_s: float) -> dict[str, Any]:
    """Run the load processes against one server and return the combined figures."""
    context = multiprocessing.get_context("fork")
    results: multiprocessing.Queue[dict[str, Any]] = context.Queue()
    start_at = time.time() + 1.0
    processes = [
        context.Process(
            target=load_process,
            args=(port, pool, args.swarm_size, args.window, start_at, duration_s, index, results),
        )
        for index in range(args.processes)
    ]
    for process in processes:
        process.start()

    time.sleep(max(0.0, start_at - time.time()))
    server_cpu_before = cpu_seconds(pid)
    parts = [results.get(timeout=duration_s + 60) for _ in processes]
    server_cpu = cpu_seconds(pid) - server_cpu_before
    for process in processes:
        process.join(10)
        if process.exitcode != 0:
            sys.exit(f"a load process exited with code {process.exitcode}")

    elapsed_s = max(part["elapsed_s"] for part in parts)
    latencies = sorted(latency for part in parts for latency in part["latencies"])
    replies = sum(part["replies"] for part in parts)

    def percentile(share: float) -> float:
        return latencies[min(len(latencies) - 1, int(share * len(latencies)))] * 1000 if latencies else float("nan")

    return {
        "announces_per_s": replies / elapsed_s,
        "replies": replies,
        "errors": sum(part["errors"] for part in parts),
        "lost": sum(part["lost"] for part in parts),
        "latency_p50_ms": percentile(0.50),
        "latency_p99_ms": percentile(0.99),
        "peers_in_reply": max(part["last_peer_count"] for part in parts),
        "server_cpu_share": server_cpu / elapsed_s,
        # Includes building the packets before the start, a small part of a 10 s run.
        "load_cpu_share": sum(part["cpu_s"] for part in parts) / elapsed_s,
    }


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3, help="measured rounds")
    parser.add_argument("--duration", type=float, default=10.0, help="seconds of load per run")
    parser.add_argument("--warmup", type=float, default=5.0, help="seconds of load per server first")
    parser.add_argument("--processes", type=int, default=4, help="load processes, all on the load core")
    parser.add_argument("--window", type=int, default=32, help="announces in flight per load process")
    parser.add_argument("--pool", type=int, default=1000, help="infohashes in the pool")
    parser.add_argument("--swarm-size", type=int, default=100, help="distinct peers per infohash")
    parser.add_argument("--forwarders", type=int, default=1, help="forwarders of the aggregator")
    parser.add_argument(
        "--floor",
        action="store_true",
        help="also measure bench/udp_floor.py (a fixed announce reply from a bare DatagramProtocol on uvloop)",
    )
    parser.add_argument(
        "--floor-work-us",
        type=float,
        default=0.0,
        help="microseconds that the floor busy-waits per announce, to run it near the aggregator's rate",
    )
    parser.add_argument("--json", type=Path, help="write every figure to this JSON file")
    parser.add_argument("--profile-dir", type=Path, help="also profile the aggregator with py-spy, outside the rounds")

    return parser.parse_args()


def main() -> None:
    args = parse_args()
    pool = infohash_pool(args.pool)
    started: list[Any] = []
    with tempfile.TemporaryDirectory(prefix="bench-udp-") as tmp:
        workdir = Path(tmp)
        try:
            opentracker = OpenTracker(workdir / "opentracker", pool)
            started.append(opentracker)
            opentracker.wait_ready()
            upstream = FakeUpstream(workdir)
            started.append(upstream)
            aggregator = Aggregator(workdir / "aggregator", upstream.forwarder_uris(args.forwarders), udp=True)
            started.append(aggregator)
            time.sleep(0.5)  # the UDP socket is bound after the HTTP one that wait_for_tcp saw

            servers = {
                "opentracker": (opentracker.udp_port, opentracker.process.pid),
                "aggregator": (aggregator.udp_port, aggregator.pid),
            }
            if args.floor:
                floor = UdpFloorServer(workdir, args.floor_work_us)
                started.append(floor)
                servers["floor"] = (floor.udp_port, floor.process.pid)
            run(args, servers, pool, upstream)
        finally:
            for process in reversed(started):
                process.stop()


def run(
    args: argparse.Namespace, servers: dict[str, tuple[int, int]], pool: list[bytes], upstream: FakeUpstream
) -> None:
    for label, (port, pid) in servers.items():
        warmup = run_load(port, pid, pool, args, args.warmup)
        print(
            f"warm-up {label}: {warmup['announces_per_s']:,.0f} announces/s, {warmup['errors']} errors, "
            f"{warmup['lost']} lost, {warmup['peers_in_reply']} peers in a reply"
        )
        if warmup["replies"] == 0:
            sys.exit(f"{label} sent no announce reply")

    expected = len(pool) * args.forwarders
    upstream_before = upstream.wait_for_announces(expected, 120.0)
    print(f"upstream announces before the rounds: {upstream_before:,} (expected {expected:,})")

    rounds: list[dict[str, Any]] = []
    labels = list(servers)
    for round_number in range(1, args.rounds + 1):
        order = labels if round_number % 2 == 1 else list(reversed(labels))
        results = {}
        for label in order:
            port, pid = servers[label]
            result = run_load(port, pid, pool, args, args.duration)
            result["server_rss_bytes"] = rss_bytes(pid)
            results[label] = result
            print(f"round {round_number} {label:<12} {result['announces_per_s']:>10,.0f}/s")
        rounds.append({"round": round_number, "results": results})

    print()
    print(f"{'round':>5} {'server':<12} {'announces/s':>12} {'p50 ms':>8} {'p99 ms':>8} {'errors':>7} {'lost':>6} "
          f"{'server CPU':>10} {'CPU µs/ann':>10} {'load CPU':>9} {'ratio':>6}")  # fmt: skip
    ratios: dict[str, list[float]] = {label: [] for label in labels if label != "opentracker"}
    for entry in rounds:
        baseline = entry["results"]["opentracker"]["announces_per_s"]
        for label in labels:
            result = entry["results"][label]
            rate = result["announces_per_s"]
            result["server_cpu_us_per_announce"] = result["server_cpu_share"] / rate * 1e6 if rate else float("nan")
            ratio = ""
            if label != "opentracker":
                ratios[label].append(result["announces_per_s"] / baseline)
                ratio = f"{ratios[label][-1]:.2f}"
            print(
                f"{entry['round']:>5} {label:<12} {result['announces_per_s']:>12,.0f} {result['latency_p50_ms']:>8.2f} "
                f"{result['latency_p99_ms']:>8.2f} {result['errors']:>7} {result['lost']:>6} "
                f"{result['server_cpu_share']:>10.0%} {result['server_cpu_us_per_announce']:>10.1f} "
                f"{result['load_cpu_share']:>9.0%} {ratio:>6}"
            )

    figure_names = ("announces_per_s", "latency_p50_ms", "latency_p99_ms", "server_cpu_us_per_announce")
    summary: dict[str, Any] = {
        label: {name: median([entry["results"][label][name] for entry in rounds]) for name in figure_names}
        for label in labels
    }
    summary["ratio_per_round"] = ratios["aggregator"]
    summary["ratio_median"] = median(ratios["aggregator"])
    if "floor" in ratios:
        summary["floor_ratio_median"] = median(ratios["floor"])
    print()
    for label in labels:
        figures = summary[label]
        print(
            f"median {label:<12} {figures['announces_per_s']:>10,.0f} announces/s, "
            f"p50 {figures['latency_p50_ms']:.2f} ms, p99 {figures['latency_p99_ms']:.2f} ms, "
            f"{figures['server_cpu_us_per_announce']:.1f} µs server CPU per announce"
        )
    print(f"median ratio aggregator / opentracker: {summary['ratio_median']:.2f}")
    if "floor" in ratios:
        print(f"median ratio floor / opentracker: {summary['floor_ratio_median']:.2f}")
        summary["floor_loop_us_per_announce"] = summary["floor"]["server_cpu_us_per_announce"] - args.floor_work_us
        print(
            f"event loop and system calls: {summary['floor_loop_us_per_announce']:.1f} µs per announce at "
            f"{summary['floor']['announces_per_s']:,.0f} announces/s (floor CPU time minus {args.floor_work_us:g} µs "
            "of busy-wait)"
        )
    print(f"upstream announces during the rounds: {upstream.announce_count() - upstream_before:,}")

    if args.json is not None:
        settings = {key: value for key, value in vars(args).items() if key not in ("json", "profile_dir")}
        write_json(
            args.json, {"machine": machine_summary(), "settings": settings, "rounds": rounds, "summary": summary}
        )

    if args.profile_dir is not None:
        port, pid = servers["aggregator"]
        for output_format, suffix in (("flamegraph", "svg"), ("raw", "txt")):
            output = args.profile_dir / f"udp-aggregator.{suffix}"
            recorder = ProfileRecorder(pid, output, output_format, args.duration)
            result = run_load(port, pid, pool, args, args.duration)
            recorder.wait()
            print(
                f"profile ({output_format}): {result['announces_per_s']:,.0f} announces/s under py-spy, "
                f"written to {output}"
            )


if __name__ == "__main__":
    main()
