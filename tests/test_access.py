"""Infohash denylist and allowlist: file format, reloads, start errors and the effect on announces."""

import asyncio
import json
import os
import signal
import sys
from pathlib import Path

import pytest
import structlog

from aggregator.access import MAX_LOGGED_BAD_LINES, AccessLists, InfohashFile, parse_infohash_list
from aggregator.errors import ConfigError
from aggregator.service import Service
from tests.service_harness import announce_query, fake_trackers, get_bencoded, scrape_query, serving, settings_for

REPO_ROOT = Path(__file__).resolve().parents[1]

DENIED = bytes(range(0x80, 0x94))
ALLOWED = bytes(range(0x20, 0x34))
OTHER = b"\x07" * 20


def write_list(path: Path, text: str, mtime_ns: int | None = None) -> None:
    """Write a list file and give it a distinct mtime, so that a change is seen even within one tick."""
    path.write_text(text)
    if mtime_ns is not None:
        os.utime(path, ns=(mtime_ns, mtime_ns))


# File format


def test_parse_accepts_comments_and_case() -> None:
    text = (
        b"\xef\xbb\xbf# private torrents\r\n"
        + DENIED.hex().upper().encode()
        + b"\r\n\n   \n"
        + ALLOWED.hex().encode()
        + b"  # trailing comment\n"
    )

    parsed = parse_infohash_list(text, "infohash_denylist", "deny.txt")

    assert parsed.info_hashes == {DENIED, ALLOWED}
    assert parsed.bad_lines == 0


def test_parse_skips_and_logs_bad_line() -> None:
    text = "\n".join(
        [
            DENIED.hex(),
            DENIED.hex()[:39],  # line 2: one digit short
            "zz" * 20,  # line 3: not hex
            ALLOWED.hex() + "0",  # line 4: one digit too many
            OTHER.hex(),
        ]
    ).encode()

    with structlog.testing.capture_logs() as records:
        parsed = parse_infohash_list(text, "infohash_denylist", "/etc/deny.txt")

    assert parsed.info_hashes == {DENIED, OTHER}
    assert parsed.bad_lines == 3
    bad = [record for record in records if record["event"] == "access.list.invalid_line"]
    assert [record["line"] for record in bad] == [2, 3, 4]
    assert all(record["path"] == "/etc/deny.txt" for record in bad)
    assert all(record["key"] == "infohash_denylist" for record in bad)
    assert all(record["log_level"] == "warning" for record in bad)


def test_parse_caps_logged_bad_lines() -> None:
    text = "\n".join(["bad"] * (MAX_LOGGED_BAD_LINES + 5)).encode()

    with structlog.testing.capture_logs() as records:
        parsed = parse_infohash_list(text, "infohash_allowlist", "allow.txt")

    assert parsed.bad_lines == MAX_LOGGED_BAD_LINES + 5
    assert len([record for record in records if record["event"] == "access.list.invalid_line"]) == MAX_LOGGED_BAD_LINES
    summary = [record for record in records if record["event"] == "access.list.invalid_lines_not_logged"]
    assert [record["count"] for record in summary] == [5]


# Deny, allow and both


def test_denylist_rejects_listed(tmp_path: Path) -> None:
    denylist = tmp_path / "deny.txt"
    write_list(denylist, DENIED.hex() + "\n")
    access = AccessLists(str(denylist), None)

    access.load()

    assert access.is_allowed(DENIED) is False
    assert access.is_allowed(ALLOWED) is True
    assert access.is_allowed(OTHER) is True


def test_allowlist_rejects_unlisted(tmp_path: Path) -> None:
    allowlist = tmp_path / "allow.txt"
    write_list(allowlist, ALLOWED.hex() + "\n")
    access = AccessLists(None, str(allowlist))

    access.load()

    assert access.is_allowed(ALLOWED) is True
    assert access.is_allowed(DENIED) is False
    assert access.is_allowed(OTHER) is False


def test_denylist_wins_over_allowlist(tmp_path: Path) -> None:
    denylist = tmp_path / "deny.txt"
    allowlist = tmp_path / "allow.txt"
    write_list(denylist, DENIED.hex() + "\n")
    write_list(allowlist, DENIED.hex() + "\n" + ALLOWED.hex() + "\n")
    access = AccessLists(str(denylist), str(allowlist))

    access.load()

    assert access.is_allowed(DENIED) is False
    assert access.is_allowed(ALLOWED) is True
    assert access.is_allowed(OTHER) is False


# Reloads


def test_reload_if_changed_picks_up_edit(tmp_path: Path) -> None:
    denylist = tmp_path / "deny.txt"
    write_list(denylist, DENIED.hex() + "\n", mtime_ns=1_000_000_000_000_000_000)
    access = AccessLists(str(denylist), None)
    access.load()

    assert access.reload_if_changed() is False

    write_list(denylist, OTHER.hex() + "\n", mtime_ns=1_000_000_001_000_000_000)
    assert access.reload_if_changed() is True

    assert access.is_allowed(DENIED) is True
    assert access.is_allowed(OTHER) is False
    assert access.reload_if_changed() is False


