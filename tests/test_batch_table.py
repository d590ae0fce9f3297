import pytest

from aggregator.batch import Priority, UpstreamEvent
from aggregator.batch_table import BatchTable
from aggregator.due_index import DueIndex
from aggregator.forwarder import ForwarderRegistry, HealthPolicy

INFO_HASH = b"\x33" * 20
FORWARDERS = 3


def make_table(first_wait_s: float = 0.0, forwarders: int = FORWARDERS) -> tuple[BatchTable, DueIndex]:
    index = DueIndex()
    table = BatchTable(forwarders, index, first_wait_s=first_wait_s, retry_base_s=30.0, retry_max_s=600.0)

    return table, index


def drain_due(table: BatchTable, index: DueIndex, now_s: float, interval_s: float = 1800.0) -> list[UpstreamEvent]:
    """Run every due batch as if its upstream replied at once; return the events sent."""
    sent = []
    while (batch := index.pop_due(now_s)) is not None:
        event = table.start_announce(batch)
        sent.append(event)
        table.after_success(batch, event, interval_s, 0.0, peer_count=1, now_s=now_s)

    return sent


def test_open_schedules_one_started_per_forwarder() -> None:
    table, index = make_table()

    torrent = table.open(INFO_HASH, now_s=100.0)

    assert len(torrent.batches) == FORWARDERS
    assert len(index) == FORWARDERS
    assert table.batch_count == FORWARDERS
    assert {batch.forwarder_index for batch in torrent.batches} == {0, 1, 2}
    assert all(batch.pending_event is UpstreamEvent.STARTED for batch in torrent.batches)
    assert all(batch.due_s == 100.0 for batch in torrent.batches)


def test_success_reschedules_at_upstream_interval() -> None:
    table, index = make_table()
    torrent = table.open(INFO_HASH, now_s=100.0)

    assert drain_due(table, index, 100.0, interval_s=1200.0) == [UpstreamEvent.STARTED] * FORWARDERS

    assert all(batch.due_s == 1300.0 for batch in torrent.batches)
    assert all(batch.pending_event is UpstreamEvent.NONE for batch in torrent.batches)
    assert all(batch.priority is Priority.REFRESH for batch in torrent.batches)
    assert drain_due(table, index, 1299.0) == []
    assert drain_due(table, index, 1300.0) == [UpstreamEvent.NONE] * FORWARDERS


def test_min_interval_wins_over_shorter_interval() -> None:
    table, index = make_table()
    torrent = table.open(INFO_HASH, now_s=0.0)
    batch = index.pop_due(0.0)
    assert batch is not None

    event = table.start_announce(batch)
    table.after_success(batch, event, interval_s=300.0, min_interval_s=900.0, peer_count=0, now_s=0.0)

    assert batch.due_s == 900.0
    assert torrent.replied == 1


def test_completed_is_queued_once() -> None:
    table, index = make_table()
    torrent = table.open(INFO_HASH, now_s=0.0)
    drain_due(table, index, 0.0)

    table.note_completed(torrent, now_s=10.0)
    table.note_completed(torrent, now_s=11.0)

    assert drain_due(table, index, 10.0) == [UpstreamEvent.COMPLETED] * FORWARDERS
    table.note_completed(torrent, now_s=20.0)
    assert drain_due(table, index, 20.0) == []


def test_completed_respects_min_interval() -> None:
    table, index = make_table()
    torrent = table.open(INFO_HASH, now_s=0.0)
    while (batch := index.pop_due(0.0)) is not None:
        table.after_success(batch, table.start_announce(batch), 1800.0, 600.0, peer_count=0, now_s=0.0)

    table.note_completed(torrent, now_s=10.0)

    assert all(batch.due_s == 600.0 for batch in torrent.batches)


def test_emptied_swarm_sends_stopped_then_retires() -> None:
    table, index = make_table()
    table.open(INFO_HASH, now_s=0.0)
    drain_due(table, index, 0.0)

    table.note_swarm_emptied(INFO_HASH, now_s=50.0)

    assert drain_due(table, index, 50.0) == [UpstreamEvent.STOPPED] * FORWARDERS
    assert table.get(INFO_HASH) is None
    assert table.batch_count == 0
    assert len(index) == 0


def test_emptied_before_first_announce_sends_nothing() -> None:
    table, index = make_table()
    table.open(INFO_HASH, now_s=0.0)

    table.note_swarm_emptied(INFO_HASH, now_s=1.0)

    assert len(index) == 0
    assert table.get(INFO_HASH) is None
    assert table.batch_count == 0


def test_refill_cancels_queued_stopped() -> None:
    table, index = make_table()
    torrent = table.open(INFO_HASH, now_s=0.0)
    drain_due(table, index, 0.0, interval_s=1800.0)
    table.note_swarm_emptied(INFO_HASH, now_s=50.0)

    table.note_swarm_refilled(torrent, now_s=60.0)

    assert drain_due(table, index, 60.0) == []
    assert all(batch.due_s == 1800.0 for batch in torrent.batches)
    assert drain_due(table, index, 1800.0) == [UpstreamEvent.NONE] * FORWARDERS


