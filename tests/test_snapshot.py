"""The state snapshot: written at stop, loaded at start, by two in-process services in a row."""

from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
import structlog
from aiohttp import web

from aggregator.batch import UpstreamEvent
from aggregator.config import ForwarderConfig, ListenAddress, Settings
from aggregator.forwarder import ForwarderState
from aggregator.service import Service
from tests.fake_clock import FakeClock
from tests.fake_tracker import FakeTracker, RecordedAnnounce, compact_peer
from tests.service_harness import announce_query, get_bencoded, serving

INFO_HASHES = [bytes([0x30 + number]) * 20 for number in range(3)]
NEW_INFO_HASH = bytes([0x7E]) * 20
# How far apart the two runs may measure "now": the real time between the stop and the start.
TIME_TOLERANCE_S = 2.0


def forwarder(name: str, tracker: FakeTracker) -> ForwarderConfig:
    return ForwarderConfig(uri=tracker.announce_url, name=name, ip=None, host=None)


def snapshot_settings(forwarders: list[ForwarderConfig], state_file: Path, **overrides: Any) -> Settings:
    settings = Settings(
        listen=(ListenAddress("127.0.0.1", 0),),
        forwarders=tuple(forwarders),
        first_announce_wait_ms=3000,
        admin_listen=None,
        state_file=str(state_file),
        drain_timeout_s=5.0,
    )

    return replace(settings, **overrides)


async def announce(
    session: aiohttp.ClientSession, base_url: str, port: int, info_hash: bytes, **extra: str
) -> dict[bytes, Any]:
    status, reply = await get_bencoded(session, f"{base_url}/announce?{announce_query(port, info_hash, **extra)}")
    assert status == 200
    assert b"failure reason" not in reply, reply

    return reply


def info_hashes_of(announces: list[RecordedAnnounce]) -> list[bytes]:
    return [recorded.fields["info_hash"] for recorded in announces]


def temporary_files(folder: Path) -> list[str]:
    return sorted(path.name for path in folder.iterdir() if path.name.endswith(".tmp"))


def edit_snapshot(path: Path, **changes: Any) -> None:
    document = orjson.loads(path.read_bytes())
    document.update(changes)
    path.write_bytes(orjson.dumps(document))


@pytest.fixture
async def trackers() -> AsyncIterator[dict[str, FakeTracker]]:
    """Three fake upstream trackers: alpha and beta reply with one peer each, gamma is spare."""
    found = {
        "alpha": FakeTracker(
            reply={b"interval": 1800, b"tracker id": b"tid-alpha", b"peers": compact_peer("10.1.1.1", 6000)}
        ),
        "beta": FakeTracker(reply={b"interval": 2400, b"peers": compact_peer("10.2.2.2", 6001)}),
        "gamma": FakeTracker(reply={b"interval": 1800, b"peers": compact_peer("10.3.3.3", 6002)}),
    }
    for tracker in found.values():
        await tracker.start()
    yield found
    for tracker in found.values():
        await tracker.stop()


async def fill_first_run(
    service: Service, session: aiohttp.ClientSession, base_url: str, upstreams: list[FakeTracker]
) -> None:
    """Announce two peers on the first infohash and one on each other, then wait for the upstreams."""
    await announce(session, base_url, 7001, INFO_HASHES[0])
    await announce(session, base_url, 7002, INFO_HASHES[0], left="0")
    await announce(session, base_url, 7003, INFO_HASHES[1])
    await announce(session, base_url, 7004, INFO_HASHES[2])
    for tracker in upstreams:
        await tracker.wait_for_announces(3)
    assert service.dispatcher is not None
    await service.dispatcher.wait_until_idle()


# ---------------------------------------------------------------- round trip


