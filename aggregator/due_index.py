"""The due-time index: every batch waiting for its next upstream announce, ordered by due time.

The index is the queue. Nothing is dropped when workers are busy: due batches simply stay here
past their due time until the dispatcher pops them. Initial and event batches sit in their own
list, so that when both kinds are overdue, they go before periodic refreshes.
"""

from collections.abc import Callable
from itertools import count

from sortedcontainers import SortedList

from aggregator.batch import Batch, Priority

# Values of Batch.in_index: the list that contains the batch (0 for none).
_NOT_INDEXED = 0
_URGENT = 1  # Priority.INITIAL and Priority.EVENT
_REFRESH = 2


class DueIndex:
    """Batches sorted by (due time, insertion sequence); O(log n) insert, move and removal.

    `on_new_earliest` is called when an insert or a move makes a batch the earliest one, so the
    dispatcher can wake up before the time it was sleeping until.
    """

    def __init__(self, on_new_earliest: Callable[[], None] = lambda: None) -> None:
        # Batch defines __lt__ on (due_s, sequence), so the lists contain the batches themselves.
        self._lists = {_URGENT: SortedList(), _REFRESH: SortedList()}
        self._sequence = count()
        self.on_new_earliest = on_new_earliest

    def __len__(self) -> int:
        return len(self._lists[_URGENT]) + len(self._lists[_REFRESH])

    def __contains__(self, batch: Batch) -> bool:
        return bool(batch.in_index)

    def schedule(self, batch: Batch, due_s: float) -> None:
        """Insert the batch at `due_s`, or move it there if it is already in the index."""
        if batch.in_index:
            self._lists[batch.in_index].remove(batch)

        batch.due_s = due_s
        batch.sequence = next(self._sequence)
        target = _REFRESH if batch.priority is Priority.REFRESH else _URGENT
        self._lists[target].add(batch)
        batch.in_index = target

        if self.earliest() is batch:
            self.on_new_earliest()

    def remove(self, batch: Batch) -> None:
        """Take the batch out of the index; nothing happens if it is not in it."""
        if not batch.in_index:
            return

        self._lists[batch.in_index].remove(batch)
        batch.in_index = _NOT_INDEXED

    def earliest(self) -> Batch | None:
        """Return the batch with the smallest due time over both lists."""
        fronts: list[Batch] = [batches[0] for batches in self._lists.values() if batches]
        if not fronts:
            return None

        return min(fronts)

    def pop_due(self, now_s: float) -> Batch | None:
        """Remove and return a due batch: the oldest urgent one first, then the oldest refresh."""
        for target in (_URGENT, _REFRESH):
            batches = self._lists[target]
            if batches and batches[0].due_s <= now_s:
                batch: Batch = batches.pop(0)
                batch.in_index = _NOT_INDEXED
                return batch

        return None

    def count_due(self, now_s: float) -> int:
        """Count the batches whose due time has passed: the ready backlog."""
        probe = _DueProbe(now_s)

        return sum(int(batches.bisect_right(probe)) for batches in self._lists.values())

    def oldest_due_s(self, now_s: float) -> float | None:
        """Return the due time of the longest-waiting due batch, or None if none is due."""
        earliest = self.earliest()
        if earliest is None or earliest.due_s > now_s:
            return None

        return earliest.due_s


class _DueProbe:
    """A stand-in that sorts after every batch due at or before `due_s`."""

    __slots__ = ("due_s", "sequence")

    def __init__(self, due_s: float) -> None:
        self.due_s = due_s
        self.sequence = float("inf")

    def __lt__(self, other: Batch) -> bool:
        return (self.due_s, self.sequence) < (other.due_s, other.sequence)
