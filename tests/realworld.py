"""Fixtures and helpers that drive real programs on the loopback interface.

The programs are Debian's opentracker, aria2c and mktorrent, the webtorrent
bittorrent-tracker (an npm package run by node), plus the aggregator service
started as `python -m aggregator`. Every server started here listens on
127.0.0.1 (bittorrent-tracker also on ::1), every request goes there, and every
process is stopped by its pid at teardown. Each process keeps its output in
files under the test's tmp_path, and failure messages include that output.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
import signal
import socket
import subprocess
import queue
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
import xml.etree.ElementTree as ElementTree
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import bencode2
import pytest
import yaml

REPO_ROOT = Path(__file__).resolve().parents[1]
LOOPBACK = "127.0.0.1"

# Debian package that ships each executable, named in the message when it is missing.
DEBIAN_PACKAGES = {"opentracker": "opentracker", "aria2c": "aria2", "mktorrent": "mktorrent", "node": "nodejs"}

STARTUP_TIMEOUT_S = 15.0
HTTP_TIMEOUT_S = 10.0
STOP_TIMEOUT_S = 10.0
POLL_INTERVAL_S = 0.05
OUTPUT_TAIL_CHARS = 4000


# ---------------------------------------------------------------- tools and waiting


def require_tool(name: str) -> str:
    """Return the path of executable `name`, or skip the test when it is missing.

    With CI=true in the environment a missing tool fails the test instead, so CI
    never passes by skipping. The message names the Debian package to install.
    """
    path = shutil.which(name)
    if path is not None:
        return path
    package = DEBIAN_PACKAGES.get(name, name)
    message = f"executable {name!r} not found on PATH; install it with: apt-get install {package}"
    if os.environ.get("CI") == "true":
        pytest.fail(message)
    pytest.skip(message)


def free_tcp_port() -> int:
    """Return a TCP port on 127.0.0.1 that was free a moment ago.

    Only for programs that cannot bind port 0 and report the port they got, because
    another process can take the port between this call and the program's bind.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((LOOPBACK, 0))
        port: int = probe.getsockname()[1]
        return port


def wait_until(
    condition: Callable[[], Any],
    timeout_s: float,
    description: str,
    *,
    watched: Sequence[ManagedProcess] = (),
) -> Any:
    """Poll `condition` until it returns a truthy value, and return that value.

    Use it only where the awaited state produces no output line, file or exit to
    wait on. Fails the test when `timeout_s` passes or when a process in `watched`
    exits first, and puts the output of every watched process in the message.
    """
    deadline = time.monotonic() + timeout_s
    while True:
        value = condition()
        if value:
            return value
        for process in watched:
            if process.poll() is not None:
                pytest.fail(
                    f"{process.name} exited with code {process.returncode} "
                    f"while waiting for {description}\n{describe_processes(watched)}"
                )
        if time.monotonic() >= deadline:
            pytest.fail(
                f"timed out after {timeout_s:.1f} s waiting for {description}\n"
                f"{describe_processes(watched)}"
            )
        time.sleep(POLL_INTERVAL_S)


def new_workdir(parent: Path, prefix: str) -> Path:
    """Create and return an unused directory `parent/prefix-N`, so repeated calls in one test never collide."""
    for index in range(1, 1000):
        candidate = parent / f"{prefix}-{index}"
        try:
            candidate.mkdir(parents=True)
        except FileExistsError:
            continue
        return candidate
    raise RuntimeError(f"no free directory name for {prefix!r} under {parent}")


def _read_tail(path: Path, max_chars: int = OUTPUT_TAIL_CHARS) -> str:
    try:
        text = path.read_text(errors="replace")
    except FileNotFoundError:
        return "(no file)"
    if len(text) > max_chars:
        return f"[... first {len(text) - max_chars} characters cut ...]\n{text[-max_chars:]}"
    return text or "(empty)"


# ---------------------------------------------------------------- processes


