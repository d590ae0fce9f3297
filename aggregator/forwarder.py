"""Forwarder health: state (active, suspended, disabled), latency and success averages, admission.

The dispatcher calls `ForwarderRegistry.admit` before it hands a batch to a worker. A batch of a
suspended or disabled forwarder is moved to the time the forwarder may be tried again, so it is
popped once per state change, never in a busy loop. A batch beyond the forwarder's in-flight
cap waits in that forwarder's queue until a slot of that forwarder is free.
"""

import collections
import enum
import random
import time
from collections.abc import Callable
from dataclasses import dataclass

import structlog

from aggregator.batch import Batch
from aggregator.due_index import DueIndex
from aggregator.faults import Verdict
from aggregator.upstream_reply import FailureKind

log = structlog.get_logger("aggregator.forwarder")

# Weight of the newest sample in the moving averages of latency and success.
EMA_WEIGHT = 0.2
# Individual failures are logged at DEBUG; a summary per forwarder goes out at most this often.
FAILURE_SUMMARY_PERIOD_S = 60.0
# A throttled batch is moved by throttle_defer_s times a random factor from this range. The mean
# stays throttle_defer_s, and a backlog popped within a few seconds comes back spread over a
# whole throttle_defer_s instead of as one wave.
THROTTLE_JITTER_RANGE = (0.5, 1.5)
# Throttling lets a batch through, whatever its forwarder's rank, once the batch has been ready
# (past the due time of its round) for this many times throttle_defer_s. Throttling therefore
# delays a pair but never starves it.
THROTTLE_MAX_WAIT_FACTOR = 3.0


class ForwarderState(enum.Enum):
    ACTIVE = "active"
    SUSPENDED = "suspended"
    DISABLED = "disabled"


@dataclass(frozen=True, slots=True)
class HealthPolicy:
    """Settings that drive forwarder states."""

    max_inflight: int
    suspend_s: float
    disable_after_failures: int
    probe_base_s: float
    probe_max_s: float
    throttle_defer_s: float = 60.0


class ForwarderHealth:
    """State and statistics of one forwarder."""

    __slots__ = (
        "index",
        "name",
        "state",
        "until_s",
        "reason",
        "probe_delay_s",
        "probing",
        "inflight",
        "waiting",
        "deferred",
        "ema_latency_s",
        "ema_success",
        "succeeded",
        "failed",
        "consecutive_failures",
        "last_failure_kind",
        "last_failure_detail",
        "last_failure_s",
        "last_interval_s",
        "failures_since_summary",
        "last_summary_s",
    )

    def __init__(self, index: int, name: str, probe_base_s: float) -> None:
        self.index = index
        self.name = name
        self.state = ForwarderState.ACTIVE
        self.until_s = 0.0  # end of a suspension, or the next probe of a disabled forwarder
        self.reason = ""  # why the forwarder is suspended or disabled
        self.probe_delay_s = probe_base_s  # grows while probes fail
        self.probing = False  # a probe announce of a disabled forwarder is in flight
        self.inflight = 0
        self.waiting: collections.deque[Batch] = collections.deque()  # over the in-flight cap
        self.deferred: set[Batch] = set()  # moved to until_s; pulled forward on re-enable
        self.ema_latency_s: float | None = None
        self.ema_success = 1.0
        self.succeeded = 0
        self.failed = 0
        self.consecutive_failures = 0
        self.last_failure_kind: FailureKind | None = None
        self.last_failure_detail = ""
        self.last_failure_s: float | None = None
        self.last_interval_s: int | None = None
        self.failures_since_summary: collections.Counter[str] = collections.Counter()
        self.last_summary_s = 0.0

    @property
    def score(self) -> float:
        """Rank for throttling: success rate first, then speed; higher is better."""
        latency_s = self.ema_latency_s if self.ema_latency_s is not None else 1.0

        return self.ema_success / (1.0 + latency_s)


