"""The upstream peer cache: merged compact view per family and sampling without excluded endpoints."""

import random

from hypothesis import given
from hypothesis import strategies as st

from aggregator.endpoints import IPV4_ENDPOINT_BYTES, IPV6_ENDPOINT_BYTES, make_endpoint, split_compact
from aggregator.peer_cache import PeerCache

INFO_HASH = b"\x33" * 20


def v4(index: int) -> bytes:
    return make_endpoint(bytes([10, 1, index // 256, index % 256]), 6881)


def v6(index: int) -> bytes:
    return make_endpoint(bytes(14) + index.to_bytes(2, "big"), 6881)


def cache_with(endpoints_per_forwarder: list[list[bytes]]) -> PeerCache:
    cache = PeerCache(ttl_s=600.0)
    for forwarder_index, endpoints in enumerate(endpoints_per_forwarder):
        cache.store(INFO_HASH, forwarder_index, endpoints, 1, 2, 3, now_s=0.0)

    return cache


def picked(sample: tuple[bytes, bytes]) -> list[bytes]:
    return split_compact(sample[0], IPV4_ENDPOINT_BYTES) + split_compact(sample[1], IPV6_ENDPOINT_BYTES)


def test_merged_view_is_distinct_over_forwarders() -> None:
    cache = cache_with([[v4(1), v4(2), v6(1)], [v4(2), v4(3)]])
    cached = cache.get(INFO_HASH)
    assert cached is not None

    assert sorted(cached.endpoints(1.0)) == sorted([v4(1), v4(2), v4(3), v6(1)])


@given(
    upstream=st.integers(min_value=0, max_value=120),
    local=st.integers(min_value=0, max_value=120),
    count=st.integers(min_value=0, max_value=80),
    seed=st.integers(min_value=0, max_value=2**32),
)
def test_sample_skips_excluded_and_fills_count(upstream: int, local: int, count: int, seed: int) -> None:
    # Local endpoints overlap the first upstream ones, as when clients announce to both trackers.
    random.seed(seed)
    cache = cache_with([[v4(index) for index in range(upstream)]])
    cached = cache.get(INFO_HASH)
    assert cached is not None
    excluded = {v4(index): index for index in range(local)}

    result = picked(cached.sample(count, 1.0, excluded))

    available = max(upstream - local, 0)
    assert len(result) == min(count, available)
    assert len(set(result)) == len(result)
    assert not set(result) & set(excluded)
    assert set(result) <= {v4(index) for index in range(upstream)}


def test_sample_covers_every_upstream_peer() -> None:
    cache = cache_with([[v4(index) for index in range(200)]])
    cached = cache.get(INFO_HASH)
    assert cached is not None
    seen: set[bytes] = set()
    for many_excluded in (False, True):
        excluded = {v4(index): index for index in range(150 if many_excluded else 1)}
        for _ in range(300):
            seen.update(picked(cached.sample(10, 1.0, excluded)))

    assert seen == {v4(index) for index in range(1, 200)}


def test_sample_splits_families_and_respects_width() -> None:
    cache = cache_with([[v4(index) for index in range(40)] + [v6(index) for index in range(10)]])
    cached = cache.get(INFO_HASH)
    assert cached is not None

    peers4, peers6 = cached.sample(25, 1.0, ())
    assert (len(peers4) // 6, len(peers6) // 18) == (20, 5)

    peers4, peers6 = cached.sample(25, 1.0, (), width=IPV6_ENDPOINT_BYTES)
    assert peers4 == b""
    assert len(peers6) // 18 == 10
