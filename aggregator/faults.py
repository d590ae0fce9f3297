"""Classification of upstream failures: what each kind does to the forwarder and to the batch.

docs/upstream.md shows the same table for operators; tests/test_faults.py checks both agree.
"""

import enum

from aggregator.upstream_reply import FailureKind, UpstreamFailure

# A plain per-torrent `failure reason` ("torrent not registered") stops that (infohash, forwarder)
# pair for this long; the tracker itself works, so the forwarder stays active.
PAIR_FAILURE_DEFER_S = 6 * 3600.0


class Verdict(enum.Enum):
    """Consequence of a failure, for the forwarder first, then for the batch."""

    RETRY = "retry"  # forwarder: failure counted; batch: exponential back-off with jitter
    SUSPEND = "suspend"  # forwarder: suspended until Retry-After or suspend_s; batch: deferred to then
    DISABLE = "disable"  # forwarder: disabled and probed later; batch: deferred to the next probe
    DEFER_PAIR = "defer_pair"  # forwarder: healthy; batch: deferred (BEP 31 `retry in`, or a long period)
    STOP_PAIR = "stop_pair"  # forwarder: healthy; batch: retired for good (`retry in: never`)


VERDICTS: dict[FailureKind, Verdict] = {
    FailureKind.TIMEOUT: Verdict.RETRY,
    FailureKind.CONNECTION: Verdict.RETRY,
    FailureKind.SERVER_ERROR: Verdict.RETRY,
    FailureKind.BODY_TOO_LARGE: Verdict.RETRY,
    FailureKind.NOT_A_TRACKER: Verdict.RETRY,
    FailureKind.BAD_REPLY: Verdict.RETRY,
    FailureKind.INTERNAL: Verdict.RETRY,
    FailureKind.RATE_LIMITED: Verdict.SUSPEND,
    FailureKind.REFUSED: Verdict.DISABLE,
    FailureKind.DNS: Verdict.DISABLE,
    FailureKind.CLIENT_ERROR: Verdict.DISABLE,
    FailureKind.TRACKER_FAILURE: Verdict.DEFER_PAIR,
}


def classify(failure: UpstreamFailure) -> Verdict:
    """Return the verdict of one failure; BEP 31 `retry in: never` stops the pair."""
    if failure.kind is FailureKind.TRACKER_FAILURE and failure.retry_in_min == -1:
        return Verdict.STOP_PAIR

    return VERDICTS[failure.kind]


def pair_defer_s(failure: UpstreamFailure) -> float:
    """Return how long a DEFER_PAIR verdict defers the batch: `retry in` minutes, or the long default."""
    if failure.retry_in_min is not None and failure.retry_in_min > 0:
        return failure.retry_in_min * 60.0

    return PAIR_FAILURE_DEFER_S
