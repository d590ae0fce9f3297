"""The batch table: one batch per (infohash, forwarder), and every schedule change they go through.

Handlers call the `note_*` methods on events; workers call `after_success` and `after_failure`
when an upstream announce ends. Both sides only move batches in the DueIndex, so a batch is never
queued twice.
"""

import random
from collections.abc import Callable

from aggregator.batch import Batch, FirstRound, Priority, TorrentBatches, UpstreamEvent
from aggregator.due_index import DueIndex

# Bound on remembered `retry in: never` pairs; past it the oldest is forgotten (and tried again).
MAX_STOPPED_PAIRS = 100_000

# A `stopped` announce is retried this many times at most: the swarm is gone, so giving up is
# harmless, and the upstream drops our entry by itself after its own peer timeout.
MAX_STOPPED_ATTEMPTS = 2

# Distinct upstream interval values whose float objects batches share.
MAX_SHARED_INTERVALS = 1024


class BatchTable:
    """All batches, keyed by infohash, with their places in the DueIndex."""

    def __init__(
        self,
        forwarder_count: int,
        index: DueIndex,
        first_wait_s: float,
        retry_base_s: float,
        retry_max_s: float,
        max_batches: int = 0,
        choose_forwarders: Callable[[], list[int]] | None = None,
    ) -> None:
        self._forwarder_count = forwarder_count
        self._index = index
        self._first_wait_s = first_wait_s
        self._retry_base_s = retry_base_s
        self._retry_max_s = retry_max_s
        self._max_batches = max_batches  # 0 for no cap
        # Which forwarders a new infohash is announced to; all by default.
        self._choose_forwarders = choose_forwarders or (lambda: list(range(forwarder_count)))
        self.refused_pairs = 0  # pairs not opened because max_batches was reached
        self._torrents: dict[bytes, TorrentBatches] = {}
        self.batch_count = 0
        self._intervals: dict[float, float] = {}  # one float object per interval value seen
        # Pairs whose upstream replied `retry in: never`, oldest first; kept across swarm lifetimes.
        self._stopped_pairs: dict[tuple[bytes, int], None] = {}

    def __len__(self) -> int:
        return len(self._torrents)

    def get(self, info_hash: bytes) -> TorrentBatches | None:
        return self._torrents.get(info_hash)

    def torrents(self) -> list[TorrentBatches]:
        return list(self._torrents.values())

    def stopped_pairs(self) -> list[tuple[bytes, int]]:
        return list(self._stopped_pairs)

    def restore_stopped_pair(self, info_hash: bytes, forwarder_index: int) -> None:
        self._stopped_pairs[(info_hash, forwarder_index)] = None

    def restore_batch(self, batch: Batch, due_s: float) -> None:
        """Add a batch rebuilt from a snapshot, filing its torrent first if needed."""
        torrent = batch.torrent
        self._torrents.setdefault(torrent.info_hash, torrent)
        torrent.batches.append(batch)
        if (torrent.info_hash, batch.forwarder_index) in self._stopped_pairs:
            batch.retired = True
            return

        torrent.live_batches += 1
        self.batch_count += 1
        self._index.schedule(batch, due_s)

    def room(self) -> int | None:
        """Return how many more batches max_batches allows, or None without a cap."""
        if not self._max_batches:
            return None

        return max(self._max_batches - self.batch_count, 0)

    def open(self, info_hash: bytes, now_s: float) -> TorrentBatches:
        """Open one batch per chosen forwarder for a newly seen infohash, all due now.

        Pairs beyond max_batches are refused and counted; the torrent may end with no batch.
        """
        torrent = TorrentBatches(info_hash)
        self._torrents[info_hash] = torrent
        if self._forwarder_count and self._first_wait_s > 0:
            torrent.first_round = FirstRound(self._forwarder_count, now_s + self._first_wait_s)

        forwarder_indexes = self._choose_forwarders()
        room = self.room()
        if room is not None and room < len(forwarder_indexes):
            self.refused_pairs += len(forwarder_indexes) - room
            forwarder_indexes = forwarder_indexes[:room]

        for forwarder_index in forwarder_indexes:
            batch = Batch(torrent, forwarder_index)
            torrent.batches.append(batch)
            if (info_hash, forwarder_index) in self._stopped_pairs:
                batch.retired = True
                continue

            self._index.schedule(batch, now_s)
            torrent.live_batches += 1

        self.batch_count += torrent.live_batches
        if torrent.first_round is not None:
            torrent.first_round.pending = torrent.live_batches
        if torrent.live_batches == 0:
            del self._torrents[info_hash]
            torrent.first_round = None
            torrent.batches = []  # no batch <-> torrent cycle is left for the garbage collector

        return torrent

    def note_completed(self, torrent: TorrentBatches, now_s: float) -> None:
        """Queue one upstream `completed` per forwarder, the first time a local peer completes."""
        if torrent.completed_sent:
            return

        torrent.completed_sent = True
        for batch in torrent.batches:
            if batch.retired or not batch.announced or batch.pending_event is not UpstreamEvent.NONE:
                continue

            batch.pending_event = UpstreamEvent.COMPLETED
            batch.priority = Priority.EVENT
            if not batch.in_flight:
                self._index.schedule(batch, self._event_due_s(batch, now_s))

    def note_swarm_emptied(self, info_hash: bytes, now_s: float) -> None:
        """Queue an upstream `stopped` on every batch that announced, and retire the others."""
        torrent = self._torrents.get(info_hash)
        if torrent is None:
            return

        torrent.stopping = True
        for batch in list(torrent.batches):
            if batch.retired or batch.in_flight:
                continue  # a worker finishing an announce checks `stopping` itself

            if not batch.announced:
                self.retire(batch)
                continue

            batch.pending_event = UpstreamEvent.STOPPED
            batch.priority = Priority.EVENT
            self._index.schedule(batch, now_s)

    def note_swarm_refilled(self, torrent: TorrentBatches, now_s: float) -> None:
        """Undo a queued `stopped`: a local peer arrived before the upstream announces went out."""
        if not torrent.stopping:
            return

        torrent.stopping = False
        for position, batch in enumerate(torrent.batches):
            if batch.in_flight:
                continue  # after_success finds `stopping` False and restarts the batch if needed

            if batch.retired and (torrent.info_hash, batch.forwarder_index) in self._stopped_pairs:
                continue

            if batch.retired:
                fresh = Batch(torrent, batch.forwarder_index)
                torrent.batches[position] = fresh
                torrent.live_batches += 1
                self.batch_count += 1
                self._index.schedule(fresh, now_s)
                continue

            if batch.pending_event is UpstreamEvent.STOPPED:
                batch.pending_event = UpstreamEvent.NONE
                batch.priority = Priority.REFRESH
                batch.ready_since_s = None  # a new round: the refresh is due at its own time
                self._index.schedule(batch, self._refresh_due_s(batch, now_s))

    def start_announce(self, batch: Batch) -> UpstreamEvent:
        """Mark the batch as in flight and return the event its announce carries."""
        batch.in_flight = True

        return batch.pending_event

    def after_success(
        self,
        batch: Batch,
        sent_event: UpstreamEvent,
        interval_s: float,
        min_interval_s: float,
        peer_count: int,
        now_s: float,
    ) -> None:
        """Reschedule or retire a batch after an upstream reply without `failure reason`."""
        torrent = batch.torrent
        if batch.retired:  # retired while in flight (its infohash was denied)
            batch.in_flight = False
            return

        self._finish_first_round(batch, brought_peers=peer_count > 0)
        if batch.last_success_s is None:
            torrent.replied += 1

        batch.in_flight = False
        batch.failures = 0
        # Upstreams send few distinct intervals, so batches share one float object per value
        # instead of holding 48 bytes of their own.
        batch.interval_s = self._shared_interval(interval_s)
        batch.min_interval_s = self._shared_interval(min_interval_s)
        batch.last_success_s = now_s

        if sent_event is UpstreamEvent.STARTED:
            batch.announced = True
        if batch.pending_event is sent_event:
            batch.pending_event = UpstreamEvent.NONE

        if sent_event is UpstreamEvent.STOPPED:
            if torrent.stopping:
                self.retire(batch)
                return

            # The swarm refilled while `stopped` was in flight: start over.
            self._restart(batch, now_s)
            return

        self._reschedule(batch, now_s)

    def _shared_interval(self, interval_s: float) -> float:
        shared = self._intervals.get(interval_s)
        if shared is not None:
            return shared
        if len(self._intervals) < MAX_SHARED_INTERVALS:  # an upstream may send a new value each time
            self._intervals[interval_s] = interval_s

        return interval_s

    def after_failure(
        self, batch: Batch, sent_event: UpstreamEvent, now_s: float, retry_at_s: float | None = None
    ) -> None:
        """Retry a batch at `retry_at_s`, or after exponential back-off with jitter.

        A batch whose swarm emptied is retired instead when retrying is pointless.
        """
        torrent = batch.torrent
        if batch.retired:
            batch.in_flight = False
            return

        self._finish_first_round(batch, brought_peers=False)
        batch.in_flight = False
        batch.failures += 1

        if torrent.stopping and (not batch.announced or batch.failures >= MAX_STOPPED_ATTEMPTS):
            self.retire(batch)
            return

        if torrent.stopping:
            batch.pending_event = UpstreamEvent.STOPPED

        if retry_at_s is None:
            ceiling_s = min(self._retry_max_s, self._retry_base_s * 2 ** (batch.failures - 1))
            # Jitter spreads the retries of many batches that failed together (one upstream outage).
            retry_at_s = now_s + ceiling_s * random.uniform(0.5, 1.0)
        self._index.schedule(batch, retry_at_s)

    def stop_pair(self, batch: Batch) -> None:
        """Retire a batch for good: its upstream asked never to be sent this infohash again (BEP 31)."""
        batch.in_flight = False
        self._finish_first_round(batch, brought_peers=False)
        self._stopped_pairs[(batch.info_hash, batch.forwarder_index)] = None
        if len(self._stopped_pairs) > MAX_STOPPED_PAIRS:
            del self._stopped_pairs[next(iter(self._stopped_pairs))]  # forget the oldest
        self.retire(batch)

    def is_stopped_pair(self, info_hash: bytes, forwarder_index: int) -> bool:
        return (info_hash, forwarder_index) in self._stopped_pairs

    def retire_infohash(self, info_hash: bytes) -> None:
        """Retire every batch of an infohash at once, without any upstream `stopped`."""
        torrent = self._torrents.get(info_hash)
        if torrent is None:
            return

        for batch in list(torrent.batches):  # retiring the last batch empties the list
            batch.in_flight = False  # an announce in flight finds the batch retired and stops there
            self.retire(batch)

    def retire(self, batch: Batch) -> None:
        """Remove a batch for good; the infohash leaves the table with its last batch."""
        if batch.retired:
            return

        self._index.remove(batch)
        batch.retired = True
        torrent = batch.torrent
        torrent.live_batches -= 1
        self.batch_count -= 1
        if torrent.live_batches == 0 and self._torrents.get(torrent.info_hash) is torrent:
            del self._torrents[torrent.info_hash]
            if torrent.first_round is not None and not torrent.first_round.done.done():
                torrent.first_round.done.set_result(None)
            # Batches still in flight keep their torrent, but the torrent no longer keeps them, so
            # reference counting frees both without the cyclic garbage collector (see gc_policy).
            torrent.batches = []
            torrent.first_round = None

    def _reschedule(self, batch: Batch, now_s: float) -> None:
        torrent = batch.torrent
        if torrent.stopping:
            if not batch.announced:
                self.retire(batch)
                return

            batch.pending_event = UpstreamEvent.STOPPED
            batch.priority = Priority.EVENT
            self._index.schedule(batch, now_s)
            return

        if batch.pending_event is UpstreamEvent.COMPLETED:
            batch.priority = Priority.EVENT
            self._index.schedule(batch, self._event_due_s(batch, now_s))
            return

        batch.priority = Priority.REFRESH
        self._index.schedule(batch, self._refresh_due_s(batch, now_s))

    def _restart(self, batch: Batch, now_s: float) -> None:
        batch.announced = False
        batch.pending_event = UpstreamEvent.STARTED
        batch.priority = Priority.EVENT
        self._index.schedule(batch, now_s)

    def _finish_first_round(self, batch: Batch, brought_peers: bool) -> None:
        """Count the batch's first announce attempt, whatever its outcome, towards the first round."""
        first_round = batch.torrent.first_round
        is_first_attempt = batch.last_success_s is None and batch.failures == 0
        if first_round is None or batch.priority is not Priority.INITIAL or not is_first_attempt:
            return

        first_round.finish_one(brought_peers)
        if first_round.done.done():
            batch.torrent.first_round = None

    @staticmethod
    def _refresh_due_s(batch: Batch, now_s: float) -> float:
        """Return the next periodic due time: one upstream interval after the last success, never before `min interval`."""
        if batch.last_success_s is None:
            return now_s

        return batch.last_success_s + max(batch.interval_s, batch.min_interval_s)

    @staticmethod
    def _event_due_s(batch: Batch, now_s: float) -> float:
        """Return the due time of an event announce: now, unless that breaks the upstream's `min interval`."""
        if batch.last_success_s is None:
            return now_s

        return max(now_s, batch.last_success_s + batch.min_interval_s)
