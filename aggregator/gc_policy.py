"""Keeps Python's cyclic garbage collector away from the long-lived state.

A full collection walks every object the collector tracks. With hundreds of thousands of batches
that pauses the event loop for tens of milliseconds, and every client reply waits (docs/benchmarks.md).
The long-lived state needs no cyclic collection: swarms, batches and cached peers form no
reference cycles once a torrent leaves the batch table, so reference counting frees them.

So once per `freeze_interval_s` the policy collects the objects that are not frozen yet (those
created since the last freeze, a short pause) and freezes the survivors (gc.freeze): frozen
objects are never walked again. A cycle that was alive when it was frozen is not freed when it
becomes garbage, so once per `full_interval_s` everything is unfrozen and collected in one full
pass, and that is the only long pause left.
"""

import gc
import time
from collections.abc import Callable

import structlog

log = structlog.get_logger("aggregator.gc")

# How often frozen objects get one full collection, for the cycles frozen while still alive.
FULL_COLLECTION_INTERVAL_S = 3600.0


class GcPolicy:
    """A policy that freezes the collector's tracked objects periodically (none when `freeze_interval_s` is 0)."""

    def __init__(
        self,
        freeze_interval_s: float,
        full_interval_s: float = FULL_COLLECTION_INTERVAL_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.freeze_interval_s = freeze_interval_s
        self._full_interval_s = full_interval_s
        self._clock = clock
        self._next_full_s = 0.0
        self.full_collections = 0
        self.freezes = 0

    @property
    def enabled(self) -> bool:
        return self.freeze_interval_s > 0

    def start(self) -> None:
        """Collect everything once and freeze what survives: the state loaded at start."""
        if not self.enabled:
            return

        self._full_collection()

    def tick(self) -> None:
        """Freeze what survived since the last tick, or run the periodic full collection."""
        if not self.enabled:
            return

        if self._clock() >= self._next_full_s:
            self._full_collection()
            return

        gc.collect()  # walks only the objects created since the last freeze
        gc.freeze()
        self.freezes += 1

    def stop(self) -> None:
        """Hand every frozen object back to the collector."""
        if self.enabled:
            gc.unfreeze()

    def _full_collection(self) -> None:
        started_s = time.perf_counter()
        gc.unfreeze()
        freed = gc.collect()
        gc.freeze()
        self.full_collections += 1
        self._next_full_s = self._clock() + self._full_interval_s
        log.info(
            "gc.full_collection",
            freed=freed,
            frozen=gc.get_freeze_count(),
            pause_ms=round((time.perf_counter() - started_s) * 1000, 1),
        )
