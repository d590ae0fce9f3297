"""Processes and helpers shared by the load benchmarks: opentracker, the aggregator, a fake upstream.

Every server listens on 127.0.0.1, every request goes there, and every process started here
is stopped by its pid. Servers run pinned to one core with `taskset`, and the load generators
to another, so that they do not compete for the same CPU.
"""

import hashlib
import json
import os
import shutil
import signal
import socket
import statistics
import struct
import subprocess
import sys
import time
import urllib.request
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import bencode2
import yaml

REPO_ROOT = Path(__file__).resolve().parents[1]
BENCH_DIR = REPO_ROOT / "bench"
LOOPBACK = "127.0.0.1"
SERVER_CORE = 0
LOAD_CORE = 1
STARTUP_TIMEOUT_S = 20.0
STOP_TIMEOUT_S = 10.0
# An upstream announce count that stays the same this long means the aggregator has stopped sending.
STALLED_AFTER_S = 10.0
CLOCK_TICKS_PER_S = 100  # USER_HZ on Linux, the unit of utime and stime in /proc/PID/stat
UDP_PROTOCOL_ID = 0x41727101980  # BEP 15: the connection id field of a connect request


def require_executable(name: str, debian_package: str) -> str:
    """Return the path of `name`, or exit with the apt-get command that installs it."""
    path = shutil.which(name)
    if path is None:
        sys.exit(f"executable {name!r} not found on PATH; install it with: apt-get install {debian_package}")

    return path


def infohash_pool(count: int) -> list[bytes]:
    """Return `count` distinct infohashes, the same on every run."""
    return [hashlib.sha1(f"aggregator-bench-{index}".encode()).digest() for index in range(count)]


def percent_encode(value: bytes) -> str:
    """Encode every byte as %XX, which every tracker decodes the same way."""
    return "".join(f"%{byte:02X}" for byte in value)


def free_port(kind: int = socket.SOCK_STREAM) -> int:
    """Return a port on 127.0.0.1 that was free a moment ago (TCP or UDP by `kind`).

    NOTE: another process can take the port before the server binds it. The servers started
    here then fail to start, and the benchmark stops with their output.
    """
    with socket.socket(socket.AF_INET, kind) as probe:
        probe.bind((LOOPBACK, 0))
        port: int = probe.getsockname()[1]

    return port


def real_python() -> str:
    """Return the interpreter binary itself, not a pyenv shim, so that py-spy can attach to its pid."""
    return os.path.realpath(sys.executable)


