"""The access log: one JSON line per sampled client request, off by default."""

import random

import structlog

log = structlog.get_logger("aggregator.access")


class AccessLog:
    """Logs client requests when `access_log` is on, a `sample` fraction of them."""

    def __init__(self, enabled: bool, sample: float) -> None:
        self.enabled = enabled and sample > 0
        self._sample = sample

    def record(
        self,
        transport: str,
        kind: str,
        client: str,
        outcome: str,
        latency_s: float,
        bt_event: str | None = None,
        info_hash: bytes | None = None,
    ) -> None:
        """Log one request: announce or scrape, the client address, the outcome and the reply time."""
        if not self.enabled or (self._sample < 1.0 and random.random() >= self._sample):
            return

        log.info(
            "access",
            transport=transport,
            request=kind,
            client=client,
            outcome=outcome,
            bt_event=bt_event,
            info_hash=info_hash.hex() if info_hash is not None else None,
            latency_ms=round(latency_s * 1000, 3),
        )
