"""Infohash access lists: a denylist and an allowlist file, reloaded when they change or on SIGHUP.

Each file contains one infohash per line as 40 hex digits, in either case. Blank lines are skipped,
and `#` starts a comment, on its own line or after a hash. An invalid line is logged with its file
and line number and skipped, and the rest of the file still loads.

A file that is missing or unreadable at start stops the start (ConfigError). A file that
becomes unreadable later keeps the last list that loaded and logs a warning, because an
operator who deletes or rewrites a file by accident must not open the tracker to every infohash.

Reloads may run in a worker thread (asyncio.to_thread), so they hold a lock, and each one
replaces the frozen sets that `is_allowed` reads in a single assignment.
"""

import os
import re
import threading
from dataclasses import dataclass

import structlog

from aggregator.errors import ConfigError

log = structlog.get_logger("aggregator.access")

_HEX_INFOHASH = re.compile(rb"[0-9A-Fa-f]{40}")
_UTF8_BOM = b"\xef\xbb\xbf"
# Invalid lines logged one by one per load. The rest are only counted, so that a wrong file
# (such as a torrent file named by mistake) does not flood the log.
MAX_LOGGED_BAD_LINES = 10


@dataclass(frozen=True, slots=True)
class _FileStamp:
    """The `os.stat` fields that identify one version of a file; a different stamp means a changed file."""

    mtime_ns: int
    size: int
    inode: int
    device: int


@dataclass(frozen=True, slots=True)
class ParsedList:
    """The infohashes of one file, and the number of invalid lines skipped."""

    info_hashes: frozenset[bytes]
    bad_lines: int


def parse_infohash_list(data: bytes, key: str, path: str) -> ParsedList:
    """Parse the content of a list file, logging each invalid line (up to a limit) with its line number."""
    info_hashes: set[bytes] = set()
    bad_lines = 0
    for line_number, raw_line in enumerate(data.removeprefix(_UTF8_BOM).splitlines(), start=1):
        text = raw_line.split(b"#", 1)[0].strip()
        if not text:
            continue

        if _HEX_INFOHASH.fullmatch(text):
            info_hashes.add(bytes.fromhex(text.decode("ascii")))
            continue

        bad_lines += 1
        if bad_lines <= MAX_LOGGED_BAD_LINES:
            log.warning(
                "access.list.invalid_line",
                key=key,
                path=path,
                line=line_number,
                content=ascii(text[:60].decode("latin-1")),
                expected="40 hex digits",
            )

    if bad_lines > MAX_LOGGED_BAD_LINES:
        log.warning("access.list.invalid_lines_not_logged", key=key, path=path, count=bad_lines - MAX_LOGGED_BAD_LINES)

    return ParsedList(frozenset(info_hashes), bad_lines)


class InfohashFile:
    """One list file (the denylist or the allowlist) and the infohashes last loaded from it."""

    def __init__(self, key: str, path: str) -> None:
        self.key = key  # the settings key, for messages: infohash_denylist or infohash_allowlist
        self.path = path
        self.info_hashes: frozenset[bytes] = frozenset()
        self.loaded = False
        self._stamp: _FileStamp | None = None

    def load(self) -> None:
        """Read the file at start. Raises ConfigError naming the key and the path when it cannot be read."""
        try:
            self._read()
        except OSError as error:
            raise ConfigError(f"failed to read {self.key} {self.path}: {error.strerror or error}") from None

    def reload(self) -> bool:
        """Read the file again. On failure, keep the last list, log a warning and return False."""
        try:
            self._read()
        except OSError as error:
            self._stamp = None  # the file is read again as soon as it is back
            log.warning(
                "access.list.reload_failed",
                key=self.key,
                path=self.path,
                error=error.strerror or str(error),
                kept=len(self.info_hashes),
            )
            return False

        return True

    def reload_if_changed(self) -> bool:
        """Reload the file if its mtime, size or inode changed since the last read, and return whether it did."""
        stamp = _stat(self.path)
        if stamp is not None and stamp == self._stamp:
            return False
        if stamp is None and self._stamp is None and self.loaded:
            return False  # still missing: its warning was logged when it went away

        return self.reload()

    def _read(self) -> None:
        # The stamp is taken before the read: a write that lands during the read changes the
        # mtime again, so the next poll reads the file once more.
        stamp = _stat(self.path)
        with open(self.path, "rb") as file:
            data = file.read()

        parsed = parse_infohash_list(data, self.key, self.path)
        self.info_hashes = parsed.info_hashes
        self._stamp = stamp
        self.loaded = True
        log.info(
            "access.list.loaded",
            key=self.key,
            path=self.path,
            info_hashes=len(parsed.info_hashes),
            invalid_lines=parsed.bad_lines,
        )


class AccessLists:
    """The configured denylist and allowlist, and the `is_allowed` check that Tracker calls."""

    def __init__(self, denylist_path: str | None, allowlist_path: str | None) -> None:
        self.denylist = InfohashFile("infohash_denylist", denylist_path) if denylist_path is not None else None
        self.allowlist = InfohashFile("infohash_allowlist", allowlist_path) if allowlist_path is not None else None
        self._denied: frozenset[bytes] = frozenset()
        self._allowed: frozenset[bytes] | None = None  # None while no allowlist is configured
        self._lock = threading.Lock()

    @property
    def configured(self) -> bool:
        return self.denylist is not None or self.allowlist is not None

    def _files(self) -> list[InfohashFile]:
        return [file for file in (self.denylist, self.allowlist) if file is not None]

    def load(self) -> None:
        """Read every configured file at start. Raises ConfigError for one that cannot be read."""
        with self._lock:
            for file in self._files():
                file.load()
            self._publish()

        if self.allowlist is not None and not self.allowlist.info_hashes:
            log.warning("access.allowlist.empty", path=self.allowlist.path, detail="every infohash is rejected")

    def is_allowed(self, info_hash: bytes) -> bool:
        """Return False for a denylisted infohash, and with an allowlist, for every unlisted one."""
        if info_hash in self._denied:
            return False

        allowed = self._allowed

        return allowed is None or info_hash in allowed

    def reload(self) -> None:
        """Read every configured file again, whether it changed or not (SIGHUP)."""
        with self._lock:
            for file in self._files():
                file.reload()
            self._publish()

    def reload_if_changed(self) -> bool:
        """Reload the files whose mtime, size or inode changed, and return whether any was read."""
        with self._lock:
            changed = [file.reload_if_changed() for file in self._files()]
            if any(changed):
                self._publish()

        return any(changed)

    def _publish(self) -> None:
        self._denied = self.denylist.info_hashes if self.denylist is not None else frozenset()
        self._allowed = self.allowlist.info_hashes if self.allowlist is not None else None


def _stat(path: str) -> _FileStamp | None:
    try:
        result = os.stat(path)
    except OSError:
        return None

    return _FileStamp(result.st_mtime_ns, result.st_size, result.st_ino, result.st_dev)
