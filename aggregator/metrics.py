"""Prometheus metrics: event counters and histograms updated in place, state read at scrape time.

Everything the service already counts (swarms, batches, coalesced announces, forwarder states)
is read by a collector when /metrics is scraped, so it costs nothing per announce. Labels are
bounded: transports, events, outcomes and forwarder names, never infohashes or addresses.
"""

from collections.abc import Callable, Iterable
from dataclasses import dataclass

import prometheus_client
from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

# The *_created series double the number of series and no dashboard here reads them.
prometheus_client.disable_created_metrics()  # type: ignore[no-untyped-call]

# Client replies come from memory, so most fall in the first buckets.
REPLY_BUCKETS_S = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
UPSTREAM_BUCKETS_S = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
FLUSH_LAG_BUCKETS_S = (0.01, 0.1, 0.5, 1.0, 5.0, 15.0, 60.0, 300.0, 900.0, 3600.0)


class Metrics:
    """The counters and histograms of one service, in their own registry."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.announces = Counter(
            "aggregator_announces",
            "Client announces by transport, BitTorrent event and outcome",
            ["transport", "event", "outcome"],
            registry=self.registry,
        )
        self.scrapes = Counter(
            "aggregator_scrapes", "Client scrapes by transport and outcome", ["transport", "outcome"], registry=self.registry
        )
        self.reply_latency = Histogram(
            "aggregator_reply_latency_seconds",
            "Time to answer a client announce, from its handler to the encoded reply",
            ["transport"],
            buckets=REPLY_BUCKETS_S,
            registry=self.registry,
        )
        self.flush_lag = Histogram(
            "aggregator_flush_lag_seconds",
            "How long a batch waited past its due time before a worker took it",
            buckets=FLUSH_LAG_BUCKETS_S,
            registry=self.registry,
        )
        self.upstream_requests = Counter(
            "aggregator_upstream_requests",
            "Upstream announces by forwarder and outcome (ok, or the failure kind)",
            ["forwarder", "outcome"],
            registry=self.registry,
        )
        self.upstream_latency = Histogram(
            "aggregator_upstream_latency_seconds",
            "Duration of upstream announces by forwarder, failures included",
            ["forwarder"],
            buckets=UPSTREAM_BUCKETS_S,
            registry=self.registry,
        )
        self.admission = Counter(
            "aggregator_admission_decisions",
            "Admission decisions for new infohashes and batches",
            ["decision"],
            registry=self.registry,
        )

    def observe_announce(self, transport: str, event: str, outcome: str, latency_s: float | None) -> None:
        self.announces.labels(transport, event or "none", outcome).inc()
        if latency_s is not None:
            self.reply_latency.labels(transport).observe(latency_s)

    def add_state_collector(self, read_state: Callable[[], "ServiceState"]) -> None:
        self.registry.register(_StateCollector(read_state))


@dataclass(frozen=True, slots=True)
class ServiceState:
    """Counts read from the running service at scrape time."""

    swarms: int
    peers: int
    seeders: int
    leechers: int
    batches: int
    ready_backlog: int
    pressure: float
    workers: int
    busy_workers: int
    coalesced_announces: int
    throttled_batches: int
    deferred_batches: int
    refused_pairs: int
    upstream_cached_peers: int
    forwarder_states: list[tuple[str, str]]  # (forwarder name, state value)
    state_values: tuple[str, ...]  # every state a forwarder can be in, each exported as 0 or 1


class _StateCollector(Collector):
    def __init__(self, read_state: Callable[[], ServiceState]) -> None:
        self._read_state = read_state

    def collect(self) -> Iterable[Metric]:
        state = self._read_state()
        gauges = {
            "aggregator_swarms": ("Infohashes with at least one local peer", state.swarms),
            "aggregator_peers": ("Local peers over all swarms", state.peers),
            "aggregator_seeders": ("Local seeders over all swarms", state.seeders),
            "aggregator_leechers": ("Local leechers over all swarms", state.leechers),
            "aggregator_batches": ("Batches in the due-time index or in flight", state.batches),
            "aggregator_ready_backlog": ("Batches past their due time, not yet taken by a worker", state.ready_backlog),
            "aggregator_pressure": ("Ready backlog divided by backlog_capacity", state.pressure),
            "aggregator_workers": ("Upstream worker tasks", state.workers),
            "aggregator_busy_workers": ("Upstream workers busy with an announce", state.busy_workers),
            "aggregator_upstream_cached_peers": (
                "Upstream peers held in the cache, counted once per forwarder",
                state.upstream_cached_peers,
            ),
        }
        for name, (help_text, value) in gauges.items():
            yield GaugeMetricFamily(name, help_text, value=value)

        counters = {
            "aggregator_coalesced_announces": ("Client announces that created no upstream work", state.coalesced_announces),
            "aggregator_throttled_batches": (
                "Batches deferred by throttle_defer_s because their forwarder was not among the best while throttling",
                state.throttled_batches,
            ),
            "aggregator_deferred_batches": (
                "Batches moved to the end of their forwarder's suspension or to its next probe",
                state.deferred_batches,
            ),
            "aggregator_refused_pairs": (
                "(infohash, forwarder) pairs not opened because max_batches was reached",
                state.refused_pairs,
            ),
        }
        for name, (help_text, count) in counters.items():
            yield CounterMetricFamily(name, help_text, value=count)

        forwarder_state = GaugeMetricFamily(
            "aggregator_forwarder_state", "1 for the current state of each forwarder", labels=["forwarder", "state"]
        )
        for name, current in state.forwarder_states:
            for state_value in state.state_values:
                forwarder_state.add_metric([name, state_value], 1.0 if state_value == current else 0.0)
        yield forwarder_state