async def test_round_trip_restores_state(tmp_path: Path, trackers: dict[str, FakeTracker]) -> None:
    state_file = tmp_path / "state.json"
    trackers["gamma"].reply = lambda recorded: web.Response(status=429, headers={"Retry-After": "600"})
    forwarders = [forwarder(name, trackers[name]) for name in ("alpha", "beta", "gamma")]
    settings = snapshot_settings(forwarders, state_file, peer_ttl=7200)

    first_clock = FakeClock(1000.0)
    async with serving(settings, first_clock) as (service, session, base_url):
        await fill_first_run(service, session, base_url, [trackers["alpha"], trackers["beta"]])
        await trackers["gamma"].wait_for_announces(1)
        await service.dispatcher.wait_until_idle()  # type: ignore[union-attr]
        first_clock.advance(100.0)

        now_s = first_clock()
        expected_peers = {
            info_hash: {
                endpoint: (peer_id, is_seeder, now_s - last_seen_s)
                for endpoint, peer_id, is_seeder, last_seen_s in service.swarms.get(info_hash).peers()  # type: ignore[union-attr]
            }
            for info_hash in INFO_HASHES
        }
        expected_batches = {
            (torrent.info_hash, batch.forwarder_index): (
                batch.due_s - now_s,
                batch.tracker_id,
                batch.announced,
                batch.pending_event,
                batch.interval_s,
            )
            for torrent in service.table.torrents()
            for batch in torrent.batches
        }
        expected_health = {
            health.name: (health.succeeded, health.failed, health.last_interval_s, health.ema_latency_s)
            for health in service.registry.forwarders
        }
        assert service.registry[2].state is ForwarderState.SUSPENDED

    assert state_file.is_file()
    assert temporary_files(tmp_path) == []

    second_clock = FakeClock(50_000.0)  # another process: its monotonic clock has another origin
    with structlog.testing.capture_logs() as records:
        async with serving(settings, second_clock) as (restored, _, _):
            now_s = second_clock()

            assert set(restored.swarms.info_hashes()) == set(INFO_HASHES)
            assert restored.swarms.peer_count == 4
            for info_hash, peers in expected_peers.items():
                swarm = restored.swarms.get(info_hash)
                assert swarm is not None
                restored_peers = {endpoint: rest for endpoint, *rest in swarm.peers()}
                assert set(restored_peers) == set(peers)
                for endpoint, (peer_id, is_seeder, age_s) in peers.items():
                    restored_id, restored_seeder, restored_seen_s = restored_peers[endpoint]
                    assert restored_id == peer_id
                    assert restored_seeder == is_seeder
                    assert now_s - restored_seen_s == pytest.approx(age_s, abs=TIME_TOLERANCE_S)
            assert restored.swarms.get(INFO_HASHES[0]).seeders == 1  # type: ignore[union-attr]

            restored_batches = {
                (torrent.info_hash, batch.forwarder_index): batch
                for torrent in restored.table.torrents()
                for batch in torrent.batches
            }
            assert set(restored_batches) == set(expected_batches)
            for key, (due_in_s, tracker_id, announced, pending_event, interval_s) in expected_batches.items():
                batch = restored_batches[key]
                assert batch.due_s - now_s == pytest.approx(due_in_s, abs=TIME_TOLERANCE_S), key
                assert batch.tracker_id == tracker_id, key
                assert batch.announced == announced, key
                assert batch.pending_event is pending_event, key
                assert batch.interval_s == interval_s, key
                assert batch.in_index, key

            alpha_batch = restored_batches[(INFO_HASHES[0], 0)]
            assert alpha_batch.tracker_id == b"tid-alpha"
            assert alpha_batch.due_s - now_s == pytest.approx(1700.0, abs=TIME_TOLERANCE_S)
            beta_batch = restored_batches[(INFO_HASHES[0], 1)]
            assert beta_batch.due_s - now_s == pytest.approx(2300.0, abs=TIME_TOLERANCE_S)

            for info_hash in INFO_HASHES:
                cached = restored.cache.get(info_hash)
                assert cached is not None
                assert set(cached.endpoints(now_s)) == {compact_peer("10.1.1.1", 6000), compact_peer("10.2.2.2", 6001)}

            for health in restored.registry.forwarders:
                assert (
                    health.succeeded,
                    health.failed,
                    health.last_interval_s,
                    health.ema_latency_s,
                ) == expected_health[health.name]
            gamma = restored.registry[2]
            assert gamma.state is ForwarderState.SUSPENDED
            assert gamma.reason == "rate_limited"
            assert gamma.until_s - now_s == pytest.approx(500.0, abs=TIME_TOLERANCE_S)

    loaded = [record for record in records if record["event"] == "snapshot.loaded"]
    assert len(loaded) == 1
    assert loaded[0]["peers"] == 4
    assert loaded[0]["swarms"] == 3
    assert loaded[0]["batches"] == 9
    assert loaded[0]["cached_infohashes"] == 3