class PinnedProcess:
    """A subprocess pinned to one core, with stdout and stderr in files under `workdir`."""

    def __init__(self, name: str, argv: Sequence[str], workdir: Path, core: int, env: dict[str, str] | None = None):
        self.name = name
        self.workdir = workdir
        self.stdout_path = workdir / f"{name}.stdout"
        self.stderr_path = workdir / f"{name}.stderr"
        taskset = require_executable("taskset", "util-linux")
        with self.stdout_path.open("wb") as stdout, self.stderr_path.open("wb") as stderr:
            self.popen = subprocess.Popen(
                [taskset, "-c", str(core), *argv], cwd=workdir, stdout=stdout, stderr=stderr, env=env
            )

    @property
    def pid(self) -> int:
        return self.popen.pid

    def check_running(self) -> None:
        """Exit the benchmark with the process output if the process has ended."""
        if self.popen.poll() is not None:
            sys.exit(f"{self.name} exited with code {self.popen.returncode}\n{self.describe()}")

    def describe(self) -> str:
        parts = []
        for path in (self.stdout_path, self.stderr_path):
            text = path.read_text(errors="replace") if path.exists() else ""
            parts.append(f"--- {path.name}\n{text[-3000:]}")

        return "\n".join(parts)

    def stop(self) -> None:
        """Send SIGTERM to this process, then SIGKILL if it is still running after STOP_TIMEOUT_S."""
        if self.popen.poll() is not None:
            return

        self.popen.send_signal(signal.SIGTERM)
        try:
            self.popen.wait(STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            self.popen.kill()
            self.popen.wait(STOP_TIMEOUT_S)


def wait_for_tcp(process: PinnedProcess, port: int) -> None:
    """Return once 127.0.0.1:`port` accepts a connection; exit if `process` ends or the time runs out."""
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    while True:
        process.check_running()
        try:
            with socket.create_connection((LOOPBACK, port), timeout=1.0):
                return
        except OSError:
            if time.monotonic() > deadline:
                sys.exit(f"{process.name} did not listen on port {port} within {STARTUP_TIMEOUT_S:.0f} s")
            time.sleep(0.05)


def wait_for_udp_tracker(process: PinnedProcess, port: int) -> None:
    """Return once 127.0.0.1:`port` replies to a BEP 15 connect request; exit if `process` ends or the time runs out."""
    request = struct.pack("!QII", UDP_PROTOCOL_ID, 0, 1)  # protocol id, action connect, transaction id 1
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(0.1)
        while True:
            process.check_running()
            sock.sendto(request, (LOOPBACK, port))
            try:
                sock.recv(2048)
                return
            except TimeoutError:  # no reply within 0.1 s: not bound yet, or the packet was lost
                if time.monotonic() > deadline:
                    sys.exit(f"{process.name} did not reply on UDP port {port} within {STARTUP_TIMEOUT_S:.0f} s")


def http_get(url: str, timeout_s: float = 10.0) -> bytes:
    with urllib.request.urlopen(url, timeout=timeout_s) as response:
        body: bytes = response.read()

    return body


def announce_url(port: int, info_hash: bytes, peer_id: bytes, peer_port: int, left: int) -> str:
    query = (
        f"info_hash={percent_encode(info_hash)}&peer_id={percent_encode(peer_id)}&port={peer_port}"
        f"&uploaded=0&downloaded=0&left={left}&compact=1&numwant=50"
    )

    return f"http://{LOOPBACK}:{port}/announce?{query}"


def http_announce(port: int, info_hash: bytes, peer_id: bytes, peer_port: int, left: int) -> dict[bytes, Any]:
    reply = bencode2.bdecode(http_get(announce_url(port, info_hash, peer_id, peer_port, left)))
    assert isinstance(reply, dict), f"announce reply is a bencoded {type(reply).__name__}, expected a dict"

    return reply


# ---------------------------------------------------------------- opentracker


class OpenTracker:
    """Debian's opentracker on 127.0.0.1 that serves only the infohashes in its whitelist.

    Started as root, opentracker chroots to its rootdir and drops to user nobody, so the
    whitelist path in its config is relative to that directory.
    """

    def __init__(self, workdir: Path, info_hashes: Sequence[bytes], core: int = SERVER_CORE) -> None:
        executable = require_executable("opentracker", "opentracker")
        workdir.mkdir(parents=True, exist_ok=True)
        workdir.chmod(0o755)  # user nobody reads the whitelist after the chroot
        self.port = free_port()
        self.udp_port = free_port(socket.SOCK_DGRAM)
        whitelist = workdir / "whitelist.txt"
        whitelist.write_text("".join(info_hash.hex() + "\n" for info_hash in info_hashes))
        whitelist.chmod(0o644)
        config = workdir / "opentracker.conf"
        config.write_text(
            f"listen.tcp {LOOPBACK}:{self.port}\n"
            f"listen.udp {LOOPBACK}:{self.udp_port}\n"
            f"tracker.rootdir {workdir}\n"
            "access.whitelist whitelist.txt\n"
        )
        self.process = PinnedProcess("opentracker", [executable, "-f", str(config)], workdir, core)
        self._probe_info_hash = info_hashes[0]

    def wait_ready(self) -> None:
        """Return once opentracker accepts announces for the whitelisted infohashes.

        opentracker loads its whitelist in a background thread and reports nothing when done, so
        a probe peer announces until the reply has no `failure reason`, then leaves with `stopped`.
        """
        wait_for_tcp(self.process, self.port)
        deadline = time.monotonic() + STARTUP_TIMEOUT_S
        while True:
            self.process.check_running()
            reply = http_announce(self.port, self._probe_info_hash, b"-BENCHPROBE-00000000", 1, 1)
            if b"failure reason" not in reply:
                break
            if time.monotonic() > deadline:
                sys.exit(f"opentracker still rejects whitelisted infohashes: {reply!r}")
            time.sleep(0.1)

        urllib.request.urlopen(
            announce_url(self.port, self._probe_info_hash, b"-BENCHPROBE-00000000", 1, 1) + "&event=stopped"
        ).read()

    def stop(self) -> None:
        self.process.stop()


# ---------------------------------------------------------------- the fake upstream tracker


class FakeUpstream:
    """bench/fake_upstream.py: an HTTP tracker that returns one fixed reply at once, and counts announces."""

    def __init__(self, workdir: Path, core: int = SERVER_CORE) -> None:
        self.port = free_port()
        argv = [real_python(), str(BENCH_DIR / "fake_upstream.py"), "--port", str(self.port)]
        self.process = PinnedProcess("fake-upstream", argv, workdir, core)
        wait_for_tcp(self.process, self.port)

    def announce_count(self) -> int:
        return int(http_get(f"http://{LOOPBACK}:{self.port}/count"))

    def forwarder_uris(self, count: int) -> list[str]:
        """Return `count` distinct announce URIs on this server, one per forwarder."""
        return [f"http://{LOOPBACK}:{self.port}/forwarder-{index}/announce" for index in range(count)]

    def wait_for_announces(self, expected: int, timeout_s: float) -> int:
        """Wait until at least `expected` upstream announces arrived; return the count.

        Returns earlier when the count has not grown for STALLED_AFTER_S, or at `timeout_s`.
        """
        deadline = time.monotonic() + timeout_s
        last_count = -1
        stable_since = time.monotonic()
        while True:
            self.process.check_running()
            count = self.announce_count()
            if count >= expected:
                return count

            now = time.monotonic()
            if count != last_count:
                last_count = count
                stable_since = now
            elif now - stable_since > STALLED_AFTER_S or now > deadline:
                return count
            time.sleep(0.2)

    def stop(self) -> None:
        self.process.stop()


class FloorServer:
    """bench/http_floor.py: a fixed-reply HTTP server that measures the HTTP layer alone."""

    def __init__(self, workdir: Path, kind: str, core: int = SERVER_CORE) -> None:
        self.port = free_port()
        argv = [real_python(), str(BENCH_DIR / "http_floor.py"), "--kind", kind, "--port", str(self.port)]
        self.process = PinnedProcess(f"floor-{kind}", argv, workdir, core)
        wait_for_tcp(self.process, self.port)

    def stop(self) -> None:
        self.process.stop()


class UdpFloorServer:
    """bench/udp_floor.py: a fixed-reply UDP tracker that measures the event loop and system calls alone."""

    def __init__(self, workdir: Path, work_us: float = 0.0, core: int = SERVER_CORE) -> None:
        self.udp_port = free_port(socket.SOCK_DGRAM)
        argv = [
            real_python(), str(BENCH_DIR / "udp_floor.py"), "--port", str(self.udp_port), "--work-us", str(work_us)
        ]  # fmt: skip
        self.process = PinnedProcess("floor-udp", argv, workdir, core)
        wait_for_udp_tracker(self.process, self.udp_port)

    def stop(self) -> None:
        self.process.stop()


# ---------------------------------------------------------------- the aggregator


class Aggregator:
    """The aggregator as `python -m aggregator --config FILE`, pinned to one core."""

    def __init__(
        self,
        workdir: Path,
        forwarder_uris: Sequence[str],
        udp: bool = False,
        core: int = SERVER_CORE,
        extra_settings: dict[str, Any] | None = None,
    ) -> None:
        workdir.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.udp_port = free_port(socket.SOCK_DGRAM) if udp else 0
        settings: dict[str, Any] = {
            "listen": f"{LOOPBACK}:{self.port}",
            "admin_listen": None,
            "log_level": "warning",
            "forwarders": list(forwarder_uris),
            # Steady state: no announce waits for upstream replies.
            "first_announce_wait_ms": 0,
            # Overload control off, so that the warm-up's first upstream announces (pool size times
            # forwarders, all due at once) go out without deferral and every infohash is admitted.
            # Otherwise throttling defers most of them by throttle_defer_s, into the measured rounds.
            "throttle_threshold": 0,
            "rate_limit_threshold": 0,
        }
        if udp:
            settings["udp_listen"] = f"{LOOPBACK}:{self.udp_port}"
        settings.update(extra_settings or {})
        self.config_path = workdir / "aggregator.yml"
        self.config_path.write_text(yaml.safe_dump(settings, sort_keys=False))

        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
        argv = [real_python(), "-m", "aggregator", "--config", str(self.config_path)]
        self.process = PinnedProcess("aggregator", argv, workdir, core, env)
        wait_for_tcp(self.process, self.port)

    @property
    def pid(self) -> int:
        """The pid of the Python process (taskset execs it in place)."""
        return self.process.pid

    def stop(self) -> None:
        self.process.stop()


class ProfileRecorder:
    """`py-spy record` of one process for `duration_s`, started on the load core.

    --native stops the process for every sample, which slows it several times over, so by
    default py-spy samples Python frames only, without stopping the process.
    """

    def __init__(self, pid: int, output: Path, output_format: str, duration_s: float, native: bool = False) -> None:
        py_spy = require_executable_from_pip("py-spy")
        output.parent.mkdir(parents=True, exist_ok=True)
        sampling = ["--native"] if native else ["--nonblocking"]
        self.argv = [
            "taskset", "-c", str(LOAD_CORE), py_spy, "record", *sampling,
            "--format", output_format, "--rate", "200", "--duration", str(int(duration_s)),
            "--pid", str(pid), "--output", str(output),
        ]  # fmt: skip
        self.duration_s = duration_s
        self.popen = subprocess.Popen(self.argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        time.sleep(0.5)  # py-spy attaches before the load starts

    def wait(self) -> None:
        """Wait for py-spy to write its output; exit with its message if it failed."""
        _, stderr = self.popen.communicate(timeout=self.duration_s + 60)
        if self.popen.returncode != 0:
            sys.exit(f"py-spy failed with exit code {self.popen.returncode}: {' '.join(self.argv)}\n{stderr}")


def require_executable_from_pip(name: str) -> str:
    """Return the path of `name`, or exit with the pip command that installs it."""
    path = shutil.which(name)
    if path is None:
        sys.exit(f"executable {name!r} not found on PATH; install it with: pip install {name}")

    return path


# ---------------------------------------------------------------- results


def cpu_seconds(pid: int) -> float:
    """Return the CPU time (user + system) that process `pid` and its threads have used."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    # After the closing parenthesis of the command, utime and stime are the 12th and 13th fields.
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS_PER_S


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024

    return 0


def median(values: Sequence[float]) -> float:
    return statistics.median(values) if values else float("nan")


def write_json(path: Path, data: Any) -> None:
    path.write_text(json.dumps(data, indent=2) + "\n")
    print(f"results written to {path}")


def machine_summary() -> dict[str, Any]:
    """Return what the result depends on: CPU model, core count, Python, and the repository commit."""
    cpu_model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu_model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass

    commit = subprocess.run(
        ["git", "-C", str(REPO_ROOT), "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=False
    ).stdout.strip()
    dirty = subprocess.run(
        ["git", "-C", str(REPO_ROOT), "status", "--porcelain", "--", "aggregator"],
        capture_output=True,
        text=True,
        check=False,
    ).stdout.strip()

    return {
        "cpu": cpu_model,
        "cores": os.cpu_count(),
        "python": sys.version.split()[0],
        "commit": commit + ("+uncommitted changes under aggregator/" if dirty else ""),
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        # Another process using the CPU during a run shows up here, at least while it lasts.
        "load_average_1_5_15_min": os.getloadavg(),
    }