def test_reload_if_changed_sees_same_size_edit(tmp_path: Path) -> None:
    denylist = tmp_path / "deny.txt"
    write_list(denylist, DENIED.hex() + "\n", mtime_ns=1_000_000_000_000_000_000)
    access = AccessLists(str(denylist), None)
    access.load()

    write_list(denylist, ALLOWED.hex() + "\n", mtime_ns=1_000_000_000_000_000_001)  # same size, 1 ns later

    assert access.reload_if_changed() is True
    assert access.is_allowed(ALLOWED) is False


def test_vanished_file_keeps_last_list(tmp_path: Path) -> None:
    denylist = tmp_path / "deny.txt"
    write_list(denylist, DENIED.hex() + "\n")
    access = AccessLists(str(denylist), None)
    access.load()
    denylist.unlink()

    with structlog.testing.capture_logs() as records:
        assert access.reload_if_changed() is False
        assert access.reload_if_changed() is False  # still missing: no second warning

    assert access.is_allowed(DENIED) is False
    warnings = [record for record in records if record["event"] == "access.list.reload_failed"]
    assert len(warnings) == 1
    assert warnings[0]["log_level"] == "warning"
    assert warnings[0]["path"] == str(denylist)
    assert warnings[0]["kept"] == 1

    write_list(denylist, OTHER.hex() + "\n")
    assert access.reload_if_changed() is True
    assert access.is_allowed(DENIED) is True
    assert access.is_allowed(OTHER) is False


def test_forced_reload_reads_unchanged_file(tmp_path: Path) -> None:
    denylist = tmp_path / "deny.txt"
    write_list(denylist, DENIED.hex() + "\n", mtime_ns=1_000_000_000_000_000_000)
    access = AccessLists(str(denylist), None)
    access.load()
    # Same size and the same mtime as before, so only a forced reload (SIGHUP) notices.
    write_list(denylist, OTHER.hex() + "\n", mtime_ns=1_000_000_000_000_000_000)
    os.utime(denylist, ns=(1_000_000_000_000_000_000, 1_000_000_000_000_000_000))

    access.reload()

    assert access.is_allowed(OTHER) is False
    assert access.is_allowed(DENIED) is True


def test_bad_line_after_reload_keeps_rest(tmp_path: Path) -> None:
    denylist = tmp_path / "deny.txt"
    write_list(denylist, DENIED.hex() + "\n", mtime_ns=1_000_000_000_000_000_000)
    access = AccessLists(str(denylist), None)
    access.load()

    write_list(denylist, "oops\n" + OTHER.hex() + "\n", mtime_ns=1_000_000_002_000_000_000)
    assert access.reload_if_changed() is True

    assert access.is_allowed(OTHER) is False
    assert access.is_allowed(DENIED) is True


# Start errors


@pytest.mark.parametrize("key", ["infohash_denylist", "infohash_allowlist"])
async def test_missing_file_stops_start(tmp_path: Path, key: str) -> None:
    missing = tmp_path / "absent.txt"
    service = Service(settings_for([], **{key: str(missing)}))

    with pytest.raises(ConfigError) as raised:
        await service.start()
    await service.stop()

    message = str(raised.value)
    assert message == f"failed to read {key} {missing}: No such file or directory"
    assert "\n" not in message
    assert service.bound == []


def test_unreadable_file_stops_load(tmp_path: Path) -> None:
    file = InfohashFile("infohash_denylist", str(tmp_path))  # a directory cannot be read as a file

    with pytest.raises(ConfigError) as raised:
        file.load()

    assert str(raised.value).startswith(f"failed to read infohash_denylist {tmp_path}: ")


# Through the service


async def test_denied_hash_never_reaches_upstream(tmp_path: Path) -> None:
    denylist = tmp_path / "deny.txt"
    write_list(denylist, DENIED.hex() + "\n")
    async with fake_trackers(1) as trackers:
        async with serving(settings_for(trackers, infohash_denylist=str(denylist))) as (service, session, url):
            status, denied = await get_bencoded(session, f"{url}/announce?{announce_query(7001, DENIED)}")
            status, allowed = await get_bencoded(session, f"{url}/announce?{announce_query(7001, ALLOWED)}")
            status, scraped = await get_bencoded(session, f"{url}/scrape?{scrape_query(DENIED)}")
            announces = await trackers[0].wait_for_announces(1)
            assert service.dispatcher is not None
            await service.dispatcher.wait_until_idle()

            assert service.swarms.get(DENIED) is None
            assert service.table.get(DENIED) is None

    assert status == 200
    assert denied[b"failure reason"] == f"info_hash {DENIED.hex()} is not allowed on this tracker".encode()
    assert b"failure reason" not in allowed
    assert [recorded.fields["info_hash"] for recorded in announces] == [ALLOWED]
    assert scraped[b"files"] == {DENIED: {b"complete": 0, b"downloaded": 0, b"incomplete": 0}}


