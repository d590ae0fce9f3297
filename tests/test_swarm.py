import collections

from aggregator.endpoints import make_endpoint
from aggregator.swarm import Swarm, SwarmRegistry

INFO_HASH = b"\x11" * 20
OTHER_HASH = b"\x22" * 20


def endpoint(index: int) -> bytes:
    return make_endpoint(bytes([10, 0, index // 256, index % 256]), 6881)


def peer_id(index: int) -> bytes:
    return b"-XX0001-" + index.to_bytes(12, "big")


def test_swarm_counts_seeders_and_leechers() -> None:
    swarm = Swarm()
    swarm.upsert(endpoint(1), peer_id(1), 0, 1.0)
    swarm.upsert(endpoint(2), peer_id(2), 500, 1.0)
    swarm.upsert(endpoint(3), peer_id(3), None, 1.0)

    assert swarm.seeders == 1
    assert swarm.leechers == 2


def test_swarm_reannounce_updates_in_place() -> None:
    swarm = Swarm()
    swarm.upsert(endpoint(1), peer_id(1), 500, 1.0)
    swarm.upsert(endpoint(1), peer_id(1), 0, 2.0)

    assert len(swarm) == 1
    assert swarm.seeders == 1
    assert swarm.leechers == 0


def test_swarm_remove_keeps_sampling_list_consistent() -> None:
    swarm = Swarm()
    for index in range(10):
        swarm.upsert(endpoint(index), peer_id(index), index, 1.0)

    assert swarm.remove(endpoint(3))
    assert not swarm.remove(endpoint(3))
    assert len(swarm) == 9
    for position, peer in enumerate(swarm.peer_list):
        assert peer.position == position
    assert {peer.endpoint for peer in swarm.peer_list} == set(swarm.peers_by_endpoint)


def test_sample_never_returns_requester() -> None:
    swarm = Swarm()
    for index in range(5):
        swarm.upsert(endpoint(index), peer_id(index), 1, 1.0)

    for _ in range(50):
        picked = swarm.sample(4, endpoint(2))
        assert endpoint(2) not in [peer.endpoint for peer in picked]
        assert len(picked) == 4


def test_sample_is_spread_over_whole_swarm() -> None:
    swarm = Swarm()
    for index in range(1000):
        swarm.upsert(endpoint(index), peer_id(index), 1, 1.0)

    seen: collections.Counter[bytes] = collections.Counter()
    for _ in range(400):
        picked = swarm.sample(50, endpoint(0))
        assert len(picked) == 50
        assert len({peer.endpoint for peer in picked}) == 50
        seen.update(peer.endpoint for peer in picked)

    # 20,000 picks over 999 peers: about 20 each. A first-N bias would leave most peers at 0.
    assert len(seen) > 990
    assert max(seen.values()) < 60


def test_registry_expires_idle_peers_only() -> None:
    emptied: list[bytes] = []
    registry = SwarmRegistry(peer_ttl_s=100, on_swarm_emptied=emptied.append)
    registry.announce(INFO_HASH, endpoint(1), peer_id(1), 1, now_s=0.0)
    registry.announce(INFO_HASH, endpoint(2), peer_id(2), 1, now_s=50.0)

    registry.expire(now_s=99.0)
    assert registry.peer_count == 2

    registry.expire(now_s=120.0)
    swarm = registry.get(INFO_HASH)
    assert swarm is not None
    assert list(swarm.peers_by_endpoint) == [endpoint(2)]
    assert registry.peer_count == 1
    assert emptied == []

    registry.expire(now_s=170.0)
    assert registry.get(INFO_HASH) is None
    assert registry.peer_count == 0
    assert emptied == [INFO_HASH]


def test_registry_reannounce_postpones_expiry() -> None:
    registry = SwarmRegistry(peer_ttl_s=100, on_swarm_emptied=lambda info_hash: None)
    registry.announce(INFO_HASH, endpoint(1), peer_id(1), 1, now_s=0.0)
    registry.announce(INFO_HASH, endpoint(1), peer_id(1), 1, now_s=90.0)

    registry.expire(now_s=150.0)

    assert registry.get(INFO_HASH) is not None
    assert registry.peer_count == 1


def test_registry_sweep_skips_fresh_swarms() -> None:
    # A sweep must not visit swarms whose oldest peer cannot have expired yet.
    registry = SwarmRegistry(peer_ttl_s=1600, on_swarm_emptied=lambda info_hash: None)
    registry.announce(INFO_HASH, endpoint(1), peer_id(1), 1, now_s=0.0)
    registry.announce(OTHER_HASH, endpoint(1), peer_id(1), 1, now_s=1000.0)
    registry.expire(now_s=1700.0)

    assert registry.swarms_visited == 1
    assert registry.get(INFO_HASH) is None
    assert registry.get(OTHER_HASH) is not None


def test_stopped_peer_empties_swarm() -> None:
    emptied: list[bytes] = []
    registry = SwarmRegistry(peer_ttl_s=100, on_swarm_emptied=emptied.append)
    registry.announce(INFO_HASH, endpoint(1), peer_id(1), 1, now_s=0.0)

    registry.remove_peer(INFO_HASH, endpoint(2))
    assert emptied == []

    registry.remove_peer(INFO_HASH, endpoint(1))
    assert emptied == [INFO_HASH]
    assert len(registry) == 0