class ManagedProcess:
    """A subprocess started by these helpers, with its stdout and stderr kept in files under `workdir`.

    With `capture_stdout=False` the child writes stdout straight to the file. With
    True, stdout is a pipe that a subclass must keep reading and copying to
    `stdout_path`.
    """

    def __init__(
        self,
        name: str,
        argv: Sequence[str],
        workdir: Path,
        *,
        env: dict[str, str] | None = None,
        capture_stdout: bool = False,
    ) -> None:
        self.name = name
        self.argv = list(argv)
        self.workdir = workdir
        self.stdout_path = workdir / f"{name}.stdout"
        self.stderr_path = workdir / f"{name}.stderr"
        self.extra_log_path: Path | None = None
        self._stderr_file = self.stderr_path.open("wb")
        self._stdout_file = None if capture_stdout else self.stdout_path.open("wb")
        self.popen = subprocess.Popen(
            self.argv,
            cwd=workdir,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE if capture_stdout else self._stdout_file,
            stderr=self._stderr_file,
        )

    @property
    def pid(self) -> int:
        return self.popen.pid

    @property
    def returncode(self) -> int | None:
        return self.popen.returncode

    def poll(self) -> int | None:
        return self.popen.poll()

    def stop(self, timeout_s: float = STOP_TIMEOUT_S) -> None:
        """Send SIGTERM to this process only, then SIGKILL if it is still running after `timeout_s`."""
        if self.popen.poll() is None:
            os.kill(self.pid, signal.SIGTERM)
            try:
                self.popen.wait(timeout_s)
            except subprocess.TimeoutExpired:
                os.kill(self.pid, signal.SIGKILL)
                self.popen.wait()
        for handle in (self._stdout_file, self._stderr_file):
            if handle is not None and not handle.closed:
                handle.close()

    def describe(self) -> str:
        """Return the command, exit code and the end of each output file, for failure messages."""
        status = "running" if self.popen.poll() is None else f"exit code {self.returncode}"
        parts = [
            f"===== {self.name} (pid {self.pid}, {status}): {' '.join(self.argv)}",
            f"----- stdout ({self.stdout_path}):\n{_read_tail(self.stdout_path)}",
            f"----- stderr ({self.stderr_path}):\n{_read_tail(self.stderr_path)}",
        ]
        if self.extra_log_path is not None:
            parts.append(f"----- log ({self.extra_log_path}):\n{_read_tail(self.extra_log_path)}")
        return "\n".join(parts)


def describe_processes(processes: Sequence[ManagedProcess]) -> str:
    return "\n".join(process.describe() for process in processes)


# ---------------------------------------------------------------- HTTP tracker protocol


def random_peer_id(prefix: bytes = b"-RW0001-") -> bytes:
    """Return a 20-byte peer id: `prefix` followed by random hex digits."""
    return prefix + os.urandom(10).hex().encode()[: 20 - len(prefix)]


def http_announce(
    announce_url: str,
    infohash: bytes,
    *,
    peer_id: bytes,
    port: int,
    left: int = 0,
    event: str | None = None,
    timeout_s: float = HTTP_TIMEOUT_S,
) -> dict[bytes, Any]:
    """Send one HTTP announce and return the decoded reply, which may contain `failure reason`.

    Always requests the compact peer list, because opentracker rejects compact=0
    with "Invalid Request".
    """
    query = {
        "info_hash": infohash,
        "peer_id": peer_id,
        "port": str(port),
        "uploaded": "0",
        "downloaded": "0",
        "left": str(left),
        "compact": "1",
    }
    if event is not None:
        query["event"] = event
    separator = "&" if "?" in announce_url else "?"
    # quote, not urlencode's default quote_plus: opentracker reads "+" as a literal
    # plus sign, so a 0x20 byte in an infohash must travel as %20.
    url = announce_url + separator + urllib.parse.urlencode(query, quote_via=urllib.parse.quote)
    return _get_bencoded(url, timeout_s)


def decode_compact_peers(blob: bytes) -> list[tuple[str, int]]:
    """Decode a compact IPv4 peer list (BEP 23: 4 address bytes and 2 port bytes per peer)."""
    assert len(blob) % 6 == 0, f"compact peer list length {len(blob)} is not a multiple of 6"
    peers = []
    for offset in range(0, len(blob), 6):
        address = socket.inet_ntoa(blob[offset : offset + 4])
        port = int.from_bytes(blob[offset + 4 : offset + 6], "big")
        peers.append((address, port))
    return peers


def _get_bytes(url: str, timeout_s: float) -> bytes:
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as response:
            body: bytes = response.read()
            return body
    except urllib.error.HTTPError as error:
        body = error.read()
        raise AssertionError(f"GET {url} returned HTTP {error.code}: {body[:300]!r}") from error


