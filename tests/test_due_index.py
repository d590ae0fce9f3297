from aggregator.batch import Batch, TorrentBatches
from aggregator.due_index import DueIndex


def make_batch(label: int) -> Batch:
    return Batch(TorrentBatches(bytes([label]) * 20), forwarder_index=0)


def test_pop_due_follows_due_time() -> None:
    index = DueIndex()
    late, early, middle = make_batch(1), make_batch(2), make_batch(3)
    index.schedule(late, 30.0)
    index.schedule(early, 10.0)
    index.schedule(middle, 20.0)

    assert index.pop_due(5.0) is None
    assert index.pop_due(25.0) is early
    assert index.pop_due(25.0) is middle
    assert index.pop_due(25.0) is None
    assert index.pop_due(30.0) is late
    assert len(index) == 0


def test_equal_due_times_pop_in_insertion_order() -> None:
    index = DueIndex()
    batches = [make_batch(label) for label in range(5)]
    for batch in batches:
        index.schedule(batch, 10.0)

    popped = [index.pop_due(10.0) for _ in batches]

    assert popped == batches


def test_schedule_moves_existing_batch() -> None:
    index = DueIndex()
    first, second = make_batch(1), make_batch(2)
    index.schedule(first, 10.0)
    index.schedule(second, 20.0)

    index.schedule(first, 30.0)

    assert len(index) == 2
    assert index.earliest() is second
    assert first.due_s == 30.0


def test_new_earliest_triggers_callback() -> None:
    calls: list[int] = []
    index = DueIndex(on_new_earliest=lambda: calls.append(1))
    first, later, earlier = make_batch(1), make_batch(2), make_batch(3)

    index.schedule(first, 10.0)
    index.schedule(later, 20.0)
    index.schedule(earlier, 5.0)

    assert len(calls) == 2


def test_remove_and_count_due() -> None:
    index = DueIndex()
    batches = [make_batch(label) for label in range(6)]
    for offset, batch in enumerate(batches):
        index.schedule(batch, 10.0 + offset)

    index.remove(batches[0])
    index.remove(batches[0])

    assert len(index) == 5
    assert batches[0] not in index
    assert index.count_due(12.0) == 2
    assert index.count_due(100.0) == 5
    assert index.count_due(0.0) == 0
