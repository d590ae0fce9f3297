"""Overload control: pressure, worker scaling, forwarder throttling and admission of new infohashes.

Pressure is the ready backlog (batches past their due time that no worker has taken yet)
divided by `backlog_capacity`. `OverloadControl.tick` runs once a second: it measures pressure
and flush lag, resizes the worker pool and turns throttling on or off. The announce core calls
`admit_new_infohash` on the first announce of every infohash. docs/overload.md describes each
policy and its setting.
"""

import enum
import math
from collections.abc import Callable
from dataclasses import dataclass

import structlog

log = structlog.get_logger("aggregator.overload")


class Admission(enum.Enum):
    """Decision on the first announce of an infohash, counted in aggregator_admission_decisions."""

    ADMITTED = "admitted"
    RATE_LIMITED = "rate_limited"  # pressure above rate_limit_threshold and the token bucket empty
    REFUSED_FULL = "refused_full"  # max_batches reached
    DENIED = "denied"  # the access lists reject the infohash


class TokenBucket:
    """Admits `burst` requests at once and `rate_per_s` per second after that."""

    def __init__(self, rate_per_s: float, burst: int, now_s: float) -> None:
        self._rate_per_s = rate_per_s
        self._burst = burst
        self._tokens = float(burst)
        self._updated_s = now_s

    def take(self, now_s: float) -> bool:
        elapsed_s = max(now_s - self._updated_s, 0.0)
        self._tokens = min(self._burst, self._tokens + elapsed_s * self._rate_per_s)
        self._updated_s = now_s
        if self._tokens < 1.0:
            return False

        self._tokens -= 1.0
        return True


@dataclass(frozen=True, slots=True)
class ScalingPolicy:
    min_workers: int
    max_workers: int
    up_threshold: float
    down_threshold: float
    up_lag_s: float
    cooldown_s: float


class WorkerScaler:
    """Chooses the worker count from pressure and flush lag, one step per cool-down at most."""

    def __init__(self, policy: ScalingPolicy, now_s: float) -> None:
        self._policy = policy
        self._last_change_s = now_s
        self._calm_since_s: float | None = None  # since when pressure has stayed under the down threshold

    def decide(self, current: int, pressure: float, lag_s: float, now_s: float) -> int:
        """Return the new worker count; `current` when nothing should change."""
        policy = self._policy
        current = min(max(current, policy.min_workers), policy.max_workers)
        if policy.min_workers == policy.max_workers:
            return current

        calm = pressure < policy.down_threshold and lag_s <= policy.up_lag_s
        if not calm:
            self._calm_since_s = None
        elif self._calm_since_s is None:
            self._calm_since_s = now_s

        if now_s - self._last_change_s < policy.cooldown_s:
            return current

        if pressure > policy.up_threshold or lag_s > policy.up_lag_s:
            target = min(policy.max_workers, current * 2)
        elif self._calm_since_s is not None and now_s - self._calm_since_s >= policy.cooldown_s:
            # Down slowly: a quarter at a time, so a short lull does not undo a needed scale-up.
            target = max(policy.min_workers, current - max(1, current // 4))
        else:
            return current

        if target != current:
            self._last_change_s = now_s
        return target


@dataclass(frozen=True, slots=True)
class OverloadPolicy:
    backlog_capacity: int
    throttle_threshold: float  # 0 turns throttling off
    throttle_top_n: int
    rate_limit_threshold: float  # 0 turns admission control off
    rate_limit_per_s: float
    rate_limit_burst: int


class OverloadControl:
    """Measures pressure and applies the scaling, throttling and admission policies."""

    def __init__(
        self,
        policy: OverloadPolicy,
        scaler: WorkerScaler,
        count_ready: Callable[[float], int],
        oldest_due_s: Callable[[float], float | None],
        set_workers: Callable[[int], None],
        get_workers: Callable[[], int],
        rank_forwarders: Callable[[], list[int]],
        set_throttle: Callable[[frozenset[int] | None], None],
        now_s: float,
    ) -> None:
        self._policy = policy
        self._scaler = scaler
        self._count_ready = count_ready
        self._oldest_due_s = oldest_due_s
        self._set_workers = set_workers
        self._get_workers = get_workers
        self._rank_forwarders = rank_forwarders
        self._set_throttle = set_throttle
        self._bucket = TokenBucket(policy.rate_limit_per_s, policy.rate_limit_burst, now_s)
        self.pressure = 0.0
        self.lag_s = 0.0
        self.throttling = False
        self.decisions = {decision: 0 for decision in Admission}

    def tick(self, now_s: float) -> None:
        """Measure pressure and lag, then resize the worker pool and switch throttling."""
        self.pressure = self._count_ready(now_s) / self._policy.backlog_capacity
        oldest_s = self._oldest_due_s(now_s)
        self.lag_s = 0.0 if oldest_s is None else now_s - oldest_s

        current = self._get_workers()
        target = self._scaler.decide(current, self.pressure, self.lag_s, now_s)
        if target != current:
            log.info("workers.scaled", workers=target, previous=current, pressure=round(self.pressure, 3))
            self._set_workers(target)

        self._update_throttle()

    def _update_throttle(self) -> None:
        threshold = self._policy.throttle_threshold
        throttle = threshold > 0 and self.pressure > threshold
        if throttle:
            best = frozenset(self._rank_forwarders()[: self._policy.throttle_top_n])
            self._set_throttle(best)
        elif self.throttling:
            self._set_throttle(None)

        if throttle != self.throttling:
            log.warning("throttle.changed", throttling=throttle, pressure=round(self.pressure, 3))
        self.throttling = throttle

    def admit_new_infohash(self, now_s: float) -> Admission:
        """Decide whether a first-seen infohash gets upstream batches now."""
        threshold = self._policy.rate_limit_threshold
        if threshold <= 0 or self.pressure <= threshold or self._bucket.take(now_s):
            return Admission.ADMITTED

        return Admission.RATE_LIMITED


def retry_in_minutes(retry_interval_s: int) -> int:
    """Return BEP 31 `retry in`, which counts whole minutes, for an interval in seconds."""
    return max(1, math.ceil(retry_interval_s / 60))
