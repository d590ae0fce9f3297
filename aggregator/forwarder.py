"""Per-forwarder outcome counters of upstream announces."""

from aggregator.upstream_reply import FailureKind


class ForwarderStats:
    """Outcome counters of one forwarder, updated by the workers."""

    __slots__ = ("name", "succeeded", "failed", "consecutive_failures", "last_failure_kind", "last_failure_s")

    def __init__(self, name: str) -> None:
        self.name = name
        self.succeeded = 0
        self.failed = 0
        self.consecutive_failures = 0
        self.last_failure_kind: FailureKind | None = None
        self.last_failure_s: float | None = None

    def record_success(self) -> None:
        self.succeeded += 1
        self.consecutive_failures = 0

    def record_failure(self, kind: FailureKind, now_s: float) -> None:
        self.failed += 1
        self.consecutive_failures += 1
        self.last_failure_kind = kind
        self.last_failure_s = now_s
