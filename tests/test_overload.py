"""Overload policies with a fake clock: priorities, scaling, throttling, admission and bounds."""

import asyncio
import random
from dataclasses import replace

import pytest

from aggregator.batch import Batch, Priority, TorrentBatches, UpstreamEvent
from aggregator.batch_table import BatchTable
from aggregator.dispatcher import Dispatcher
from aggregator.due_index import DueIndex
from aggregator.faults import Verdict
from aggregator.forwarder import THROTTLE_MAX_WAIT_FACTOR, ForwarderRegistry, ForwarderState, HealthPolicy
from aggregator.overload import Admission, OverloadControl, OverloadPolicy, ScalingPolicy, TokenBucket, WorkerScaler
from aggregator.service import Service
from aggregator.upstream_reply import FailureKind
from tests.fake_clock import FakeClock
from tests.test_service import INFO_HASH, announce, announce_query, base_settings, fake_trackers, running

SCALING = ScalingPolicy(
    min_workers=4, max_workers=64, up_threshold=0.6, down_threshold=0.4, up_lag_s=5.0, cooldown_s=10.0
)
POLICY = OverloadPolicy(
    backlog_capacity=100,
    throttle_threshold=0.6,
    throttle_top_n=2,
    rate_limit_threshold=0.8,
    rate_limit_per_s=5.0,
    rate_limit_burst=10,
)
HEALTH = HealthPolicy(max_inflight=4, suspend_s=300, disable_after_failures=10, probe_base_s=60, probe_max_s=3600)


def batch_with(priority: Priority, label: int) -> Batch:
    batch = Batch(TorrentBatches(bytes([label]) * 20), 0)
    batch.priority = priority

    return batch


def test_urgent_batches_go_before_older_refreshes() -> None:
    index = DueIndex()
    old_refresh = batch_with(Priority.REFRESH, 1)
    newer_refresh = batch_with(Priority.REFRESH, 2)
    initial = batch_with(Priority.INITIAL, 3)
    event = batch_with(Priority.EVENT, 4)
    index.schedule(old_refresh, 1.0)
    index.schedule(newer_refresh, 2.0)
    index.schedule(event, 6.0)
    index.schedule(initial, 5.0)

    order = [index.pop_due(10.0) for _ in range(4)]

    assert order == [initial, event, old_refresh, newer_refresh]
    assert index.pop_due(10.0) is None


def test_refresh_goes_first_when_urgent_not_due() -> None:
    index = DueIndex()
    refresh = batch_with(Priority.REFRESH, 1)
    initial = batch_with(Priority.INITIAL, 2)
    index.schedule(refresh, 1.0)
    index.schedule(initial, 20.0)

    assert index.earliest() is refresh
    assert index.pop_due(10.0) is refresh
    assert index.oldest_due_s(10.0) is None
    assert index.count_due(25.0) == 1


def test_scaler_doubles_under_pressure_after_cooldown() -> None:
    scaler = WorkerScaler(SCALING, now_s=0.0)

    assert scaler.decide(16, pressure=0.9, lag_s=0.0, now_s=5.0) == 16  # within the cool-down
    assert scaler.decide(16, pressure=0.9, lag_s=0.0, now_s=10.0) == 32
    assert scaler.decide(32, pressure=0.9, lag_s=0.0, now_s=15.0) == 32
    assert scaler.decide(32, pressure=0.9, lag_s=0.0, now_s=20.0) == 64
    assert scaler.decide(64, pressure=0.9, lag_s=0.0, now_s=30.0) == 64  # max_workers


def test_scaler_scales_up_on_flush_lag() -> None:
    scaler = WorkerScaler(SCALING, now_s=0.0)

    assert scaler.decide(8, pressure=0.0, lag_s=6.0, now_s=10.0) == 16


def test_scaler_scales_down_after_calm_cooldown() -> None:
    scaler = WorkerScaler(SCALING, now_s=0.0)

    assert scaler.decide(16, pressure=0.1, lag_s=0.0, now_s=10.0) == 16  # calm only since now
    assert scaler.decide(16, pressure=0.5, lag_s=0.0, now_s=15.0) == 16  # between thresholds: no change
    assert scaler.decide(16, pressure=0.1, lag_s=0.0, now_s=16.0) == 16
    assert scaler.decide(16, pressure=0.1, lag_s=0.0, now_s=26.0) == 12
    assert scaler.decide(12, pressure=0.1, lag_s=0.0, now_s=30.0) == 12  # cool-down after a change
    assert scaler.decide(12, pressure=0.1, lag_s=0.0, now_s=36.0) == 9
    for step in range(20):
        current = scaler.decide(4, pressure=0.0, lag_s=0.0, now_s=100.0 + step * 10)
        assert current == 4  # min_workers


