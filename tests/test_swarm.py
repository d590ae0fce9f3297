import collections
import random

from aggregator.endpoints import IPV4_ENDPOINT_BYTES, IPV6_ENDPOINT_BYTES, make_endpoint, split_compact
from aggregator.swarm import Swarm, SwarmRegistry

INFO_HASH = b"\x11" * 20
OTHER_HASH = b"\x22" * 20


def endpoint(index: int) -> bytes:
    return make_endpoint(bytes([10, 0, index // 256, index % 256]), 6881)


def peer_id(index: int) -> bytes:
    return b"-XX0001-" + index.to_bytes(12, "big")


def picked_endpoints(sample: tuple[bytes, bytes]) -> list[bytes]:
    peers4, peers6 = sample

    return split_compact(peers4, IPV4_ENDPOINT_BYTES) + split_compact(peers6, IPV6_ENDPOINT_BYTES)


def assert_arrays_match(swarm: Swarm) -> None:
    """Every dict entry points at its own endpoint in its family's arrays, and the arrays are dense."""
    families = [swarm.ipv4] + ([swarm.ipv6] if swarm.ipv6 is not None else [])
    assert sum(len(family) for family in families) == len(swarm)
    for family in families:
        assert len(family.endpoints) == len(family) * family.width
        assert len(family.peer_ids) == len(family) * 20
        assert len(family.last_seen_s) == len(family)
    for endpoint_key, position in swarm.positions.items():
        family = swarm.ipv4 if len(endpoint_key) == IPV4_ENDPOINT_BYTES else swarm.ipv6
        assert family is not None
        assert family.endpoint_at(position) == endpoint_key
    assert swarm.seeders == sum(sum(family.seeder_flags) for family in families)


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
    assert_arrays_match(swarm)


def test_sample_never_returns_requester() -> None:
    swarm = Swarm()
    for index in range(5):
        swarm.upsert(endpoint(index), peer_id(index), 1, 1.0)

    for _ in range(50):
        picked = picked_endpoints(swarm.sample(4, endpoint(2)))
        assert endpoint(2) not in picked
        assert len(picked) == 4


def test_sample_is_spread_over_whole_swarm() -> None:
    swarm = Swarm()
    for index in range(1000):
        swarm.upsert(endpoint(index), peer_id(index), 1, 1.0)

    seen: collections.Counter[bytes] = collections.Counter()
    for _ in range(400):
        picked = picked_endpoints(swarm.sample(50, endpoint(0)))
        assert len(picked) == 50
        assert len(set(picked)) == 50
        assert endpoint(0) not in picked
        seen.update(picked)

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
    assert [peer[0] for peer in swarm.peers()] == [endpoint(2)]
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


def v6_endpoint(index: int) -> bytes:
    return make_endpoint(bytes(14) + index.to_bytes(2, "big"), 6881)


def test_random_operations_keep_arrays_and_model_equal() -> None:
    # A dict model of the swarm, checked after every step of a long random mix of both families.
    rng = random.Random(7)
    swarm = Swarm()
    model: dict[bytes, tuple[bytes, bool, float]] = {}
    for step in range(3000):
        index = rng.randrange(60)
        key = endpoint(index) if index % 3 else v6_endpoint(index)
        action = rng.random()
        if action < 0.6:
            left = rng.choice([0, 5, None])
            swarm.upsert(key, peer_id(step), left, float(step))
            model.pop(key, None)
            model[key] = (peer_id(step), left == 0, float(step))
        elif action < 0.8:
            assert swarm.remove(key) == (key in model)
            model.pop(key, None)
        else:
            oldest_allowed_s = float(step - rng.randrange(200))
            expected = [k for k, (_, _, seen_s) in model.items() if seen_s < oldest_allowed_s]
            assert swarm.expire(oldest_allowed_s) == len(expected)
            for k in expected:
                del model[k]

        assert_arrays_match(swarm)
        assert list(swarm.peers()) == [(k, *value) for k, value in model.items()]


def test_sample_splits_count_between_families_by_size() -> None:
    swarm = Swarm()
    for index in range(30):
        swarm.upsert(endpoint(index), peer_id(index), 1, 1.0)
    for index in range(10):
        swarm.upsert(v6_endpoint(index), peer_id(100 + index), 1, 1.0)

    peers4, peers6 = swarm.sample(20, endpoint(0))
    assert (len(peers4) // 6, len(peers6) // 18) == (15, 5)

    # A UDP reply has one family: all picks come from the requester's.
    peers4, peers6 = swarm.sample(20, v6_endpoint(3), width=IPV6_ENDPOINT_BYTES)
    assert peers4 == b""
    assert sorted(split_compact(peers6, IPV6_ENDPOINT_BYTES)) == sorted(
        v6_endpoint(index) for index in range(10) if index != 3
    )


def test_window_never_returns_requester_at_any_position() -> None:
    swarm = Swarm()
    for index in range(12):
        swarm.upsert(endpoint(index), peer_id(index), 1, 1.0)

    for requester in range(12):
        for _ in range(40):
            picked = picked_endpoints(swarm.sample(5, endpoint(requester)))
            assert len(picked) == 5
            assert len(set(picked)) == 5
            assert endpoint(requester) not in picked
