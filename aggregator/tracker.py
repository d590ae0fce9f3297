"""The announce core shared by every transport: local swarm, coalesced batches, merged peers."""

import asyncio
from collections.abc import Callable
from dataclasses import dataclass

from aggregator.announce import AnnounceRequest, Event
from aggregator.batch import TorrentBatches
from aggregator.batch_table import BatchTable
from aggregator.endpoints import IPV4_ENDPOINT_BYTES, IPV6_ENDPOINT_BYTES, make_endpoint
from aggregator.errors import InfohashDeniedError
from aggregator.metrics import Metrics
from aggregator.overload import Admission, retry_in_minutes
from aggregator.peer_cache import PeerCache
from aggregator.swarm import Swarm, SwarmRegistry

# Enum members as module names: on Python 3.11 each `Enum.MEMBER` look-up costs about 0.1 µs,
# and an announce made six of them.
_STOPPED = Event.STOPPED
_COMPLETED = Event.COMPLETED
_ADMITTED = Admission.ADMITTED


@dataclass(frozen=True, slots=True)
class ReplyPolicy:
    """Intervals sent to clients."""

    announce_interval: int
    min_interval: int
    first_interval: int
    retry_interval: int = 300  # for a client whose new infohash was not admitted
    overload_failure: bool = False  # reply to such a client with a BEP 31 failure instead of peers


@dataclass(frozen=True, slots=True)
class ScrapeCounts:
    """Swarm counts of one infohash: the local swarm plus the largest counts an upstream reported."""

    complete: int
    incomplete: int
    downloaded: int


@dataclass(slots=True)
class AnnounceResult:
    """Content of an announce reply, before a transport encodes it."""

    interval: int
    min_interval: int
    complete: int
    incomplete: int
    peers4: bytes  # compact IPv4 endpoints (BEP 23), local peers first
    peers6: bytes  # compact IPv6 endpoints (BEP 7), local peers first
    swarm: Swarm | None  # the requester's swarm, for the peer ids of a non-compact reply
    failure_reason: str | None = None  # set when overload_reply is "failure" and the infohash was not admitted
    retry_in_min: int | None = None  # BEP 31 `retry in` that goes with failure_reason


