"""The upstream work of one batch: announce, store the peers, reschedule."""

from collections.abc import Callable, Sequence

import structlog

from aggregator.batch import Batch, UpstreamEvent
from aggregator.batch_table import BatchTable
from aggregator.forwarder import ForwarderStats
from aggregator.peer_cache import PeerCache
from aggregator.upstream_http import HttpTarget, HttpUpstream, UpstreamAnnounce
from aggregator.upstream_reply import FailureKind, UpstreamFailure

log = structlog.get_logger("aggregator.upstream")


class UpstreamWorker:
    """Runs the announce of one batch against its forwarder; a worker task calls `run_batch`."""

    def __init__(
        self,
        table: BatchTable,
        cache: PeerCache,
        targets: Sequence[HttpTarget],
        stats: Sequence[ForwarderStats],
        http: HttpUpstream,
        numwant: int,
        upstream_port: int | None,
        clock: Callable[[], float],
    ) -> None:
        self._table = table
        self._cache = cache
        self._targets = targets
        self.stats = stats
        self._http = http
        self._numwant = numwant
        self._upstream_port = upstream_port
        self._clock = clock
        self.succeeded = 0  # upstream announces, over all forwarders
        self.failed = 0

    async def run_batch(self, batch: Batch) -> None:
        if batch.retired:
            return

        torrent = batch.torrent
        stats = self.stats[batch.forwarder_index]
        sent_event = self._table.start_announce(batch)
        announce = UpstreamAnnounce(
            info_hash=torrent.info_hash,
            port=self._upstream_port or torrent.upstream_port,
            left=torrent.left,
            event=sent_event,
            numwant=0 if sent_event is UpstreamEvent.STOPPED else self._numwant,
            tracker_id=batch.tracker_id,
        )

        try:
            reply = await self._http.announce(self._targets[batch.forwarder_index], announce)
        except UpstreamFailure as failure:
            self.failed += 1
            stats.record_failure(failure.kind, self._clock())
            log.info(
                "upstream.announce.failed",
                forwarder=stats.name,
                info_hash=torrent.info_hash.hex(),
                bt_event=sent_event.value or "none",
                kind=failure.kind.value,
                error=failure.detail,
                failures=batch.failures + 1,
            )
            self._table.after_failure(batch, sent_event, self._clock())
            return
        except Exception:
            # A bug, not an upstream fault: log it and keep the batch scheduled rather than lose it.
            self.failed += 1
            stats.record_failure(FailureKind.INTERNAL, self._clock())
            log.exception(
                "upstream.announce.crashed",
                forwarder=stats.name,
                info_hash=torrent.info_hash.hex(),
            )
            self._table.after_failure(batch, sent_event, self._clock())
            return

        self.succeeded += 1
        stats.record_success()
        now_s = self._clock()
        if reply.tracker_id is not None:
            batch.tracker_id = reply.tracker_id
        if reply.warning is not None:
            log.debug("upstream.announce.warning", forwarder=stats.name, warning=reply.warning)

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