def test_scaler_off_when_min_equals_max() -> None:
    scaler = WorkerScaler(replace(SCALING, min_workers=8, max_workers=8), now_s=0.0)

    assert scaler.decide(8, pressure=5.0, lag_s=100.0, now_s=100.0) == 8
    assert scaler.decide(8, pressure=0.0, lag_s=0.0, now_s=200.0) == 8


@pytest.mark.parametrize(("elapsed_s", "admitted"), [(0.0, 10), (1.0, 15), (2.5, 22)])
def test_token_bucket_admits_burst_plus_rate(elapsed_s: float, admitted: int) -> None:
    bucket = TokenBucket(rate_per_s=5.0, burst=10, now_s=100.0)

    # Ask far more often than the rate, spread over elapsed_s.
    steps = 1000
    granted = sum(bucket.take(100.0 + elapsed_s * step / steps) for step in range(steps + 1))

    assert granted == admitted


class Harness:
    """A registry, index and overload control wired like the service, without a network."""

    def __init__(self, policy: OverloadPolicy = POLICY, forwarders: int = 4) -> None:
        self.clock = FakeClock(0.0)
        self.index = DueIndex()
        self.registry = ForwarderRegistry([f"f{n}" for n in range(forwarders)], HEALTH, self.index, self.clock)
        self.workers = 16
        self.control = OverloadControl(
            policy,
            WorkerScaler(SCALING, 0.0),
            count_ready=self.index.count_due,
            oldest_due_s=self.index.oldest_due_s,
            set_workers=self.set_workers,
            get_workers=lambda: self.workers,
            rank_forwarders=self.registry.ranked,
            set_throttle=self.registry.set_throttle,
            now_s=0.0,
        )

    def set_workers(self, count: int) -> None:
        self.workers = count

    def overdue(self, count: int, forwarder_index: int = 0) -> list[Batch]:
        batches = []
        for number in range(count):
            batch = Batch(TorrentBatches(number.to_bytes(20, "big")), forwarder_index)
            batch.priority = Priority.REFRESH
            self.index.schedule(batch, self.clock() - 1.0)
            batches.append(batch)
        return batches


def test_throttle_serves_only_top_forwarders() -> None:
    harness = Harness()
    for index, latency_s in enumerate([0.5, 0.02, 2.0, 0.05]):
        harness.registry.record_success(index, latency_s, 1800)
    harness.overdue(70)  # pressure 0.7 > 0.6

    harness.control.tick(harness.clock())

    assert harness.control.throttling
    assert harness.registry.throttle_allowed == frozenset({1, 3})
    slow = Batch(TorrentBatches(b"\xee" * 20), 2)
    fast = Batch(TorrentBatches(b"\xef" * 20), 1)
    assert not harness.registry.admit(slow, harness.clock())
    assert harness.clock() + 0.5 * HEALTH.throttle_defer_s <= slow.due_s <= harness.clock() + 1.5 * HEALTH.throttle_defer_s
    assert slow.in_index
    assert harness.registry.throttled == 1
    assert harness.registry.admit(fast, harness.clock())


def test_throttle_ends_when_pressure_drops() -> None:
    harness = Harness()
    batches = harness.overdue(70)
    harness.control.tick(0.0)
    assert harness.control.throttling

    for batch in batches[:40]:
        harness.index.remove(batch)
    harness.control.tick(1.0)

    assert not harness.control.throttling
    assert harness.registry.throttle_allowed is None


def test_throttle_threshold_zero_disables() -> None:
    harness = Harness(replace(POLICY, throttle_threshold=0.0))
    harness.overdue(500)

    harness.control.tick(0.0)

    assert not harness.control.throttling
    assert harness.registry.throttle_allowed is None


def test_admission_rate_limited_only_under_pressure() -> None:
    harness = Harness()
    assert all(harness.control.admit_new_infohash(0.0) is Admission.ADMITTED for _ in range(100))

    harness.overdue(90)  # pressure 0.9 > 0.8
    harness.control.tick(0.0)
    decisions = [harness.control.admit_new_infohash(0.0) for _ in range(30)]

    assert decisions.count(Admission.ADMITTED) == 10  # the burst
    assert decisions.count(Admission.RATE_LIMITED) == 20
    assert harness.control.admit_new_infohash(1.0) is Admission.ADMITTED  # 5 tokens a second


def test_rate_limit_threshold_zero_disables() -> None:
    harness = Harness(replace(POLICY, rate_limit_threshold=0.0))
    harness.overdue(1000)
    harness.control.tick(0.0)

    assert all(harness.control.admit_new_infohash(0.0) is Admission.ADMITTED for _ in range(1000))


