"""The upstream work of one batch: announce, store the peers, reschedule."""

from collections.abc import Awaitable, Callable, Sequence

import structlog

from aggregator.batch import Batch, UpstreamEvent
from aggregator.batch_table import BatchTable
from aggregator.faults import Verdict, classify, pair_defer_s
from aggregator.forwarder import ForwarderRegistry
from aggregator.metrics import Metrics
from aggregator.peer_cache import PeerCache
from aggregator.upstream_http import UpstreamAnnounce
from aggregator.upstream_reply import FailureKind, UpstreamFailure, UpstreamReply

log = structlog.get_logger("aggregator.upstream")

# Sends one announce to one forwarder: HttpUpstream.announce or UdpUpstream.announce bound to a target.
SendAnnounce = Callable[[UpstreamAnnounce], Awaitable[UpstreamReply]]


class UpstreamWorker:
    """Runs the announce of one batch against its forwarder; a worker task calls `run_batch`."""

    def __init__(
        self,
        table: BatchTable,
        cache: PeerCache,
        senders: Sequence[SendAnnounce],
        registry: ForwarderRegistry,
        numwant: int,
        upstream_port: int | None,
        clock: Callable[[], float],
        metrics: Metrics | None = None,
    ) -> None:
        self._table = table
        self._cache = cache
        self._senders = senders
        self.registry = registry
        self._numwant = numwant
        self._upstream_port = upstream_port
        self._clock = clock
        self._metrics = metrics
        self.succeeded = 0  # upstream announces, over all forwarders
        self.failed = 0

    async def run_batch(self, batch: Batch) -> None:
        """Announce one admitted batch; the registry's in-flight slot is released in every case."""
        try:
            if not batch.retired:
                await self._announce(batch)
        finally:
            self.registry.release(batch.forwarder_index)

    async def _announce(self, batch: Batch) -> None:
        torrent = batch.torrent
        sent_event = self._table.start_announce(batch)
        announce = UpstreamAnnounce(
            info_hash=torrent.info_hash,
            port=self._upstream_port or torrent.upstream_port,
            left=torrent.left,
            event=sent_event,
            numwant=0 if sent_event is UpstreamEvent.STOPPED else self._numwant,
            tracker_id=batch.tracker_id,
        )

        started_s = self._clock()
        try:
            reply = await self._senders[batch.forwarder_index](announce)
        except UpstreamFailure as failure:
            self._observe(batch.forwarder_index, failure.kind.value, self._clock() - started_s)
            self._on_failure(batch, sent_event, failure)
            return
        except Exception:
            # A bug, not an upstream fault: log it and keep the batch scheduled rather than lose it.
            self._observe(batch.forwarder_index, FailureKind.INTERNAL.value, self._clock() - started_s)
            log.exception(
                "upstream.announce.crashed",
                forwarder=self.registry[batch.forwarder_index].name,
                info_hash=torrent.info_hash.hex(),
            )
            self._on_failure(batch, sent_event, UpstreamFailure(FailureKind.INTERNAL, "unexpected exception"))
            return

        now_s = self._clock()
        self._observe(batch.forwarder_index, "ok", now_s - started_s)
        self.succeeded += 1
        self.registry.record_success(batch.forwarder_index, now_s - started_s, reply.interval_s)
        if reply.tracker_id is not None:
            batch.tracker_id = reply.tracker_id
        if reply.warning is not None:
            log.debug(
                "upstream.announce.warning",
                forwarder=self.registry[batch.forwarder_index].name,
                info_hash=torrent.info_hash.hex(),
                warning=reply.warning,
            )

        # Store before after_success: it may end the first-round wait of client announces.
        if sent_event is not UpstreamEvent.STOPPED:
            self._cache.store(
                torrent.info_hash,
                batch.forwarder_index,
                reply.endpoints,
                reply.complete,
                reply.incomplete,
                reply.downloaded,
                now_s,
            )

        self._table.after_success(
            batch, sent_event, reply.interval_s, reply.min_interval_s, len(reply.endpoints), now_s
        )

    def _observe(self, forwarder_index: int, outcome: str, latency_s: float) -> None:
        if self._metrics is None:
            return

        name = self.registry[forwarder_index].name
        self._metrics.upstream_requests.labels(name, outcome).inc()
        self._metrics.upstream_latency.labels(name).observe(latency_s)

    def _on_failure(self, batch: Batch, sent_event: UpstreamEvent, failure: UpstreamFailure) -> None:
        """Apply the verdict of a failure to the forwarder and to the batch (see aggregator/faults.py)."""
        now_s = self._clock()
        self.failed += 1
        verdict = classify(failure)
        health = self.registry[batch.forwarder_index]
        log.debug(
            "upstream.announce.failed",
            forwarder=health.name,
            info_hash=batch.info_hash.hex(),
            bt_event=sent_event.value or "none",
            kind=failure.kind.value,
            verdict=verdict.value,
            error=failure.detail,
            failures=batch.failures + 1,
        )

        forwarder_retry_s = self.registry.record_failure(
            batch.forwarder_index, verdict, failure.kind, failure.detail, now_s, failure.retry_after_s
        )
        if verdict is Verdict.STOP_PAIR:
            log.info("upstream.pair.stopped", forwarder=health.name, info_hash=batch.info_hash.hex())
            self._table.stop_pair(batch)
            return

        retry_at_s = forwarder_retry_s
        if verdict is Verdict.DEFER_PAIR:
            retry_at_s = now_s + pair_defer_s(failure)

        self._table.after_failure(batch, sent_event, now_s, retry_at_s)
        if forwarder_retry_s is not None and batch.in_index:
            health.deferred.add(batch)  # pulled forward if the forwarder recovers earlier