def _get_bencoded(url: str, timeout_s: float) -> dict[bytes, Any]:
    body = _get_bytes(url, timeout_s)
    try:
        reply = bencode2.bdecode(body)
    except Exception as error:
        raise AssertionError(f"GET {url} returned invalid bencode: {body[:300]!r}") from error
    assert isinstance(reply, dict), f"GET {url} returned a bencoded {type(reply).__name__}, expected a dict"
    return reply


# ---------------------------------------------------------------- opentracker


def _socket_inodes(pid: int) -> set[str]:
    """Return the inodes of the sockets that process `pid` has open, empty after it exited."""
    try:
        fd_entries = list(Path(f"/proc/{pid}/fd").iterdir())
    except FileNotFoundError:
        return set()
    socket_inodes = set()
    for entry in fd_entries:
        try:
            target = os.readlink(entry)
        except FileNotFoundError:
            continue
        if target.startswith("socket:["):
            socket_inodes.add(target[len("socket:[") : -1])
    return socket_inodes


def _listening_tcp_ports(pid: int) -> list[int]:
    """Return the TCP ports that process `pid` listens on, read from /proc (Linux only).

    Returns an empty list while the process has no listening socket or after it exited.
    """
    socket_inodes = _socket_inodes(pid)
    ports = []
    for table in ("tcp", "tcp6"):
        try:
            lines = Path(f"/proc/{pid}/net/{table}").read_text().splitlines()[1:]
        except FileNotFoundError:
            continue
        for line in lines:
            fields = line.split()
            local_address, state, inode = fields[1], fields[3], fields[9]
            # State 0A is TCP_LISTEN in the kernel's numbering.
            if state == "0A" and inode in socket_inodes:
                ports.append(int(local_address.rsplit(":", 1)[1], 16))
    return ports


def _bound_udp_ports(pid: int) -> list[int]:
    """Return the local ports of the UDP sockets of process `pid`, read from /proc (Linux only)."""
    socket_inodes = _socket_inodes(pid)
    ports = []
    for table in ("udp", "udp6"):
        try:
            lines = Path(f"/proc/{pid}/net/{table}").read_text().splitlines()[1:]
        except FileNotFoundError:
            continue
        for line in lines:
            fields = line.split()
            if fields[9] in socket_inodes:
                ports.append(int(fields[1].rsplit(":", 1)[1], 16))
    return ports