def test_scaling_applied_by_tick() -> None:
    harness = Harness()
    harness.overdue(70)

    harness.control.tick(10.0)

    assert harness.workers == 32


def test_max_batches_refuses_new_pairs() -> None:
    index = DueIndex()
    table = BatchTable(3, index, first_wait_s=0.0, retry_base_s=30.0, retry_max_s=600.0, max_batches=5)

    first = table.open(b"\x01" * 20, 0.0)
    second = table.open(b"\x02" * 20, 0.0)
    third = table.open(b"\x03" * 20, 0.0)

    assert first.live_batches == 3
    assert second.live_batches == 2
    assert third.live_batches == 0
    assert table.refused_pairs == 1 + 3
    assert table.batch_count == 5
    assert len(index) == 5
    assert table.get(b"\x03" * 20) is None


def test_max_batches_zero_is_no_cap() -> None:
    table = BatchTable(3, DueIndex(), first_wait_s=0.0, retry_base_s=30.0, retry_max_s=600.0, max_batches=0)
    for number in range(100):
        table.open(number.to_bytes(20, "big"), 0.0)

    assert table.batch_count == 300
    assert table.room() is None


def test_max_forwarders_per_infohash_best_plus_rotation() -> None:
    index = DueIndex()
    registry = ForwarderRegistry([f"f{n}" for n in range(5)], HEALTH, index, FakeClock(0.0))
    for forwarder_index, latency_s in enumerate([0.1, 0.2, 0.3, 0.4, 0.5]):
        registry.record_success(forwarder_index, latency_s, 1800)

    picks = [registry.pick(3) for _ in range(6)]

    assert all(len(pick) == 3 for pick in picks)
    assert all({0, 1} <= set(pick) for pick in picks)
    assert {pick[-1] for pick in picks} == {2, 3, 4}  # the third slot rotates over the rest
    assert registry.pick(0) == [0, 1, 2, 3, 4]
    assert registry.pick(9) == [0, 1, 2, 3, 4]


def test_no_batch_lost_under_policies() -> None:
    """Random pops, outcomes, throttling and events: every live batch stays reachable."""
    rng = random.Random(7)
    clock = FakeClock(0.0)
    index = DueIndex()
    registry = ForwarderRegistry([f"f{n}" for n in range(6)], HEALTH, index, clock)
    table = BatchTable(
        6, index, first_wait_s=0.0, retry_base_s=5.0, retry_max_s=60.0, max_batches=400,
        choose_forwarders=lambda: registry.pick(4),
    )
    in_flight: list[Batch] = []
    opened = 0

    for step in range(5000):
        clock.advance(rng.uniform(0.0, 5.0))
        action = rng.random()
        if action < 0.1:
            table.open(rng.randbytes(20), clock())
            opened += 1
        elif action < 0.15:
            registry.set_throttle(frozenset(rng.sample(range(6), 2)) if rng.random() < 0.5 else None)
        elif action < 0.2 and table.torrents():
            torrent = rng.choice(table.torrents())
            table.note_swarm_emptied(torrent.info_hash, clock())
        elif action < 0.6:
            batch = index.pop_due(clock())
            if batch is not None and registry.admit(batch, clock()):
                table.start_announce(batch)
                in_flight.append(batch)
        elif in_flight:
            batch = in_flight.pop(rng.randrange(len(in_flight)))
            sent = batch.pending_event
            if rng.random() < 0.7:
                registry.record_success(batch.forwarder_index, 0.1, 60)
                table.after_success(batch, sent, 60.0, 0.0, 1, clock())
            else:
                kind = rng.choice([FailureKind.TIMEOUT, FailureKind.RATE_LIMITED, FailureKind.REFUSED])
                verdict = {FailureKind.TIMEOUT: Verdict.RETRY, FailureKind.RATE_LIMITED: Verdict.SUSPEND}.get(
                    kind, Verdict.DISABLE
                )
                retry_at = registry.record_failure(batch.forwarder_index, verdict, kind, "test", clock())
                table.after_failure(batch, sent, clock(), retry_at)
            registry.release(batch.forwarder_index)

        waiting = {id(batch) for health in registry.forwarders for batch in health.waiting}
        live = [batch for torrent in table.torrents() for batch in torrent.batches if not batch.retired]
        for batch in live:
            reachable = batch.in_index or batch.in_flight or id(batch) in waiting
            assert reachable, f"step {step}: a live batch is neither indexed, in flight nor waiting"
        assert table.batch_count == len(live)

    assert opened > 300
    assert table.refused_pairs > 0
    assert any(health.state is not ForwarderState.ACTIVE for health in registry.forwarders) or registry.deferred


