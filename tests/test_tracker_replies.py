"""Properties of every announce reply over random mixes of local and upstream peers of both families."""

import random

from hypothesis import given, settings
from hypothesis import strategies as st

from aggregator.announce import AnnounceRequest, Event
from aggregator.batch_table import BatchTable
from aggregator.due_index import DueIndex
from aggregator.endpoints import IPV4_ENDPOINT_BYTES, IPV6_ENDPOINT_BYTES, make_endpoint, split_compact
from aggregator.peer_cache import PeerCache
from aggregator.swarm import SwarmRegistry
from aggregator.tracker import AnnounceResult, ReplyPolicy, Tracker
from tests.fake_clock import FakeClock

INFO_HASH = b"\x44" * 20


def address(index: int, ipv6: bool) -> bytes:
    if ipv6:
        return bytes(14) + bytes([0x20, index])
    return bytes([10, 2, 0, index])


def announce(port: int, numwant: int, left: int = 5) -> AnnounceRequest:
    return AnnounceRequest(
        INFO_HASH, b"-XX0001-" + port.to_bytes(12, "big"), port, 0, 0, left, Event.NONE, numwant, True, False, None
    )


def reply_endpoints(result: AnnounceResult) -> list[bytes]:
    return split_compact(result.peers4, IPV4_ENDPOINT_BYTES) + split_compact(result.peers6, IPV6_ENDPOINT_BYTES)


@settings(max_examples=300, deadline=None)
@given(
    local=st.lists(st.tuples(st.integers(1, 90), st.booleans()), min_size=1, max_size=150),
    upstream=st.lists(st.tuples(st.integers(1, 60), st.booleans()), max_size=80),
    numwant=st.integers(0, 60),
    same_family_only=st.booleans(),
    seed=st.integers(0, 2**32),
)
def test_reply_fills_numwant_without_requester(
    local: list[tuple[int, bool]],
    upstream: list[tuple[int, bool]],
    numwant: int,
    same_family_only: bool,
    seed: int,
) -> None:
    random.seed(seed)
    clock = FakeClock(100.0)
    swarms = SwarmRegistry(1800.0, lambda info_hash: None)
    table = BatchTable(forwarder_count=0, index=DueIndex(), first_wait_s=0.0, retry_base_s=30.0, retry_max_s=1800.0)
    cache = PeerCache(600.0)
    tracker = Tracker(swarms, table, cache, ReplyPolicy(1800, 900, 60), 0, clock)

    # Local peers on ports 7000+, some of them at the same address and port as an upstream peer.
    for index, ipv6 in local:
        tracker.begin_announce(announce(7000 + index, 0), address(index, ipv6))
    upstream_endpoints = list(dict.fromkeys(make_endpoint(address(index, ipv6), 7000 + index) for index, ipv6 in upstream))
    if upstream_endpoints:
        cache.store(INFO_HASH, 0, upstream_endpoints, 1, 1, 0, clock())

    requester_index, requester_ipv6 = local[0]
    requester = make_endpoint(address(requester_index, requester_ipv6), 7000 + requester_index)
    result = tracker.begin_announce(
        announce(7000 + requester_index, numwant), address(requester_index, requester_ipv6), same_family_only
    )
    assert isinstance(result, AnnounceResult)
    picked = reply_endpoints(result)

    assert requester not in picked
    assert len(picked) == len(set(picked))
    assert len(picked) <= numwant

    swarm = swarms.get(INFO_HASH)
    assert swarm is not None
    candidates = {endpoint for endpoint, *_ in swarm.peers()} | set(upstream_endpoints)
    candidates.discard(requester)
    if same_family_only:
        candidates = {endpoint for endpoint in candidates if len(endpoint) == len(requester)}
        assert all(len(endpoint) == len(requester) for endpoint in picked)
    assert set(picked) <= candidates
    assert len(picked) == min(numwant, len(candidates))