class OpenTracker:
    """Debian's opentracker on 127.0.0.1 at a port the OS picks, serving only the infohashes passed to `allow`.

    It serves HTTP on `port` and UDP (BEP 15) on `udp_port`, two ports the OS picks.

    Debian builds opentracker with a whitelist, so an announce for any other
    infohash gets a `failure reason`. Started as root, opentracker chroots to
    tracker.rootdir and drops to user nobody. Started as another user, it only
    changes into that directory. Either way the whitelist path in the config is
    relative to it. Stats are opened to 127.0.0.1 so tests can read opentracker's
    announce counter. The opentracker behavior described in this module was
    checked against Debian's package 0.0~git20210823.110868e-3.
    """

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.config_path = workdir / "opentracker.conf"
        self.whitelist_path = workdir / "whitelist.txt"
        self._process: ManagedProcess | None = None
        self.port = 0
        self.udp_port = 0

    def start(self) -> None:
        executable = require_tool("opentracker")
        # opentracker skips lines that do not start with 40 hex digits. A comment keeps
        # the file non-empty, because an empty file makes it print a misleading
        # "Can't open accesslist file" warning.
        self.whitelist_path.write_text("# infohashes allowed by the tests, one per line\n")
        self.config_path.write_text(
            f"listen.tcp {LOOPBACK}:0\n"
            f"listen.udp {LOOPBACK}:0\n"
            f"tracker.rootdir {self.workdir}\n"
            "access.whitelist whitelist.txt\n"
            f"access.stats {LOOPBACK}\n"
        )
        self._process = ManagedProcess("opentracker", [executable, "-f", str(self.config_path)], self.workdir)
        # opentracker prints nothing once it listens, so poll /proc for its listening socket.
        ports = wait_until(
            lambda: _listening_tcp_ports(self.pid),
            STARTUP_TIMEOUT_S,
            "opentracker to listen on a TCP port",
            watched=[self.process],
        )
        assert len(ports) == 1, f"opentracker listens on {ports}, expected exactly one TCP port"
        self.port = ports[0]

        udp_ports = wait_until(
            lambda: _bound_udp_ports(self.pid),
            STARTUP_TIMEOUT_S,
            "opentracker to bind a UDP port",
            watched=[self.process],
        )
        assert len(udp_ports) == 1, f"opentracker bound UDP ports {udp_ports}, expected exactly one"
        self.udp_port = udp_ports[0]

    @property
    def process(self) -> ManagedProcess:
        assert self._process is not None, "opentracker is not started"
        return self._process

    @property
    def pid(self) -> int:
        return self.process.pid

    @property
    def base_url(self) -> str:
        return f"http://{LOOPBACK}:{self.port}"

    @property
    def announce_url(self) -> str:
        return f"{self.base_url}/announce"

    @property
    def udp_announce_url(self) -> str:
        return f"udp://{LOOPBACK}:{self.udp_port}/announce"

    def allow(self, infohash: bytes) -> None:
        """Add `infohash` to the whitelist and return once opentracker accepts announces for it.

        A probe peer announces until the reply has no `failure reason`, then leaves
        with event=stopped, so the swarm is as before. The stopped announce cannot
        be the probe itself, because opentracker accepts event=stopped for any
        infohash, listed or not.
        """
        assert len(infohash) == 20, f"infohash must be 20 bytes, got {len(infohash)}"
        with self.whitelist_path.open("a") as whitelist:
            whitelist.write(infohash.hex() + "\n")
        os.kill(self.pid, signal.SIGHUP)

        probe_peer_id = random_peer_id(b"-RWPROBE-")
        probe_port = 1

        def probe_accepted() -> bool:
            reply = self.announce(infohash, peer_id=probe_peer_id, port=probe_port, left=1)
            return b"failure reason" not in reply

        # opentracker reloads the whitelist in the background and reports nothing when done.
        wait_until(
            probe_accepted,
            STARTUP_TIMEOUT_S,
            f"opentracker to accept infohash {infohash.hex()} after SIGHUP",
            watched=[self.process],
        )
        self.announce(infohash, peer_id=probe_peer_id, port=probe_port, left=1, event="stopped")

    def announce(
        self,
        infohash: bytes,
        *,
        peer_id: bytes,
        port: int,
        left: int = 0,
        event: str | None = None,
    ) -> dict[bytes, Any]:
        return http_announce(self.announce_url, infohash, peer_id=peer_id, port=port, left=left, event=event)

    def scrape(self, infohash: bytes) -> dict[bytes, int]:
        """Return opentracker's counts for `infohash` (`complete`, `incomplete`, `downloaded`), empty if unknown."""
        url = f"{self.base_url}/scrape?info_hash={urllib.parse.quote_from_bytes(infohash)}"
        reply = _get_bencoded(url, HTTP_TIMEOUT_S)
        files: dict[bytes, dict[bytes, int]] = reply.get(b"files", {})
        return files.get(infohash, {})

    def announce_count(self) -> int:
        """Return how many HTTP announces opentracker has handled since it started, over all infohashes.

        The counter also includes rejected announces and event=stopped ones, so
        compare two readings taken around the traffic under test.
        """
        body = _get_bytes(f"{self.base_url}/stats?mode=everything", HTTP_TIMEOUT_S)
        counter = ElementTree.fromstring(body).find("connections/tcp/announce")
        assert counter is not None and counter.text is not None, f"no connections/tcp/announce in stats: {body[:300]!r}"
        return int(counter.text)

    def udp_counters(self) -> dict[str, int]:
        """Return opentracker's UDP counters since it started: overall, connect, announce, scrape and missmatch.

        `missmatch` counts the requests whose connection id opentracker rejected, each answered
        with the error "Connection ID missmatch.".
        """
        body = _get_bytes(f"{self.base_url}/stats?mode=everything", HTTP_TIMEOUT_S)
        section = ElementTree.fromstring(body).find("connections/udp")
        assert section is not None, f"no connections/udp in stats: {body[:300]!r}"
        return {child.tag: int(child.text or "0") for child in section}

    def wait_for_seeders(
        self, infohash: bytes, count: int = 1, *, watched: Sequence[ManagedProcess] = ()
    ) -> None:
        """Return once opentracker lists at least `count` complete peers for `infohash`."""
        # Neither opentracker nor aria2c reports that a seeder's announce arrived, so poll the scrape.
        wait_until(
            lambda: self.scrape(infohash).get(b"complete", 0) >= count,
            STARTUP_TIMEOUT_S,
            f"{count} seeder(s) of {infohash.hex()} on opentracker",
            watched=[*watched, self.process],
        )

    def stop(self) -> None:
        if self._process is not None:
            self._process.stop()