class ForwarderRegistry:
    """Health of every forwarder, and the admission rules the dispatcher applies."""

    def __init__(
        self,
        names: list[str],
        policy: HealthPolicy,
        index: DueIndex,
        clock: Callable[[], float],
    ) -> None:
        self.policy = policy
        self._index = index
        self._clock = clock
        self.forwarders = [ForwarderHealth(position, name, policy.probe_base_s) for position, name in enumerate(names)]
        self.throttle_allowed: frozenset[int] | None = None  # while throttling: the forwarders still served
        self.throttled = 0  # batches deferred by throttling
        self.deferred = 0  # batches moved because their forwarder was suspended or disabled
        self._rotation = 0  # next forwarder outside the best ones, for max_forwarders_per_infohash

    def __getitem__(self, forwarder_index: int) -> ForwarderHealth:
        return self.forwarders[forwarder_index]

    def admit(self, batch: Batch, now_s: float) -> bool:
        """Return True if the batch may be announced now; otherwise move or park it and return False."""
        health = self.forwarders[batch.forwarder_index]
        health.deferred.discard(batch)

        if self._is_throttled(batch, now_s):
            self._throttle(health, batch, now_s)
            return False

        if health.state is ForwarderState.SUSPENDED and now_s >= health.until_s:
            self._activate(health, "suspension over")

        if health.state is ForwarderState.SUSPENDED:
            self._defer(health, batch, health.until_s, now_s)
            return False

        if health.state is ForwarderState.DISABLED:
            if health.probing or now_s < health.until_s:
                # The next probe is at until_s; while one is in flight, expect its verdict soon.
                next_try_s = health.until_s if now_s < health.until_s else now_s + health.probe_delay_s
                self._defer(health, batch, next_try_s, now_s)
                return False

            health.probing = True  # this batch is the probe
            health.inflight += 1
            return True

        if health.inflight >= self.policy.max_inflight:
            _keep_ready_since(batch)
            health.waiting.append(batch)
            return False

        health.inflight += 1
        return True

    def set_throttle(self, allowed: frozenset[int] | None) -> None:
        self.throttle_allowed = allowed

    def ranked(self) -> list[int]:
        """Return forwarder indexes, best score first; disabled and suspended ones last."""
        def key(health: ForwarderHealth) -> tuple[bool, float]:
            return (health.state is ForwarderState.ACTIVE, health.score)

        return [health.index for health in sorted(self.forwarders, key=key, reverse=True)]

    def pick(self, count: int) -> list[int]:
        """Choose `count` forwarders for a new infohash: the best ones, plus one taken in turn from the rest.

        The rotating pick spreads new infohashes over forwarders that do not rank first, so every
        forwarder keeps getting work and a chance to prove a better score.
        """
        ranked = self.ranked()
        if count <= 0 or count >= len(ranked):
            return sorted(ranked)

        chosen = ranked[: count - 1]
        rest = ranked[count - 1 :]
        chosen.append(rest[self._rotation % len(rest)])
        self._rotation += 1

        return sorted(chosen)

    def release(self, forwarder_index: int) -> None:
        """Free the in-flight slot of a finished announce and let one waiting batch go."""
        health = self.forwarders[forwarder_index]
        health.inflight -= 1
        self._schedule_waiting(health, self._clock())

    def release_waiting(self, now_s: float) -> None:
        """Put one waiting batch of every forwarder with a free in-flight slot back in the index, due now.

        `admit` and `release` do this as they go. This catches the rest: a batch that `release` put
        back in the index, and that was retired or moved later before the dispatcher popped it, so
        that no announce of its forwarder is left to release the next one.
        """
        for health in self.forwarders:
            self._schedule_waiting(health, now_s)

    def record_success(self, forwarder_index: int, latency_s: float, interval_s: int) -> None:
        health = self.forwarders[forwarder_index]
        health.succeeded += 1
        health.consecutive_failures = 0
        health.last_interval_s = interval_s
        health.ema_latency_s = _ema(health.ema_latency_s, latency_s)
        health.ema_success = _ema(health.ema_success, 1.0)

        if health.state is not ForwarderState.ACTIVE:
            self._activate(health, "announce succeeded")

    def record_failure(
        self,
        forwarder_index: int,
        verdict: Verdict,
        kind: FailureKind,
        detail: str,
        now_s: float,
        suspend_for_s: float | None = None,
    ) -> float | None:
        """Update the forwarder after a failure; return when its batches may try again, if it changed."""
        health = self.forwarders[forwarder_index]
        health.failed += 1
        health.last_failure_kind = kind
        health.last_failure_detail = detail
        health.last_failure_s = now_s
        health.ema_success = _ema(health.ema_success, 0.0)
        retry_at_s = self._change_state_after_failure(health, verdict, kind, now_s, suspend_for_s)
        # Counted after the state change, so that a summary logged now shows the new state.
        self._count_for_summary(health, kind, now_s)

        return retry_at_s

    def _change_state_after_failure(
        self,
        health: ForwarderHealth,
        verdict: Verdict,
        kind: FailureKind,
        now_s: float,
        suspend_for_s: float | None,
    ) -> float | None:
        if verdict in (Verdict.DEFER_PAIR, Verdict.STOP_PAIR):
            # The tracker replied, and only this torrent is rejected, so the forwarder stays healthy.
            health.consecutive_failures = 0
            if health.state is ForwarderState.DISABLED and health.probing:
                self._activate(health, "tracker replied")
            return None

        health.consecutive_failures += 1
        if health.state is ForwarderState.DISABLED and not health.probing:
            return health.until_s  # sent before the forwarder was disabled; only a probe moves the next probe

        if verdict is Verdict.SUSPEND:
            self._suspend(health, now_s + (suspend_for_s or self.policy.suspend_s), kind.value)
            return health.until_s

        # A failed probe counts like a new disabling failure, whatever its kind.
        too_many = health.consecutive_failures >= self.policy.disable_after_failures
        if verdict is Verdict.DISABLE or too_many or health.state is ForwarderState.DISABLED:
            reason = f"{health.consecutive_failures} consecutive failures" if too_many else kind.value
            self._disable(health, now_s, reason)
            return health.until_s

        return None

    def flush_summaries(self, now_s: float) -> None:
        """Log the failure counts gathered since each forwarder's last summary."""
        for health in self.forwarders:
            if health.failures_since_summary:
                self._log_summary(health, now_s)

    def _count_for_summary(self, health: ForwarderHealth, kind: FailureKind, now_s: float) -> None:
        health.failures_since_summary[kind.value] += 1
        if now_s - health.last_summary_s >= FAILURE_SUMMARY_PERIOD_S:
            self._log_summary(health, now_s)

    def _log_summary(self, health: ForwarderHealth, now_s: float) -> None:
        log.info(
            "upstream.failures.summary",
            forwarder=health.name,
            failures=dict(health.failures_since_summary),
            state=health.state.value,
            last_error=health.last_failure_detail,
        )
        health.failures_since_summary.clear()
        health.last_summary_s = now_s

    def _is_throttled(self, batch: Batch, now_s: float) -> bool:
        if self.throttle_allowed is None or batch.forwarder_index in self.throttle_allowed:
            return False

        return now_s - batch.round_due_s < THROTTLE_MAX_WAIT_FACTOR * self.policy.throttle_defer_s

    def _throttle(self, health: ForwarderHealth, batch: Batch, now_s: float) -> None:
        """Move a batch about throttle_defer_s later, by a random factor. The batch is never dropped."""
        self.throttled += 1
        _keep_ready_since(batch)
        defer_s = self.policy.throttle_defer_s * random.uniform(*THROTTLE_JITTER_RANGE)
        self._index.schedule(batch, now_s + defer_s)
        # If the batch came from the waiting queue, it leaves its slot unused, so the next waiting batch gets it.
        self._schedule_waiting(health, now_s)

    def _defer(self, health: ForwarderHealth, batch: Batch, until_s: float, now_s: float) -> None:
        self.deferred += 1
        health.deferred.add(batch)
        # The forwarder's own state sets the new due time, so flush lag counts from there.
        batch.ready_since_s = None
        self._index.schedule(batch, max(until_s, batch.due_s))
        self._schedule_waiting(health, now_s)

    def _schedule_waiting(self, health: ForwarderHealth, now_s: float) -> None:
        """Put the first live waiting batch back in the index, due now, if the forwarder has a free slot."""
        if health.inflight >= self.policy.max_inflight:
            return

        while health.waiting:
            batch = health.waiting.popleft()
            if not batch.retired:
                self._index.schedule(batch, now_s)
                return

    def _suspend(self, health: ForwarderHealth, until_s: float, reason: str) -> None:
        health.state = ForwarderState.SUSPENDED
        health.until_s = max(until_s, health.until_s)
        health.reason = reason
        log.warning(
            "forwarder.suspended",
            forwarder=health.name,
            reason=reason,
            until=_wall_time(health.until_s, self._clock()),
        )

    def _disable(self, health: ForwarderHealth, now_s: float, reason: str) -> None:
        if health.state is ForwarderState.DISABLED:
            # A failed probe: wait twice as long before the next one, up to probe_max_s.
            health.probe_delay_s = min(health.probe_delay_s * 2, self.policy.probe_max_s)
        else:
            health.probe_delay_s = self.policy.probe_base_s

        health.state = ForwarderState.DISABLED
        health.probing = False
        health.until_s = now_s + health.probe_delay_s
        health.reason = reason
        log.warning(
            "forwarder.disabled",
            forwarder=health.name,
            reason=reason,
            detail=health.last_failure_detail,
            next_probe=_wall_time(health.until_s, now_s),
        )

    def _activate(self, health: ForwarderHealth, reason: str) -> None:
        previous = health.state
        health.state = ForwarderState.ACTIVE
        health.probing = False
        health.until_s = 0.0
        health.reason = ""
        health.probe_delay_s = self.policy.probe_base_s
        log.info("forwarder.enabled", forwarder=health.name, previous=previous.value, reason=reason)

        # Batches moved to the next probe time can go now that the forwarder works again.
        now_s = self._clock()
        for batch in health.deferred:
            if batch.in_index and not batch.retired:
                self._index.schedule(batch, now_s)
        health.deferred.clear()


def _keep_ready_since(batch: Batch) -> None:
    """Keep the due time of the batch's round before the registry moves the batch (see Batch.ready_since_s)."""
    batch.ready_since_s = batch.round_due_s


def _ema(average: float | None, sample: float) -> float:
    if average is None:
        return sample

    return average + EMA_WEIGHT * (sample - average)


def _wall_time(until_s: float, now_s: float) -> str:
    """Convert a time on the monotonic clock to an ISO 8601 UTC wall-clock time for logs."""
    wall_s = time.time() + (until_s - now_s)

    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(wall_s))
