"""Batches: the upstream announce work of one (infohash, forwarder) pair, coalesced.

However many local peers announce an infohash, each forwarder has exactly one batch for it. A
client announce only updates shared per-infohash state (port, left) in place; it adds no queue
entry. Only events change the schedule: first sight of an infohash opens one batch per forwarder,
the first `completed` moves them forward once, and an emptied swarm queues an upstream `stopped`.
"""

import asyncio
import enum


class UpstreamEvent(enum.Enum):
    """The `event` the next upstream announce of a batch carries."""

    NONE = ""
    STARTED = "started"
    COMPLETED = "completed"
    STOPPED = "stopped"


class Priority(enum.IntEnum):
    """Why a batch is due: its first announce, an event, or a periodic refresh."""

    INITIAL = 0
    EVENT = 1
    REFRESH = 2


_IN_FLIGHT = 1
_RETIRED = 2
_ANNOUNCED = 4


class Batch:
    """The pending upstream announce of one infohash to one forwarder."""

    __slots__ = (
        "torrent",
        "forwarder_index",
        "due_s",
        "sequence",
        "ready_since_s",
        "in_index",
        "_flags",
        "priority",
        "pending_event",
        "tracker_id",
        "interval_s",
        "min_interval_s",
        "last_success_s",
        "failures",
    )

    def __init__(self, torrent: "TorrentBatches", forwarder_index: int) -> None:
        self.torrent = torrent
        self.forwarder_index = forwarder_index
        self.due_s = 0.0
        self.sequence = 0
        # The due time of the current round, kept while the forwarder registry delays the batch
        # (throttled, or waiting for an in-flight slot) and moves due_s, and None otherwise. The
        # dispatcher measures flush lag from it and clears it when it hands the batch to a worker.
        self.ready_since_s: float | None = None
        self.in_index = 0  # which DueIndex list contains the batch, or 0 for none
        # in_flight, retired and announced share one int: a slot costs 8 bytes on each of up to
        # millions of batches.
        self._flags = 0
        self.priority = Priority.INITIAL
        self.pending_event = UpstreamEvent.STARTED
        self.tracker_id: bytes | None = None
        self.interval_s = 0.0
        self.min_interval_s = 0.0
        self.last_success_s: float | None = None
        self.failures = 0  # consecutive failed announces, for the back-off

    @property
    def round_due_s(self) -> float:
        """Return the due time of the current round, before any throttle or waiting-queue delay."""
        return self.due_s if self.ready_since_s is None else self.ready_since_s

    @property
    def in_flight(self) -> bool:
        """True while a worker announces the batch."""
        return bool(self._flags & _IN_FLIGHT)

    @in_flight.setter
    def in_flight(self, value: bool) -> None:
        self._set_flag(_IN_FLIGHT, value)

    @property
    def retired(self) -> bool:
        """True once the batch left its torrent; a retired batch is never scheduled again."""
        return bool(self._flags & _RETIRED)

    @retired.setter
    def retired(self, value: bool) -> None:
        self._set_flag(_RETIRED, value)

    @property
    def announced(self) -> bool:
        """True once a `started` reached this forwarder."""
        return bool(self._flags & _ANNOUNCED)

    @announced.setter
    def announced(self, value: bool) -> None:
        self._set_flag(_ANNOUNCED, value)

    def _set_flag(self, flag: int, value: bool) -> None:
        self._flags = self._flags | flag if value else self._flags & ~flag

    def __lt__(self, other: "Batch") -> bool:
        if self.due_s != other.due_s:
            return self.due_s < other.due_s

        return self.sequence < other.sequence

    @property
    def info_hash(self) -> bytes:
        return self.torrent.info_hash


class FirstRound:
    """The first upstream announces of a new infohash, which its first client announces wait for."""

    __slots__ = ("pending", "done", "deadline_s")

    def __init__(self, pending: int, deadline_s: float) -> None:
        self.pending = pending
        self.done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.deadline_s = deadline_s

    def finish_one(self, brought_peers: bool) -> None:
        """Record one finished first announce; the wait ends at the first peers or the last reply."""
        self.pending -= 1
        if (brought_peers or self.pending <= 0) and not self.done.done():
            self.done.set_result(None)


class TorrentBatches:
    """Per-infohash upstream state shared by the batches of all forwarders."""

    __slots__ = (
        "info_hash",
        "batches",
        "live_batches",
        "upstream_port",
        "left",
        "completed_sent",
        "stopping",
        "first_round",
        "replied",
    )

    def __init__(self, info_hash: bytes) -> None:
        self.info_hash = info_hash
        self.batches: list[Batch] = []
        self.live_batches = 0  # batches not yet retired; the torrent is dropped at 0
        self.upstream_port = 0  # port of the most recent local peer
        self.left = 1  # `left` announced upstream: 0 only while every local peer is a seeder
        self.completed_sent = False
        self.stopping = False  # the local swarm emptied and `stopped` announces are queued
        self.first_round: FirstRound | None = None
        self.replied = 0  # batches that got at least one successful upstream reply