@pytest.fixture
def opentracker(tmp_path: Path) -> Iterator[OpenTracker]:
    """A running opentracker, stopped at teardown."""
    require_tool("opentracker")
    tracker = OpenTracker(new_workdir(tmp_path, "opentracker"))
    try:
        tracker.start()
        yield tracker
    finally:
        tracker.stop()


# ---------------------------------------------------------------- webtorrent bittorrent-tracker

WEBTORRENT_DIR = REPO_ROOT / "tests" / "webtorrent"
WEBTORRENT_INSTALL = "npm ci --prefix tests/webtorrent --ignore-scripts"


def require_webtorrent_package() -> None:
    """Skip the test when the bittorrent-tracker npm package is not installed; fail instead with CI=true."""
    if (WEBTORRENT_DIR / "node_modules" / "bittorrent-tracker" / "package.json").is_file():
        return
    message = f"npm package bittorrent-tracker not found under {WEBTORRENT_DIR}; install it with: {WEBTORRENT_INSTALL}"
    if os.environ.get("CI") == "true":
        pytest.fail(message)
    pytest.skip(message)


class WebtorrentTracker(ManagedProcess):
    """The webtorrent bittorrent-tracker server, run by tests/webtorrent/server.mjs.

    It serves HTTP and UDP on 127.0.0.1 and UDP on ::1, three ports the OS picks, and
    accepts every infohash. The script prints the ports as one JSON line on stdout, which
    a background thread reads and copies to `stdout_path`. The behavior relied on here
    was checked against bittorrent-tracker 11.2.3.
    """

    def __init__(self, workdir: Path) -> None:
        executable = require_tool("node")
        self.http_port = 0
        self.udp_port = 0
        self.udp6_port = 0
        self._first_line: queue.Queue[str] = queue.Queue(maxsize=1)
        super().__init__(
            "bittorrent-tracker", [executable, str(WEBTORRENT_DIR / "server.mjs")], workdir, capture_stdout=True
        )
        self._reader = threading.Thread(target=self._copy_stdout, name="bittorrent-tracker-stdout", daemon=True)
        self._reader.start()

    def _copy_stdout(self) -> None:
        assert self.popen.stdout is not None
        first = True
        with self.stdout_path.open("wb") as copy:
            for raw_line in self.popen.stdout:
                copy.write(raw_line)
                copy.flush()
                if first:
                    self._first_line.put(raw_line.decode(errors="replace"))
                    first = False
        if first:
            self._first_line.put("")  # stdout closed before the first line

    def wait_for_ports(self, timeout_s: float = STARTUP_TIMEOUT_S) -> None:
        """Read the ports from the first stdout line; fail the test if none arrives within `timeout_s`."""
        try:
            line = self._first_line.get(timeout=timeout_s)
        except queue.Empty:
            pytest.fail(f"timed out after {timeout_s:.1f} s waiting for bittorrent-tracker's ports\n{self.describe()}")
        try:
            ports = json.loads(line)
        except ValueError:
            self.poll()
            pytest.fail(f"bittorrent-tracker printed {line!r} instead of its ports as JSON\n{self.describe()}")
        self.http_port = int(ports["http"])
        self.udp_port = int(ports["udp"])
        self.udp6_port = int(ports["udp6"])

    @property
    def http_announce_url(self) -> str:
        return f"http://{LOOPBACK}:{self.http_port}/announce"

    @property
    def udp_announce_url(self) -> str:
        return f"udp://{LOOPBACK}:{self.udp_port}/announce"

    @property
    def udp6_announce_url(self) -> str:
        return f"udp://[::1]:{self.udp6_port}/announce"

    def stop(self, timeout_s: float = STOP_TIMEOUT_S) -> None:
        super().stop(timeout_s)
        self._reader.join(timeout_s)
        if self.popen.stdout is not None and not self._reader.is_alive():
            self.popen.stdout.close()


@pytest.fixture
def webtorrent_tracker(tmp_path: Path) -> Iterator[WebtorrentTracker]:
    """A running webtorrent bittorrent-tracker, stopped at teardown."""
    require_tool("node")
    require_webtorrent_package()
    tracker = WebtorrentTracker(new_workdir(tmp_path, "bittorrent-tracker"))
    try:
        tracker.wait_for_ports()
        yield tracker
    finally:
        tracker.stop()


# ---------------------------------------------------------------- torrents