async def test_restart_sends_nothing_not_due(tmp_path: Path, trackers: dict[str, FakeTracker]) -> None:
    state_file = tmp_path / "state.json"
    forwarders = [forwarder("alpha", trackers["alpha"]), forwarder("beta", trackers["beta"])]
    settings = snapshot_settings(forwarders, state_file)
    upstreams = [trackers["alpha"], trackers["beta"]]

    async with serving(settings) as (service, session, base_url):
        await fill_first_run(service, session, base_url, upstreams)
    first_run_counts = [len(tracker.announces) for tracker in upstreams]
    assert first_run_counts == [3, 3]

    # The real monotonic clock: the restored batches are due in about 1800 s.
    async with serving(settings) as (restored, session, base_url):
        reply = await announce(session, base_url, 7001, INFO_HASHES[0])
        assert reply[b"interval"] == 1800

        # A new infohash is announced at once; anything due at start would have gone before it.
        await announce(session, base_url, 7100, NEW_INFO_HASH)
        for tracker, count in zip(upstreams, first_run_counts):
            await tracker.wait_for_announces(count + 1)
        assert restored.dispatcher is not None
        await restored.dispatcher.wait_until_idle()

        for tracker, count in zip(upstreams, first_run_counts):
            after_restart = tracker.announces[count:]
            assert info_hashes_of(after_restart) == [NEW_INFO_HASH]
            assert after_restart[0].fields["event"] == b"started"


async def test_restored_infohash_keeps_normal_interval(tmp_path: Path, trackers: dict[str, FakeTracker]) -> None:
    state_file = tmp_path / "state.json"
    trackers["alpha"].reply = {b"interval": 1800, b"peers": b""}  # the upstream returns no peers
    settings = snapshot_settings([forwarder("alpha", trackers["alpha"])], state_file, first_interval=45)

    async with serving(settings) as (_, session, base_url):
        await announce(session, base_url, 7001, INFO_HASHES[0])
        reply = await announce(session, base_url, 7001, INFO_HASHES[0])
        assert reply[b"interval"] == 1800

    async with serving(settings) as (_, session, base_url):
        reply = await announce(session, base_url, 7001, INFO_HASHES[0])

    # The upstream has replied before the restart, so the client has no reason to come back early.
    assert reply[b"interval"] == 1800


async def test_stopped_pair_stays_stopped(tmp_path: Path, trackers: dict[str, FakeTracker]) -> None:
    state_file = tmp_path / "state.json"
    trackers["beta"].reply = {b"failure reason": b"torrent not registered", b"retry in": b"never"}
    forwarders = [forwarder("alpha", trackers["alpha"]), forwarder("beta", trackers["beta"])]
    settings = snapshot_settings(forwarders, state_file)

    async with serving(settings) as (service, session, base_url):
        await announce(session, base_url, 7001, INFO_HASHES[0])
        await trackers["beta"].wait_for_announces(1)
        assert service.dispatcher is not None
        await service.dispatcher.wait_until_idle()
        assert service.table.is_stopped_pair(INFO_HASHES[0], 1)

    async with serving(settings) as (restored, _, _):
        assert restored.table.is_stopped_pair(INFO_HASHES[0], 1)
        torrent = restored.table.get(INFO_HASHES[0])
        assert torrent is not None
        assert [batch.retired for batch in torrent.batches] == [False, True]
        assert restored.table.batch_count == 1


