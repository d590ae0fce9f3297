"""The due-time index: every batch waiting for its next upstream announce, ordered by due time.

The index is the queue. Nothing is dropped when workers are busy: due batches simply stay here
past their due time until the dispatcher pops them.
"""

from collections.abc import Callable
from itertools import count

from sortedcontainers import SortedList

from aggregator.batch import Batch


class DueIndex:
    """Batches sorted by (due time, insertion sequence); O(log n) insert, move and removal.

    `on_new_earliest` is called when an insert or a move makes a batch the earliest one, so the
    dispatcher can wake up before the time it was sleeping until.
    """

    def __init__(self, on_new_earliest: Callable[[], None] = lambda: None) -> None:
        # Batch defines __lt__ on (due_s, sequence), so the list contains the batches themselves.
        self._batches = SortedList()
        self._sequence = count()
        self.on_new_earliest = on_new_earliest

    def __len__(self) -> int:
        return len(self._batches)

    def __contains__(self, batch: Batch) -> bool:
        return batch.in_index

    def schedule(self, batch: Batch, due_s: float) -> None:
        """Insert the batch at `due_s`, or move it there if it is already in the index."""
        if batch.in_index:
            self._batches.remove(batch)

        batch.due_s = due_s
        batch.sequence = next(self._sequence)
        self._batches.add(batch)
        batch.in_index = True

        if self._batches[0] is batch:
            self.on_new_earliest()

    def remove(self, batch: Batch) -> None:
        """Take the batch out of the index; nothing happens if it is not in it."""
        if not batch.in_index:
            return

        self._batches.remove(batch)
        batch.in_index = False

    def earliest(self) -> Batch | None:
        if not self._batches:
            return None

        first: Batch = self._batches[0]

        return first

    def pop_due(self, now_s: float) -> Batch | None:
        """Remove and return the earliest batch if it is due at `now_s`."""
        if not self._batches or self._batches[0].due_s > now_s:
            return None

        batch: Batch = self._batches.pop(0)
        batch.in_index = False

        return batch

    def count_due(self, now_s: float) -> int:
        """Count the batches whose due time has passed: the ready backlog."""
        probe = _DueProbe(now_s)

        return int(self._batches.bisect_right(probe))


class _DueProbe:
    """A stand-in that sorts after every batch due at or before `due_s`."""

    __slots__ = ("due_s", "sequence")

    def __init__(self, due_s: float) -> None:
        self.due_s = due_s
        self.sequence = float("inf")

    def __lt__(self, other: Batch) -> bool:
        return (self.due_s, self.sequence) < (other.due_s, other.sequence)
