"""The plain per-announce counts export the same samples as prometheus_client's own types."""

import prometheus_client
from hypothesis import given
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry, Histogram

from aggregator.metrics import REPLY_BUCKETS_S, Metrics

latencies = st.one_of(st.sampled_from(REPLY_BUCKETS_S), st.floats(min_value=0.0, max_value=5.0))


def samples(registry: CollectorRegistry, name: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in registry.collect()
        if family.name == name
        for sample in family.samples
    }


@given(st.lists(st.tuples(st.sampled_from(["http", "udp"]), latencies), max_size=40))
def test_reply_latency_matches_prometheus_histogram(observations: list[tuple[str, float]]) -> None:
    metrics = Metrics()
    reference_registry = CollectorRegistry()
    reference = Histogram(
        "aggregator_reply_latency_seconds", "reference", ["transport"], buckets=REPLY_BUCKETS_S, registry=reference_registry
    )
    for transport, latency_s in observations:
        metrics.observe_announce(transport, "none", "ok", latency_s)
        reference.labels(transport).observe(latency_s)

    ours = samples(metrics.registry, "aggregator_reply_latency_seconds")
    theirs = samples(reference_registry, "aggregator_reply_latency_seconds")
    assert ours.keys() == theirs.keys()
    for key, value in theirs.items():
        assert abs(ours[key] - value) < 1e-9, key


def test_announce_counts_are_exported_per_label_set() -> None:
    metrics = Metrics()
    for _ in range(3):
        metrics.observe_announce("http", "started", "ok", None)
    metrics.observe_announce("udp", "", "invalid", 0.001)

    text = prometheus_client.generate_latest(metrics.registry).decode()

    assert 'aggregator_announces_total{event="started",outcome="ok",transport="http"} 3.0' in text
    assert 'aggregator_announces_total{event="none",outcome="invalid",transport="udp"} 1.0' in text