# ---------------------------------------------------------------- time passed while down


async def test_overdue_batches_sent_once(tmp_path: Path, trackers: dict[str, FakeTracker]) -> None:
    state_file = tmp_path / "state.json"
    forwarders = [forwarder("alpha", trackers["alpha"]), forwarder("beta", trackers["beta"])]
    settings = snapshot_settings(forwarders, state_file, peer_ttl=100_000, upstream_peer_ttl=100_000)
    upstreams = [trackers["alpha"], trackers["beta"]]

    async with serving(settings, FakeClock(1000.0)) as (service, session, base_url):
        await fill_first_run(service, session, base_url, upstreams)

    # Pretend the process was down for three upstream intervals of alpha.
    saved_at = orjson.loads(state_file.read_bytes())["saved_at"]
    edit_snapshot(state_file, saved_at=saved_at - 3 * 1800 - 5)

    clock = FakeClock(9000.0)
    async with serving(settings, clock) as (restored, session, base_url):
        for tracker in upstreams:
            await tracker.wait_for_announces(6)
        assert restored.dispatcher is not None
        await restored.dispatcher.wait_until_idle()

        for tracker in upstreams:
            after_restart = tracker.announces[3:]
            assert sorted(info_hashes_of(after_restart)) == sorted(INFO_HASHES)
            assert all("event" not in recorded.fields for recorded in after_restart)
        assert all(recorded.fields["trackerid"] == b"tid-alpha" for recorded in trackers["alpha"].announces[3:])

        # Each pair is due one full interval after its catch-up announce, not again at once.
        for torrent in restored.table.torrents():
            due_in = sorted(batch.due_s - clock() for batch in torrent.batches)
            assert due_in == [1800.0, 2400.0]

        clock.advance(1799.0)
        await announce(session, base_url, 7100, NEW_INFO_HASH)
        for tracker in upstreams:
            await tracker.wait_for_announces(7)
        await restored.dispatcher.wait_until_idle()

        for tracker in upstreams:
            assert info_hashes_of(tracker.announces[6:]) == [NEW_INFO_HASH]


async def test_expired_peers_dropped_on_load(tmp_path: Path, trackers: dict[str, FakeTracker]) -> None:
    state_file = tmp_path / "state.json"
    settings = snapshot_settings([forwarder("alpha", trackers["alpha"])], state_file, peer_ttl=3600)

    clock = FakeClock(1000.0)
    async with serving(settings, clock) as (service, session, base_url):
        await announce(session, base_url, 7001, INFO_HASHES[0])
        await announce(session, base_url, 7002, INFO_HASHES[1])
        await trackers["alpha"].wait_for_announces(2)
        assert service.dispatcher is not None
        await service.dispatcher.wait_until_idle()

        clock.advance(3000.0)
        await announce(session, base_url, 7003, INFO_HASHES[0])
        assert service.swarms.peer_count == 3

    # 1000 s down: the peers of t=1000 are 4000 s old and past peer_ttl, the peer of t=4000 is not.
    saved_at = orjson.loads(state_file.read_bytes())["saved_at"]
    edit_snapshot(state_file, saved_at=saved_at - 1000)

    with structlog.testing.capture_logs() as records:
        async with serving(settings, FakeClock(1000.0)) as (restored, _, _):
            assert restored.swarms.peer_count == 1
            swarm = restored.swarms.get(INFO_HASHES[0])
            assert swarm is not None
            assert [peer[0] for peer in swarm.peers()] == [bytes([127, 0, 0, 1]) + (7003).to_bytes(2, "big")]
            assert restored.swarms.get(INFO_HASHES[1]) is None
            assert restored.table.get(INFO_HASHES[1]) is None
            assert restored.table.get(INFO_HASHES[0]) is not None
            # Upstream peers stored at t=1000 expired at t=4600, so none survive 1000 s of downtime.
            assert restored.cache.get(INFO_HASHES[0]) is None
            assert restored.cache.get(INFO_HASHES[1]) is None

    loaded = [record for record in records if record["event"] == "snapshot.loaded"]
    assert [(record["peers"], record["swarms"], record["cached_infohashes"]) for record in loaded] == [(1, 1, 0)]