def read_infohash(torrent_path: Path) -> bytes:
    """Return the SHA-1 of the bencoded info dict in `torrent_path`."""
    raw = torrent_path.read_bytes()
    metainfo = bencode2.bdecode(raw)
    # The infohash is defined over the info dict's bytes as stored in the file.
    # Re-encoding reproduces those bytes only for canonical bencode, which the
    # full-file round trip below proves.
    assert bencode2.bencode(metainfo) == raw, f"{torrent_path} is not canonical bencode"
    return hashlib.sha1(bencode2.bencode(metainfo[b"info"])).digest()


def sha256_of_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as content:
        for block in iter(lambda: content.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


@dataclasses.dataclass(frozen=True)
class TorrentFiles:
    """A single-file torrent made by mktorrent, and the content it describes."""

    torrent_path: Path
    content_path: Path
    infohash: bytes
    content_sha256: str
    size_bytes: int

    @property
    def content_dir(self) -> Path:
        return self.content_path.parent

    def with_announce(self, url: str) -> Path:
        """Write a copy of the .torrent whose only tracker is `url`, and return its path.

        Replaces `announce` and drops `announce-list`, then checks that the
        infohash is unchanged.
        """
        metainfo = bencode2.bdecode(self.torrent_path.read_bytes())
        metainfo[b"announce"] = url.encode()
        metainfo.pop(b"announce-list", None)
        url_tag = hashlib.sha1(url.encode()).hexdigest()[:10]
        path = self.torrent_path.with_name(f"{self.torrent_path.stem}-{url_tag}.torrent")
        path.write_bytes(bencode2.bencode(metainfo))

        rewritten_infohash = read_infohash(path)
        assert rewritten_infohash == self.infohash, (
            f"rewriting the tracker of {self.torrent_path} changed the infohash from "
            f"{self.infohash.hex()} to {rewritten_infohash.hex()}"
        )
        return path


def make_torrent(tmp_path: Path, size_bytes: int, announce_url: str) -> TorrentFiles:
    """Write `size_bytes` random bytes to a file and make a torrent of it with mktorrent."""
    executable = require_tool("mktorrent")
    workdir = new_workdir(tmp_path, "torrent")
    content_dir = workdir / "content"
    content_dir.mkdir()
    content_path = content_dir / "payload.bin"

    digest = hashlib.sha256()
    remaining = size_bytes
    with content_path.open("wb") as content:
        while remaining > 0:
            block = os.urandom(min(remaining, 1 << 20))
            content.write(block)
            digest.update(block)
            remaining -= len(block)

    torrent_path = workdir / "payload.torrent"
    # -d leaves out the creation date, which is outside the info dict anyway.
    argv = [executable, "-a", announce_url, "-d", "-o", str(torrent_path), str(content_path)]
    completed = subprocess.run(argv, cwd=workdir, capture_output=True, timeout=120, check=False)
    assert completed.returncode == 0, (
        f"mktorrent failed with exit code {completed.returncode}: {' '.join(argv)}\n"
        f"stdout: {completed.stdout.decode(errors='replace')}\n"
        f"stderr: {completed.stderr.decode(errors='replace')}"
    )

    return TorrentFiles(
        torrent_path=torrent_path,
        content_path=content_path,
        infohash=read_infohash(torrent_path),
        content_sha256=digest.hexdigest(),
        size_bytes=size_bytes,
    )


# ---------------------------------------------------------------- aria2c


def aria2_common_flags() -> list[str]:
    """Return the aria2c flags that keep every download on 127.0.0.1 and its trackers.

    DHT, LPD and peer exchange are off, so peers come only from the torrent's
    trackers. The aria2c 1.36 manual ties UDP tracker support to --enable-dht, so
    only HTTP trackers work with these flags. aria2c exits by itself if the pytest
    process that started it dies.
    """
    return [
        "--no-conf=true",  # ignore any ~/.aria2/aria2.conf, which could turn DHT back on
        "--enable-dht=false",
        "--enable-dht6=false",
        "--bt-enable-lpd=false",
        "--enable-peer-exchange=false",
        f"--interface={LOOPBACK}",
        "--disable-ipv6=true",
        "--follow-torrent=false",
        "--summary-interval=0",
        "--console-log-level=warn",
        "--bt-tracker-connect-timeout=5",
        "--bt-tracker-timeout=15",
        f"--stop-with-process={os.getpid()}",
    ]


class Aria2Process(ManagedProcess):
    """An aria2c process with its BitTorrent listen port and its info-level log file."""

    def __init__(self, name: str, argv: Sequence[str], workdir: Path, *, listen_port: int, log_path: Path) -> None:
        super().__init__(name, argv, workdir)
        self.listen_port = listen_port
        self.extra_log_path = log_path


@dataclasses.dataclass(frozen=True)
class LeecherResult:
    process: Aria2Process
    downloaded_path: Path
    elapsed_s: float


class Aria2:
    """aria2c seeders and leechers of one test, with their files under its tmp_path."""

    def __init__(self, tmp_path: Path) -> None:
        self._tmp_path = tmp_path
        self._processes: list[Aria2Process] = []

    def start_seeder(
        self, torrent: TorrentFiles, *, torrent_path: Path | None = None, seed_minutes: float = 5.0
    ) -> Aria2Process:
        """Start aria2c seeding `torrent.content_path`, announcing to the trackers in `torrent_path`.

        aria2c checks every piece of the complete file before it seeds. It keeps
        seeding, whatever the share ratio, for `seed_minutes` or until teardown.
        """
        executable = require_tool("aria2c")
        workdir = new_workdir(self._tmp_path, "seeder")
        listen_port = free_tcp_port()
        log_path = workdir / "aria2.log"
        argv = [
            executable,
            *aria2_common_flags(),
            f"--dir={torrent.content_dir}",
            "--check-integrity=true",
            "--seed-ratio=0.0",
            f"--seed-time={seed_minutes}",
            f"--listen-port={listen_port}",
            f"--log={log_path}",
            "--log-level=info",
            str(torrent_path or torrent.torrent_path),
        ]
        seeder = Aria2Process("seeder", argv, workdir, listen_port=listen_port, log_path=log_path)
        self._processes.append(seeder)
        return seeder

    def run_leecher(
        self,
        torrent: TorrentFiles,
        torrent_path: Path,
        *,
        timeout_s: float,
        tracker_interval_s: int | None = None,
        watched: Sequence[ManagedProcess] = (),
        extra_flags: Sequence[str] = (),
    ) -> LeecherResult:
        """Download `torrent` with aria2c from the trackers in `torrent_path`, and wait for aria2c to exit.

        Fails the test if aria2c runs longer than `timeout_s` or exits with an error.
        The message includes the output of the leecher and of every process in `watched`.
        `tracker_interval_s` makes aria2c re-announce at that fixed interval instead
        of the one the tracker sends. `extra_flags` follow the common flags, and where
        both set one option, aria2c 1.36 uses the later value.
        """
        executable = require_tool("aria2c")
        workdir = new_workdir(self._tmp_path, "leecher")
        download_dir = workdir / "download"
        download_dir.mkdir()
        listen_port = free_tcp_port()
        log_path = workdir / "aria2.log"
        argv = [
            executable,
            *aria2_common_flags(),
            f"--dir={download_dir}",
            "--seed-time=0",
            f"--listen-port={listen_port}",
            f"--log={log_path}",
            "--log-level=info",
        ]
        if tracker_interval_s is not None:
            argv.append(f"--bt-tracker-interval={tracker_interval_s}")
        argv.extend(extra_flags)
        argv.append(str(torrent_path))

        started = time.monotonic()
        leecher = Aria2Process("leecher", argv, workdir, listen_port=listen_port, log_path=log_path)
        self._processes.append(leecher)
        try:
            leecher.popen.wait(timeout_s)
        except subprocess.TimeoutExpired:
            leecher.stop()
            pytest.fail(
                f"aria2c leecher did not finish within {timeout_s:.0f} s\n"
                f"{describe_processes([leecher, *watched])}"
            )
        elapsed_s = time.monotonic() - started

        assert leecher.returncode == 0, (
            f"aria2c leecher exited with code {leecher.returncode}\n{describe_processes([leecher, *watched])}"
        )
        return LeecherResult(leecher, download_dir / torrent.content_path.name, elapsed_s)

    def stop_all(self) -> None:
        for process in self._processes:
            process.stop()


@pytest.fixture
def aria2(tmp_path: Path) -> Iterator[Aria2]:
    """An `Aria2` for one test, which stops every aria2c it started at teardown."""
    require_tool("aria2c")
    runner = Aria2(tmp_path)
    try:
        yield runner
    finally:
        runner.stop_all()


# ---------------------------------------------------------------- aggregator service


class RunningService(ManagedProcess):
    """The aggregator running as `python -m aggregator --config FILE`.

    A background thread reads stdout, one JSON object per line, so the pipe never
    fills. It copies every line to `stdout_path` and keeps it in `log_lines`, and
    keeps each object that parses in `log_records`. Use it as a context manager,
    or call `stop`.
    """

    def __init__(self, workdir: Path, config: dict[str, Any]) -> None:
        self.config_path = workdir / "config.yaml"
        # An OS-chosen admin port, so that tests never collide on the default 9090.
        config = {"admin_listen": f"{LOOPBACK}:0", **config}
        self.config_path.write_text(yaml.safe_dump(config, sort_keys=False))
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
        env["PYTHONUNBUFFERED"] = "1"
        argv = [sys.executable, "-m", "aggregator", "--config", str(self.config_path)]

        self.log_lines: list[str] = []
        self.log_records: list[dict[str, Any]] = []
        self.host = ""
        self.port = 0
        self._condition = threading.Condition()
        self._stdout_closed = False
        super().__init__("aggregator", argv, workdir, env=env, capture_stdout=True)
        self._reader = threading.Thread(target=self._read_stdout, name="aggregator-stdout", daemon=True)
        self._reader.start()

    def _read_stdout(self) -> None:
        assert self.popen.stdout is not None
        with self.stdout_path.open("wb") as copy:
            for raw_line in self.popen.stdout:
                copy.write(raw_line)
                copy.flush()
                line = raw_line.decode(errors="replace").rstrip("\n")
                try:
                    record = json.loads(line)
                except ValueError:
                    record = None
                with self._condition:
                    self.log_lines.append(line)
                    if isinstance(record, dict):
                        self.log_records.append(record)
                    self._condition.notify_all()
        with self._condition:
            self._stdout_closed = True
            self._condition.notify_all()

    def wait_for_log(
        self, predicate: Callable[[dict[str, Any]], bool], timeout_s: float, description: str
    ) -> dict[str, Any]:
        """Return the first log record, logged so far or later, for which `predicate` is true.

        Fails the test if none arrives within `timeout_s` or stdout closes first.
        """
        deadline = time.monotonic() + timeout_s
        scanned = 0
        failure = ""
        with self._condition:
            while True:
                for record in self.log_records[scanned:]:
                    if predicate(record):
                        return record
                scanned = len(self.log_records)
                if self._stdout_closed:
                    failure = f"aggregator closed stdout before logging {description}"
                    break
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    failure = f"timed out after {timeout_s:.1f} s waiting for the aggregator to log {description}"
                    break
                self._condition.wait(remaining)
        self.poll()
        pytest.fail(f"{failure}\n{self.describe()}")

    def wait_until_listening(self, timeout_s: float = STARTUP_TIMEOUT_S) -> None:
        record = self.wait_for_log(
            lambda item: item.get("event") == "listening" and item.get("transport") == "http",
            timeout_s,
            'the {"event": "listening", "transport": "http"} line',
        )
        self.host = str(record["host"])
        self.port = int(record["port"])

    @property
    def announce_url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}/announce"

    def stop(self, timeout_s: float = STOP_TIMEOUT_S) -> None:
        super().stop(timeout_s)
        self._reader.join(timeout_s)
        if self.popen.stdout is not None and not self._reader.is_alive():
            self.popen.stdout.close()

    def wait_for_exit(self, timeout_s: float = STOP_TIMEOUT_S) -> int:
        """Wait until the process exits by itself and its last log line is read; return the exit code.

        Fails the test if the process still runs after `timeout_s`. Unlike `stop`, it sends no signal.
        """
        try:
            code = self.popen.wait(timeout_s)
        except subprocess.TimeoutExpired:
            pytest.fail(f"the aggregator did not exit within {timeout_s:.1f} s\n{self.describe()}")
        self._reader.join(timeout_s)
        return code

    def __enter__(self) -> RunningService:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


def start_aggregator(tmp_path: Path, config: dict[str, Any]) -> RunningService:
    """Write `config` as YAML, start the aggregator on it, and return once it logs that it listens on HTTP.

    Give `listen: "127.0.0.1:0"` in `config` so the OS picks the port. The
    returned service is a context manager that stops the process on exit.
    """
    service = RunningService(new_workdir(tmp_path, "aggregator"), config)
    try:
        service.wait_until_listening()
    except BaseException:
        service.stop()
        raise
    return service