async def test_service_applies_changed_list(tmp_path: Path) -> None:
    allowlist = tmp_path / "allow.txt"
    write_list(allowlist, ALLOWED.hex() + "\n", mtime_ns=1_000_000_000_000_000_000)
    async with serving(settings_for([], infohash_allowlist=str(allowlist))) as (service, session, url):
        _, before = await get_bencoded(session, f"{url}/announce?{announce_query(7001, OTHER)}")

        write_list(allowlist, ALLOWED.hex() + "\n" + OTHER.hex() + "\n", mtime_ns=1_000_000_003_000_000_000)
        assert service.access.reload_if_changed() is True
        _, after = await get_bencoded(session, f"{url}/announce?{announce_query(7001, OTHER)}")

    assert before[b"failure reason"] == f"info_hash {OTHER.hex()} is not allowed on this tracker".encode()
    assert b"failure reason" not in after
    assert after[b"incomplete"] == 1


async def test_reload_callback_rereads_lists(tmp_path: Path) -> None:
    denylist = tmp_path / "deny.txt"
    write_list(denylist, DENIED.hex() + "\n", mtime_ns=1_000_000_000_000_000_000)
    async with serving(settings_for([], infohash_denylist=str(denylist))) as (service, session, url):
        write_list(denylist, OTHER.hex() + "\n", mtime_ns=1_000_000_000_000_000_000)

        reload = service.reload_access_lists()
        assert reload is not None
        await asyncio.wait_for(reload, timeout=5)

        assert service.tracker.is_allowed(DENIED) is True
        assert service.tracker.is_allowed(OTHER) is False


async def test_reload_drops_newly_denied_swarm(tmp_path: Path) -> None:
    denylist = tmp_path / "deny.txt"
    write_list(denylist, DENIED.hex() + "\n", mtime_ns=1_000_000_000_000_000_000)
    async with fake_trackers(1) as trackers:
        settings = settings_for(trackers, infohash_denylist=str(denylist))
        async with serving(settings) as (service, session, url):
            await get_bencoded(session, f"{url}/announce?{announce_query(7001, OTHER)}")
            await trackers[0].wait_for_announces(1)
            assert service.dispatcher is not None
            await service.dispatcher.wait_until_idle()

            write_list(denylist, OTHER.hex() + "\n", mtime_ns=1_000_000_000_000_000_000)
            reload = service.reload_access_lists()
            assert reload is not None
            await asyncio.wait_for(reload, timeout=5)

            assert service.swarms.get(OTHER) is None
            assert service.table.get(OTHER) is None
            assert service.cache.get(OTHER) is None
            assert len(service.index) == 0
            await service.dispatcher.wait_until_idle()
            assert len(trackers[0].announces) == 1  # no upstream `stopped` for a denied torrent


# The command line: SIGHUP and the start error


def cli_environment() -> dict[str, str]:
    environment = {name: value for name, value in os.environ.items() if not name.startswith("AGGREGATOR_")}
    environment["AGGREGATOR_ADMIN_LISTEN"] = ""

    return environment


async def read_event(stdout: asyncio.StreamReader, event: str) -> dict[str, object]:
    """Read JSON log lines until one with `event`; non-JSON lines are skipped."""
    while True:
        line = await stdout.readline()
        assert line, f"the process exited before logging {event}"
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if isinstance(record, dict) and record.get("event") == event:
            return record


async def test_sighup_reloads_lists(tmp_path: Path) -> None:
    denylist = tmp_path / "deny.txt"
    write_list(denylist, DENIED.hex() + "\n")
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "aggregator",
        "--listen",
        "127.0.0.1:0",
        "--infohash-denylist",
        str(denylist),
        cwd=REPO_ROOT,
        env=cli_environment(),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.DEVNULL,
    )
    assert process.stdout is not None
    try:
        first = await asyncio.wait_for(read_event(process.stdout, "access.list.loaded"), timeout=20)
        await asyncio.wait_for(read_event(process.stdout, "listening"), timeout=20)
        write_list(denylist, DENIED.hex() + "\n" + OTHER.hex() + "\n")

        process.send_signal(signal.SIGHUP)
        second = await asyncio.wait_for(read_event(process.stdout, "access.list.loaded"), timeout=20)

        process.send_signal(signal.SIGTERM)
        await asyncio.wait_for(read_event(process.stdout, "drain.finished"), timeout=20)
        return_code = await asyncio.wait_for(process.wait(), timeout=20)
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()

    assert first["info_hashes"] == 1
    assert second["info_hashes"] == 2
    assert return_code == 0


async def test_cli_missing_list_exits(tmp_path: Path) -> None:
    missing = tmp_path / "absent.txt"
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "aggregator",
        "--listen",
        "127.0.0.1:0",
        "--infohash-denylist",
        str(missing),
        cwd=REPO_ROOT,
        env=cli_environment(),
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        _, stderr = await asyncio.wait_for(process.communicate(), timeout=20)
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()

    assert process.returncode == 2
    assert stderr.decode().splitlines() == [
        f"aggregator: failed to read infohash_denylist {missing}: No such file or directory"
    ]