async def hold_pressure(service: Service, pressure: float) -> None:
    """Stop the once-a-second overload tick and fix the measured pressure, so the test decides it."""
    for task in service._background:
        if task.get_name() == "overload-control":
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
    service.overload.pressure = pressure


async def test_not_admitted_client_gets_peers_and_retry_interval() -> None:
    async with fake_trackers(1) as trackers:
        settings = base_settings(trackers, rate_limit_threshold=0.5, rate_limit_burst=1, rate_limit_per_s=0.001)
        async with running(settings) as (service, session, url):
            await announce(session, url, announce_query(7001))
            await hold_pressure(service, 0.9)
            other = b"\x42" * 20
            await announce(session, url, announce_query(7002, info_hash=other))  # takes the only token

            status, reply = await announce(session, url, announce_query(7003, info_hash=b"\x43" * 20))

            assert status == 200
            assert b"failure reason" not in reply
            assert reply[b"interval"] == 300
            assert service.tracker.admission_counts[Admission.RATE_LIMITED] == 1
            assert service.table.get(b"\x43" * 20) is None
            assert service.swarms.get(b"\x43" * 20) is not None  # the client is still in the local swarm
            assert len(trackers[0].announces) <= 2


async def test_overload_reply_failure_has_retry_in() -> None:
    async with fake_trackers(1) as trackers:
        settings = base_settings(
            trackers,
            rate_limit_threshold=0.5,
            rate_limit_burst=1,
            rate_limit_per_s=0.001,
            overload_reply="failure",
            retry_interval=600,
        )
        async with running(settings) as (service, session, url):
            await hold_pressure(service, 0.9)
            await announce(session, url, announce_query(7001))

            _, reply = await announce(session, url, announce_query(7002, info_hash=b"\x44" * 20))

            assert b"tracker overloaded" in reply[b"failure reason"]  # type: ignore[operator]
            assert reply[b"retry in"] == 10
            assert reply[b"interval"] == 600


async def test_known_infohash_unaffected_by_admission() -> None:
    async with fake_trackers(1) as trackers:
        settings = base_settings(trackers, rate_limit_threshold=0.5, rate_limit_burst=1, rate_limit_per_s=0.001)
        async with running(settings) as (service, session, url):
            await announce(session, url, announce_query(7001))
            await hold_pressure(service, 5.0)

            _, reply = await announce(session, url, announce_query(7002))

            assert reply[b"interval"] == 1800
            assert service.tracker.admission_counts[Admission.RATE_LIMITED] == 0
            assert service.table.get(INFO_HASH) is not None


def test_upstream_event_kept_while_throttled() -> None:
    harness = Harness()
    harness.registry.set_throttle(frozenset({1}))
    batch = Batch(TorrentBatches(b"\x55" * 20), 0)
    batch.pending_event = UpstreamEvent.STOPPED

    assert not harness.registry.admit(batch, 0.0)
    assert batch.pending_event is UpstreamEvent.STOPPED
    assert batch.in_index


def test_throttle_deferrals_are_spread() -> None:
    harness = Harness()
    harness.registry.set_throttle(frozenset({1}))
    batches = [Batch(TorrentBatches(number.to_bytes(20, "big")), 0) for number in range(50)]

    for batch in batches:
        assert not harness.registry.admit(batch, harness.clock())

    due_times = [batch.due_s for batch in batches]
    assert len(set(due_times)) > 1
    assert min(due_times) >= harness.clock() + 0.5 * HEALTH.throttle_defer_s
    assert max(due_times) <= harness.clock() + 1.5 * HEALTH.throttle_defer_s
    assert harness.registry.throttled == 50


def test_throttled_forwarder_not_starved() -> None:
    """Pressure never drops and forwarder 0 never ranks among the best: its batch still goes."""
    harness = Harness()
    harness.registry.set_throttle(frozenset({1, 2}))
    batch = Batch(TorrentBatches(b"\x61" * 20), 0)
    harness.index.schedule(batch, harness.clock())
    first_due_s = batch.due_s

    admitted = False
    for _ in range(20):
        earliest = harness.index.earliest()
        assert earliest is batch
        harness.clock.now_s = max(harness.clock(), earliest.due_s)
        assert harness.index.pop_due(harness.clock()) is batch
        if harness.registry.admit(batch, harness.clock()):
            admitted = True
            break

    max_wait_s = THROTTLE_MAX_WAIT_FACTOR * HEALTH.throttle_defer_s
    assert admitted
    assert harness.registry.throttled >= 2
    assert harness.clock() - first_due_s >= max_wait_s
    assert harness.clock() - first_due_s <= max_wait_s + 1.5 * HEALTH.throttle_defer_s


