"""Prometheus metrics: event counters and histograms updated in place, state read at scrape time.

Everything the service already counts (swarms, batches, coalesced announces, forwarder states)
is read by a collector when /metrics is scraped, so it costs nothing per announce. Labels are
bounded: transports, events, outcomes and forwarder names, never infohashes or addresses.
"""

import bisect
import itertools
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import prometheus_client
from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

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
        # Per-announce counts are plain ints read at scrape time: a prometheus_client child takes
        # a lock and a label lookup per update, which costs more than the rest of a metrics step.
        self.announce_counts: dict[tuple[str, str, str], int] = {}
        self.reply_latency = LatencyBuckets(REPLY_BUCKETS_S)
        self.registry.register(_ClientCollector(self))
        self.scrapes = Counter(
            "aggregator_scrapes", "Client scrapes by transport and outcome", ["transport", "outcome"], registry=self.registry
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
        key = (transport, event or "none", outcome)
        counts = self.announce_counts
        counts[key] = counts.get(key, 0) + 1
        if latency_s is not None:
            self.reply_latency.observe(transport, latency_s)

    def add_state_collector(self, read_state: Callable[[], "ServiceState"]) -> None:
        self.registry.register(_StateCollector(read_state))


class LatencyBuckets:
    """A histogram per label value: a count per bucket and a sum, exported at scrape time."""

    def __init__(self, bounds_s: tuple[float, ...]) -> None:
        self.bounds_s = bounds_s
        self.counts: dict[str, list[int]] = {}  # label value -> count per bucket, +Inf last
        self.sums_s: dict[str, float] = {}

    def observe(self, label: str, value_s: float) -> None:
        counts = self.counts.get(label)
        if counts is None:
            counts = self.counts[label] = [0] * (len(self.bounds_s) + 1)
            self.sums_s[label] = 0.0

        # A value equal to a bound belongs to that bound's bucket (`le`), hence bisect_left.
        counts[bisect.bisect_left(self.bounds_s, value_s)] += 1
        self.sums_s[label] += value_s

    def family(self, name: str, help_text: str, label_name: str) -> HistogramMetricFamily:
        family = HistogramMetricFamily(name, help_text, labels=[label_name])
        bound_texts: list[str] = [floatToGoString(bound) for bound in self.bounds_s]  # type: ignore[no-untyped-call]
        for label, counts in self.counts.items():
            cumulative = list(itertools.accumulate(counts))
            buckets = list(zip(bound_texts, cumulative))
            buckets.append(("+Inf", cumulative[-1]))
            family.add_metric([label], buckets, self.sums_s[label])

        return family


class _ClientCollector(Collector):
    """Exports the per-announce counts of a Metrics object."""

    def __init__(self, metrics: Metrics) -> None:
        self._metrics = metrics

    def collect(self) -> Iterable[Metric]:
        announces = CounterMetricFamily(
            "aggregator_announces",
            "Client announces by transport, BitTorrent event and outcome",
            labels=["transport", "event", "outcome"],
        )
        for labels, count in list(self._metrics.announce_counts.items()):
            announces.add_metric(list(labels), count)
        yield announces

        yield self._metrics.reply_latency.family(
            "aggregator_reply_latency_seconds",
            "Time to answer a client announce, from its handler to the encoded reply",
            "transport",
        )


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