def test_refill_forgets_throttled_stopped_round() -> None:
    """A `stopped` held back by throttling, then cancelled: flush lag counts from the refresh due time."""
    table, index = make_table(forwarders=1)
    policy = HealthPolicy(max_inflight=4, suspend_s=300, disable_after_failures=10, probe_base_s=60, probe_max_s=3600)
    registry = ForwarderRegistry(["f0"], policy, index, lambda: 100.0)
    torrent = table.open(INFO_HASH, now_s=0.0)
    drain_due(table, index, 0.0, interval_s=1800.0)
    table.note_swarm_emptied(INFO_HASH, now_s=100.0)
    registry.set_throttle(frozenset())
    batch = index.pop_due(100.0)
    assert batch is not None
    assert not registry.admit(batch, 100.0)
    assert batch.ready_since_s == 100.0

    table.note_swarm_refilled(torrent, now_s=120.0)

    assert batch.due_s == 1800.0
    assert batch.ready_since_s is None


def test_refill_after_stopped_sent_starts_again() -> None:
    table, index = make_table()
    torrent = table.open(INFO_HASH, now_s=0.0)
    drain_due(table, index, 0.0)
    table.note_swarm_emptied(INFO_HASH, now_s=50.0)
    first = index.pop_due(50.0)
    assert first is not None
    table.after_success(first, table.start_announce(first), 1800.0, 0.0, peer_count=0, now_s=50.0)

    table.note_swarm_refilled(torrent, now_s=60.0)

    # The batch that already sent `stopped` starts over; the two others simply stay.
    assert sorted(event.value for event in drain_due(table, index, 60.0)) == ["started"]
    assert table.batch_count == FORWARDERS


def test_swarm_emptied_during_flight_sends_stopped_after() -> None:
    table, index = make_table()
    table.open(INFO_HASH, now_s=0.0)
    drain_due(table, index, 0.0)
    batch = index.pop_due(1800.0)
    assert batch is not None
    event = table.start_announce(batch)

    table.note_swarm_emptied(INFO_HASH, now_s=1801.0)
    table.after_success(batch, event, 1800.0, 0.0, peer_count=0, now_s=1802.0)

    assert batch.pending_event is UpstreamEvent.STOPPED
    assert batch.due_s == 1802.0


def test_failure_backs_off_exponentially_with_jitter() -> None:
    table, index = make_table(forwarders=1)
    table.open(INFO_HASH, now_s=0.0)
    batch = index.pop_due(0.0)
    assert batch is not None

    now_s = 0.0
    for failures, ceiling_s in enumerate([30.0, 60.0, 120.0, 240.0, 480.0, 600.0, 600.0], start=1):
        event = table.start_announce(batch)
        assert event is UpstreamEvent.STARTED
        table.after_failure(batch, event, now_s)
        delay_s = batch.due_s - now_s
        assert batch.failures == failures
        assert ceiling_s * 0.5 <= delay_s <= ceiling_s
        now_s = batch.due_s
        assert index.pop_due(now_s) is batch


def test_stopped_gives_up_after_two_failures() -> None:
    table, index = make_table()
    table.open(INFO_HASH, now_s=0.0)
    drain_due(table, index, 0.0)
    table.note_swarm_emptied(INFO_HASH, now_s=10.0)

    now_s = 10.0
    for _ in range(2):
        while (batch := index.pop_due(now_s)) is not None:
            table.after_failure(batch, table.start_announce(batch), now_s)
        now_s += 1000.0

    assert table.get(INFO_HASH) is None
    assert len(index) == 0


@pytest.mark.asyncio
async def test_first_round_ends_at_first_peers() -> None:
    table, index = make_table(first_wait_s=1.5)
    torrent = table.open(INFO_HASH, now_s=0.0)
    first_round = torrent.first_round
    assert first_round is not None

    empty = index.pop_due(0.0)
    assert empty is not None
    table.after_success(empty, table.start_announce(empty), 1800.0, 0.0, peer_count=0, now_s=0.1)
    assert not first_round.done.done()

    with_peers = index.pop_due(0.0)
    assert with_peers is not None
    table.after_success(with_peers, table.start_announce(with_peers), 1800.0, 0.0, peer_count=5, now_s=0.2)
    assert first_round.done.done()
    assert torrent.first_round is None


@pytest.mark.asyncio
async def test_first_round_ends_when_all_failed() -> None:
    table, index = make_table(first_wait_s=1.5)
    torrent = table.open(INFO_HASH, now_s=0.0)
    first_round = torrent.first_round
    assert first_round is not None

    while (batch := index.pop_due(0.0)) is not None:
        assert not first_round.done.done()
        table.after_failure(batch, table.start_announce(batch), 0.1)

    assert first_round.done.done()