def one_slot_registry() -> tuple[FakeClock, DueIndex, ForwarderRegistry, list[Batch]]:
    """Forwarder 0 with one in-flight slot: batch 0 is in flight, batches 1 and 2 wait for the slot."""
    clock = FakeClock(0.0)
    index = DueIndex()
    registry = ForwarderRegistry(["f0", "f1"], replace(HEALTH, max_inflight=1), index, clock)
    batches = [Batch(TorrentBatches(number.to_bytes(20, "big")), 0) for number in range(3)]
    for batch in batches:
        index.schedule(batch, clock())
    for batch in batches:
        assert index.pop_due(clock()) is batch
        assert registry.admit(batch, clock()) is (batch is batches[0])
    assert list(registry[0].waiting) == batches[1:]

    return clock, index, registry, batches


@pytest.mark.parametrize("cause", ["throttled", "suspended"])
def test_waiting_queue_drains_when_slot_unused(cause: str) -> None:
    clock, index, registry, batches = one_slot_registry()
    if cause == "throttled":
        registry.set_throttle(frozenset({1}))
    else:
        registry.record_failure(0, Verdict.SUSPEND, FailureKind.RATE_LIMITED, "429", clock(), suspend_for_s=120.0)

    registry.release(0)  # batch 0 finished: batch 1 gets the slot
    assert index.pop_due(clock()) is batches[1]
    assert not registry.admit(batches[1], clock())

    # Batch 1 did not take the slot, so batch 2 must not stay in the waiting queue.
    assert not registry[0].waiting
    assert batches[2].in_index
    assert batches[2].due_s == clock()

    # Throttled or suspended, the forwarder gets every batch in the end.
    announced = {id(batches[0])}
    for _ in range(20):
        earliest = index.earliest()
        if earliest is None:
            break
        clock.now_s = max(clock(), earliest.due_s)
        batch = index.pop_due(clock())
        assert batch is not None
        if registry.admit(batch, clock()):
            announced.add(id(batch))
            registry.release(0)
    assert announced == {id(batch) for batch in batches}
    assert not registry[0].waiting
    assert registry[0].inflight == 0


def test_waiting_queue_drains_after_retire() -> None:
    clock = FakeClock(0.0)
    index = DueIndex()
    registry = ForwarderRegistry(["f0"], replace(HEALTH, max_inflight=1), index, clock)
    table = BatchTable(1, index, first_wait_s=0.0, retry_base_s=30.0, retry_max_s=600.0)
    batches = [table.open(number.to_bytes(20, "big"), clock()).batches[0] for number in range(3)]
    for batch in batches:
        assert index.pop_due(clock()) is batch
        registry.admit(batch, clock())
    registry.release(0)  # batch 1 gets the slot, but its infohash is retired before the dispatcher pops it
    table.retire_infohash(batches[1].info_hash)
    assert list(registry[0].waiting) == [batches[2]]

    registry.release_waiting(clock())

    assert not registry[0].waiting
    assert index.pop_due(clock()) is batches[2]
    assert registry.admit(batches[2], clock())


async def test_flush_lag_spans_throttle_deferrals() -> None:
    clock = FakeClock(1000.0)
    index = DueIndex()
    registry = ForwarderRegistry(["f0", "f1"], HEALTH, index, clock)
    registry.set_throttle(frozenset({1}))
    lags: list[float] = []
    throttled = asyncio.Event()
    dispatched = asyncio.Event()

    def admit(batch: Batch, now_s: float) -> bool:
        admitted = registry.admit(batch, now_s)
        if not admitted:
            throttled.set()
        return admitted

    async def run_batch(batch: Batch) -> None:
        dispatched.set()

    dispatcher = Dispatcher(index, run_batch, 1, clock, admit=admit, observe_lag=lags.append)
    batch = Batch(TorrentBatches(b"\x62" * 20), 0)
    index.schedule(batch, clock())
    dispatcher.start()
    try:
        async with asyncio.timeout(5.0):
            await throttled.wait()
        assert batch.due_s > clock()

        registry.set_throttle(None)  # pressure is back under the threshold
        clock.now_s = batch.due_s
        dispatcher.wake()
        async with asyncio.timeout(5.0):
            await dispatched.wait()
    finally:
        await dispatcher.stop()

    assert lags == [pytest.approx(clock() - 1000.0)]
    assert lags[0] >= 0.5 * HEALTH.throttle_defer_s
    assert batch.ready_since_s is None