class Tracker:
    """Handles announces: updates the local swarm, coalesces upstream work, and picks peers to return."""

    def __init__(
        self,
        swarms: SwarmRegistry,
        table: BatchTable,
        cache: PeerCache,
        policy: ReplyPolicy,
        forwarder_count: int,
        clock: Callable[[], float],
        is_allowed: Callable[[bytes], bool] = lambda info_hash: True,
        metrics: Metrics | None = None,
        admit_new: Callable[[float], Admission] = lambda now_s: Admission.ADMITTED,
    ) -> None:
        self._metrics = metrics
        self._admit_new = admit_new  # overload control's decision for a first-seen infohash
        self.is_allowed = is_allowed  # the access lists; replaceable while running
        self.swarms = swarms
        self.table = table
        self.cache = cache
        self._policy = policy
        self._forwarder_count = forwarder_count
        self._clock = clock
        self.coalesced = 0  # announces that created no upstream work
        self.admission_counts = {decision: 0 for decision in Admission}

    async def announce(self, request: AnnounceRequest, packed_ip: bytes) -> AnnounceResult:
        """Record the announce and return the peers and counts to send back, waiting if needed.

        Raises InfohashDeniedError for an infohash the access lists reject; it is never forwarded.
        """
        outcome = self.begin_announce(request, packed_ip)
        if isinstance(outcome, AnnounceResult):
            return outcome

        return await outcome.finish()

    def begin_announce(
        self, request: AnnounceRequest, packed_ip: bytes, same_family_only: bool = False
    ) -> "AnnounceResult | FirstRoundWait":
        """Record the announce, and return the reply now or a wait for the first upstream round.

        Most announces get their reply at once, so a transport can reply without starting a task.
        With `same_family_only`, only peers of the requester's address family are returned, as
        a UDP reply can carry one family only. Raises InfohashDeniedError for a denied infohash.
        """
        now_s = self._clock()
        info_hash = request.info_hash
        if not self.is_allowed(info_hash):
            self._count_admission(Admission.DENIED)
            raise InfohashDeniedError(info_hash)
        endpoint = make_endpoint(packed_ip, request.port)
        width = len(endpoint) if same_family_only else None

        if request.event is _STOPPED:
            self.swarms.remove_peer(info_hash, endpoint)  # an emptied swarm queues upstream `stopped`

            return self._result(info_hash, self.swarms.get(info_hash), None, endpoint, 0, width, now_s)

        swarm, swarm_created = self.swarms.announce(info_hash, endpoint, request.peer_id, request.left, now_s)
        if request.event is _COMPLETED:
            swarm.downloads += 1
        torrent, admission = self._coalesce(request, swarm, swarm_created, now_s)
        if admission is not _ADMITTED:
            return self._not_admitted(info_hash, swarm, endpoint, request.numwant, width, now_s)

        first_round = torrent.first_round if torrent is not None else None
        if first_round is not None and not first_round.done.done() and first_round.deadline_s > now_s:
            return FirstRoundWait(self, first_round.done, first_round.deadline_s, info_hash, endpoint, request.numwant, width)

        return self._result(info_hash, swarm, torrent, endpoint, request.numwant, width, now_s)

    def finish_wait(self, wait: "FirstRoundWait") -> AnnounceResult:
        """Build the reply of an announce whose first-round wait ended, with what is known now."""
        swarm = self.swarms.get(wait.info_hash)
        torrent = self.table.get(wait.info_hash)

        return self._result(wait.info_hash, swarm, torrent, wait.endpoint, wait.numwant, wait.width, self._clock())

    def now_s(self) -> float:
        return self._clock()

    def _count_admission(self, decision: Admission) -> None:
        self.admission_counts[decision] += 1
        if self._metrics is not None:
            self._metrics.admission.labels(decision.value).inc()

    def _not_admitted(
        self, info_hash: bytes, swarm: Swarm, endpoint: bytes, numwant: int, width: int | None, now_s: float
    ) -> AnnounceResult:
        """Reply with what is known locally, and ask the client to come back after retry_interval."""
        result = self._result(info_hash, swarm, None, endpoint, numwant, width, now_s)
        result.interval = self._policy.retry_interval
        result.min_interval = min(self._policy.min_interval, result.interval)
        if self._policy.overload_failure:
            result.failure_reason = "tracker overloaded: new torrents are accepted at a limited rate, retry later"
            result.retry_in_min = retry_in_minutes(self._policy.retry_interval)

        return result

    def scrape(self, info_hashes: list[bytes]) -> list[ScrapeCounts]:
        """Return the counts of each infohash, in request order; unknown or denied ones get zeros.

        Scrape never creates a swarm or a batch.
        """
        now_s = self._clock()
        counts = []
        for info_hash in info_hashes:
            if not self.is_allowed(info_hash):
                counts.append(ScrapeCounts(0, 0, 0))
                continue

            swarm = self.swarms.get(info_hash)
            complete = swarm.seeders if swarm is not None else 0
            incomplete = swarm.leechers if swarm is not None else 0
            downloaded = swarm.downloads if swarm is not None else 0

            cached = self.cache.get(info_hash)
            if cached is not None:
                cached.merged(now_s)  # drops expired entries and refreshes the counts
                complete += cached.complete
                incomplete += cached.incomplete
                downloaded += cached.downloaded

            counts.append(ScrapeCounts(complete, incomplete, downloaded))

        return counts

    def _coalesce(
        self, request: AnnounceRequest, swarm: Swarm, swarm_created: bool, now_s: float
    ) -> tuple[TorrentBatches | None, Admission]:
        """Fold the announce into the infohash's batches; only events touch the schedule."""
        if not self._forwarder_count:
            return None, _ADMITTED

        torrent = self.table.get(request.info_hash)
        if torrent is None:
            torrent, admission = self._open(request.info_hash, now_s)
            if torrent is None:
                return None, admission
        elif swarm_created:
            self.table.note_swarm_refilled(torrent, now_s)
        elif request.event is not _COMPLETED or torrent.completed_sent:
            self.coalesced += 1

        torrent.upstream_port = request.port
        # Announce as a leecher while any local peer still downloads, so upstreams return seeders.
        torrent.left = 0 if swarm.seeders == len(swarm.positions) else (swarm.last_leecher_left or 1)

        if request.event is _COMPLETED:
            self.table.note_completed(torrent, now_s)

        return torrent, _ADMITTED

    def _open(self, info_hash: bytes, now_s: float) -> tuple[TorrentBatches | None, Admission]:
        """Open the batches of a first-seen infohash unless overload control or max_batches refuses."""
        admission = self._admit_new(now_s)
        torrent = None
        if admission is Admission.ADMITTED:
            full = self.table.room() == 0
            torrent = self.table.open(info_hash, now_s)  # counts the refused pairs when full
            if full:
                admission, torrent = Admission.REFUSED_FULL, None

        self._count_admission(admission)

        return torrent, admission

    def _result(
        self,
        info_hash: bytes,
        swarm: Swarm | None,
        torrent: TorrentBatches | None,
        endpoint: bytes,
        numwant: int,
        width: int | None,
        now_s: float,
    ) -> AnnounceResult:
        """Pick local peers first, then fill up with distinct upstream peers, never the requester."""
        if swarm is not None:
            peers4, peers6 = swarm.sample(numwant, endpoint, width)
            complete = swarm.seeders
            incomplete = len(swarm.positions) - complete
        else:
            peers4 = peers6 = b""
            complete = incomplete = 0

        upstream_found = False
        cached = self.cache.get(info_hash)
        if cached is not None:
            missing = numwant - len(peers4) // IPV4_ENDPOINT_BYTES - len(peers6) // IPV6_ENDPOINT_BYTES
            if missing > 0:
                # Upstream peers fill up only when every local peer is in the reply already, so
                # leaving out all local endpoints leaves out exactly the duplicates and the requester.
                excluded = swarm.positions if swarm is not None else (endpoint,)
                upstream4, upstream6 = cached.sample(missing, now_s, excluded, width)
                upstream_found = bool(upstream4 or upstream6)
                peers4 += upstream4
                peers6 += upstream6
            else:
                cached.merged(now_s)  # refreshes the counts below

            complete += cached.complete
            incomplete += cached.incomplete

        policy = self._policy
        interval = policy.announce_interval
        # Bring a client back soon while upstreams may still deliver peers it did not get yet.
        if torrent is not None and not upstream_found and torrent.replied < torrent.live_batches:
            interval = policy.first_interval
        min_interval = policy.min_interval if policy.min_interval < interval else interval

        # Positional arguments: keywords cost more, and this runs once per announce.
        return AnnounceResult(interval, min_interval, complete, incomplete, peers4, peers6, swarm)


class FirstRoundWait:
    """An announce of a new infohash whose reply waits for the first upstream replies, up to a deadline."""

    __slots__ = ("_tracker", "_done", "_deadline_s", "info_hash", "endpoint", "numwant", "width")

    def __init__(
        self,
        tracker: Tracker,
        done: "asyncio.Future[None]",
        deadline_s: float,
        info_hash: bytes,
        endpoint: bytes,
        numwant: int,
        width: int | None,
    ) -> None:
        self._tracker = tracker
        self._done = done
        self._deadline_s = deadline_s
        self.info_hash = info_hash
        self.endpoint = endpoint
        self.numwant = numwant
        self.width = width

    async def finish(self) -> AnnounceResult:
        """Wait for the first round or its deadline, then return the reply."""
        remaining_s = self._deadline_s - self._tracker.now_s()
        if remaining_s > 0 and not self._done.done():
            # asyncio.wait leaves the shared future alone when this request gives up waiting.
            await asyncio.wait({self._done}, timeout=remaining_s)

        return self._tracker.finish_wait(self)