# ---------------------------------------------------------------- bad files


def corrupt_bytes(valid: bytes) -> bytes:
    return b"\x00\xff not json {"


def other_format(valid: bytes) -> bytes:
    return orjson.dumps({"apiVersion": "v1", "kind": "ConfigMap", "data": {}})


def wrong_version(valid: bytes) -> bytes:
    document = orjson.loads(valid)
    document["version"] = 2

    return orjson.dumps(document)


def truncated(valid: bytes) -> bytes:
    return valid[: len(valid) // 2]


def empty(valid: bytes) -> bytes:
    return b""


def bad_late_entry(valid: bytes) -> bytes:
    # Swarms and batches are valid; only the forwarder health, read last, is broken.
    document = orjson.loads(valid)
    document["forwarders"] = [{"name": "alpha"}]

    return orjson.dumps(document)


@pytest.mark.parametrize("damage", [corrupt_bytes, other_format, wrong_version, truncated, empty, bad_late_entry])
async def test_bad_snapshot_ignored(tmp_path: Path, trackers: dict[str, FakeTracker], damage: Any) -> None:
    state_file = tmp_path / "state.json"
    settings = snapshot_settings([forwarder("alpha", trackers["alpha"])], state_file)
    async with serving(settings) as (service, session, base_url):
        await announce(session, base_url, 7001, INFO_HASHES[0])
        await trackers["alpha"].wait_for_announces(1)
    state_file.write_bytes(damage(state_file.read_bytes()))

    with structlog.testing.capture_logs() as records:
        async with serving(settings) as (restored, session, base_url):
            assert restored.ready
            assert len(restored.swarms) == 0
            assert restored.table.batch_count == 0
            reply = await announce(session, base_url, 7002, INFO_HASHES[1])
            assert reply[b"interval"] == 1800

    ignored = [record for record in records if record["event"] == "snapshot.ignored"]
    assert len(ignored) == 1
    assert ignored[0]["path"] == str(state_file)
    assert ignored[0]["log_level"] == "warning"
    assert ignored[0]["error"]
    assert not any(record["event"] == "snapshot.loaded" for record in records)


async def test_absent_snapshot_logged(tmp_path: Path, trackers: dict[str, FakeTracker]) -> None:
    state_file = tmp_path / "state.json"
    settings = snapshot_settings([forwarder("alpha", trackers["alpha"])], state_file)

    with structlog.testing.capture_logs() as records:
        async with serving(settings) as (service, _, _):
            assert service.ready

    events = [record["event"] for record in records]
    assert "snapshot.absent" in events
    assert "snapshot.written" in events
    assert state_file.is_file()


# ---------------------------------------------------------------- writing


async def test_write_leaves_no_temporary_file(tmp_path: Path, trackers: dict[str, FakeTracker]) -> None:
    state_file = tmp_path / "state" / "state.json"  # a folder that does not exist yet
    settings = snapshot_settings([forwarder("alpha", trackers["alpha"])], state_file)

    for port in (7001, 7002):  # the second run replaces the file of the first
        with structlog.testing.capture_logs() as records:
            async with serving(settings) as (_, session, base_url):
                await announce(session, base_url, port, INFO_HASHES[0])

        assert sorted(path.name for path in state_file.parent.iterdir()) == ["state.json"]
        document = orjson.loads(state_file.read_bytes())
        assert document["format"] == "aggregator-state"
        written = [record for record in records if record["event"] == "snapshot.written"]
        assert len(written) == 1
        assert written[0]["bytes"] == state_file.stat().st_size

    assert len(document["swarms"][0]["peers"]) == 2


@pytest.mark.parametrize("layout", ["target_is_folder", "parent_is_file"])
async def test_failed_write_logged(tmp_path: Path, trackers: dict[str, FakeTracker], layout: str) -> None:
    # Root ignores folder permissions, so the write is made to fail by the file system layout.
    if layout == "target_is_folder":
        state_file = tmp_path / "state.json"
        state_file.mkdir()
    else:
        (tmp_path / "not-a-folder").write_text("a file\n")
        state_file = tmp_path / "not-a-folder" / "state.json"
    settings = snapshot_settings([forwarder("alpha", trackers["alpha"])], state_file)

    with structlog.testing.capture_logs() as records:
        async with serving(settings) as (_, session, base_url):
            await announce(session, base_url, 7001, INFO_HASHES[0])

    failed = [record for record in records if record["event"] == "snapshot.write_failed"]
    assert len(failed) == 1
    assert failed[0]["path"] == str(state_file)
    assert failed[0]["log_level"] == "error"
    finished = [record for record in records if record["event"] == "drain.finished"]
    assert len(finished) == 1
    assert finished[0]["snapshot_bytes"] is None
    assert temporary_files(tmp_path) == []
    if layout == "target_is_folder":
        assert list(state_file.iterdir()) == []


# ---------------------------------------------------------------- changed forwarders


async def test_changed_forwarders_on_load(tmp_path: Path, trackers: dict[str, FakeTracker]) -> None:
    state_file = tmp_path / "state.json"
    alpha, beta, gamma = trackers["alpha"], trackers["beta"], trackers["gamma"]
    first = snapshot_settings([forwarder("alpha", alpha), forwarder("beta", beta)], state_file)

    async with serving(first) as (service, session, base_url):
        await fill_first_run(service, session, base_url, [alpha, beta])

    # beta is gone, gamma is new and listed first, so alpha moves from index 0 to index 1.
    second = replace(first, forwarders=(forwarder("gamma", gamma), forwarder("alpha", alpha)))
    async with serving(second) as (restored, session, base_url):
        await gamma.wait_for_announces(3)
        assert restored.dispatcher is not None
        await restored.dispatcher.wait_until_idle()

        assert sorted(info_hashes_of(gamma.announces)) == sorted(INFO_HASHES)
        assert all(recorded.fields["event"] == b"started" for recorded in gamma.announces)
        assert [health.name for health in restored.registry.forwarders] == ["gamma", "alpha"]
        assert restored.registry[1].succeeded == 3
        assert restored.registry[0].succeeded == 3

        for info_hash in INFO_HASHES:
            torrent = restored.table.get(info_hash)
            assert torrent is not None
            assert sorted(batch.forwarder_index for batch in torrent.batches) == [0, 1]
            alpha_restored = next(batch for batch in torrent.batches if batch.forwarder_index == 1)
            assert alpha_restored.tracker_id == b"tid-alpha"
            assert alpha_restored.announced
            assert alpha_restored.pending_event is UpstreamEvent.NONE
            cached = restored.cache.get(info_hash)
            assert cached is not None
            assert set(cached.entries) == {0, 1}  # beta's peers were dropped, gamma's just arrived

        # alpha gets nothing until its interval passes: the new infohash is its only request.
        await announce(session, base_url, 7100, NEW_INFO_HASH)
        await alpha.wait_for_announces(4)
        await restored.dispatcher.wait_until_idle()
        assert info_hashes_of(alpha.announces[3:]) == [NEW_INFO_HASH]
        assert len(beta.announces) == 3
