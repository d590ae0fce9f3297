"""Local swarms: the peers that announced to this aggregator, per infohash, with expiry.

Each swarm keeps its peers in a dict ordered by last announce (a re-announce moves the peer to the
end), so expired peers are always at the front. Swarms are filed in time buckets by the expiry of
their oldest peer, so a sweep visits only swarms that may hold expired peers, never every peer.
"""

import random
from collections.abc import Callable

from aggregator.endpoints import IPV4_ENDPOINT_BYTES


class Peer:
    """One local peer, keyed by its compact endpoint (ip:port)."""

    __slots__ = ("endpoint", "peer_id", "is_seeder", "last_seen_s", "position")

    def __init__(self, endpoint: bytes, peer_id: bytes, is_seeder: bool, last_seen_s: float) -> None:
        self.endpoint = endpoint
        self.peer_id = peer_id
        self.is_seeder = is_seeder
        self.last_seen_s = last_seen_s
        self.position = 0  # index in Swarm.peer_list, kept for O(1) removal and sampling

    @property
    def is_ipv4(self) -> bool:
        return len(self.endpoint) == IPV4_ENDPOINT_BYTES


class Swarm:
    """The local peers of one infohash."""

    __slots__ = ("peers_by_endpoint", "peer_list", "seeders", "downloads", "expiry_bucket", "last_leecher_left")

    def __init__(self) -> None:
        self.peers_by_endpoint: dict[bytes, Peer] = {}  # ordered by last announce, oldest first
        self.peer_list: list[Peer] = []  # the same peers in no order, for random.sample
        self.seeders = 0
        self.downloads = 0  # `completed` events seen while this swarm existed
        self.expiry_bucket = -1
        self.last_leecher_left: int | None = None

    def __len__(self) -> int:
        return len(self.peer_list)

    @property
    def leechers(self) -> int:
        return len(self.peer_list) - self.seeders

    def upsert(self, endpoint: bytes, peer_id: bytes, left: int | None, now_s: float) -> None:
        """Add the peer or refresh it, moving it to the newest end of the expiry order."""
        is_seeder = left == 0
        if not is_seeder and left is not None:
            self.last_leecher_left = left

        peer = self.peers_by_endpoint.pop(endpoint, None)
        if peer is None:
            peer = Peer(endpoint, peer_id, is_seeder, now_s)
            peer.position = len(self.peer_list)
            self.peer_list.append(peer)
        else:
            self.seeders -= peer.is_seeder
            peer.peer_id = peer_id
            peer.is_seeder = is_seeder
            peer.last_seen_s = now_s

        self.seeders += is_seeder
        self.peers_by_endpoint[endpoint] = peer

    def remove(self, endpoint: bytes) -> bool:
        """Remove the peer at `endpoint`; return whether it was there."""
        peer = self.peers_by_endpoint.pop(endpoint, None)
        if peer is None:
            return False

        self._drop_from_list(peer)

        return True

    def expire(self, oldest_allowed_s: float) -> int:
        """Remove peers last seen before `oldest_allowed_s`; return how many were removed."""
        removed = 0
        while self.peers_by_endpoint:
            endpoint, peer = next(iter(self.peers_by_endpoint.items()))
            if peer.last_seen_s >= oldest_allowed_s:
                break

            del self.peers_by_endpoint[endpoint]
            self._drop_from_list(peer)
            removed += 1

        return removed

    def oldest_seen_s(self) -> float | None:
        for peer in self.peers_by_endpoint.values():
            return peer.last_seen_s

        return None

    def sample(self, count: int, excluded_endpoint: bytes) -> list[Peer]:
        """Pick up to `count` distinct peers uniformly at random, never the excluded one."""
        if count <= 0:
            return []

        if len(self.peer_list) <= count + 1:
            chosen = list(self.peer_list)
        else:
            # One extra so that dropping the requester still leaves `count` peers.
            chosen = random.sample(self.peer_list, count + 1)

        picked = [peer for peer in chosen if peer.endpoint != excluded_endpoint]

        return picked[:count]

    def _drop_from_list(self, peer: Peer) -> None:
        # Swap with the last element so removal from the sampling list is O(1).
        last = self.peer_list.pop()
        if last is not peer:
            last.position = peer.position
            self.peer_list[peer.position] = last

        self.seeders -= peer.is_seeder


class SwarmRegistry:
    """All local swarms, in memory, with bucketed expiry.

    `on_swarm_emptied` is called with the infohash whenever a swarm loses its last peer, by a
    `stopped` announce or by expiry, after the swarm has been removed.
    """

    def __init__(self, peer_ttl_s: float, on_swarm_emptied: Callable[[bytes], None]) -> None:
        self._peer_ttl_s = peer_ttl_s
        self._on_swarm_emptied = on_swarm_emptied
        # 16 buckets per TTL: a peer outlives its TTL by at most 1/16 of it before a sweep removes it.
        self._bucket_width_s = max(peer_ttl_s / 16, 1.0)
        self._swarms: dict[bytes, Swarm] = {}
        self._buckets: dict[int, set[bytes]] = {}
        self.peer_count = 0
        self.swarms_visited = 0  # swarms examined by sweeps, a measure of expiry work

    def __len__(self) -> int:
        return len(self._swarms)

    def get(self, info_hash: bytes) -> Swarm | None:
        return self._swarms.get(info_hash)

    def info_hashes(self) -> list[bytes]:
        """Return the infohash of every local swarm (a copy, so callers may await while using it)."""
        return list(self._swarms)

    def announce(
        self, info_hash: bytes, endpoint: bytes, peer_id: bytes, left: int | None, now_s: float
    ) -> tuple[Swarm, bool]:
        """Add or refresh a peer; return its swarm and whether the swarm was created by this call."""
        swarm = self._swarms.get(info_hash)
        created = swarm is None
        if swarm is None:
            swarm = Swarm()
            self._swarms[info_hash] = swarm
            self._file(info_hash, swarm, now_s + self._peer_ttl_s)

        before = len(swarm)
        swarm.upsert(endpoint, peer_id, left, now_s)
        # Expired peers sit at the front, so this costs nothing when there are none.
        swarm.expire(now_s - self._peer_ttl_s)
        self.peer_count += len(swarm) - before

        return swarm, created

    def restore_peer(
        self, info_hash: bytes, endpoint: bytes, peer_id: bytes, is_seeder: bool, last_seen_s: float
    ) -> None:
        """Add a peer from a snapshot with its original last-seen time; call oldest first."""
        swarm = self._swarms.get(info_hash)
        if swarm is None:
            swarm = Swarm()
            self._swarms[info_hash] = swarm
            self._file(info_hash, swarm, last_seen_s + self._peer_ttl_s)

        before = len(swarm)
        swarm.upsert(endpoint, peer_id, 0 if is_seeder else None, last_seen_s)
        self.peer_count += len(swarm) - before

    def drop_swarm(self, info_hash: bytes) -> None:
        """Remove a whole swarm without the emptied callback, so no upstream `stopped` is sent."""
        swarm = self._swarms.get(info_hash)
        if swarm is None:
            return

        self.peer_count -= len(swarm)
        callback = self._on_swarm_emptied
        self._on_swarm_emptied = lambda dropped: None
        try:
            self._drop(info_hash, swarm)
        finally:
            self._on_swarm_emptied = callback

    def remove_peer(self, info_hash: bytes, endpoint: bytes) -> None:
        """Remove a peer that sent `stopped`; drop its swarm if that was the last peer."""
        swarm = self._swarms.get(info_hash)
        if swarm is None or not swarm.remove(endpoint):
            return

        self.peer_count -= 1
        if not swarm:
            self._drop(info_hash, swarm)

    def expire(self, now_s: float) -> int:
        """Remove every peer whose TTL passed by more than one bucket; return how many were removed."""
        current_bucket = int(now_s // self._bucket_width_s)
        due_buckets = sorted(bucket for bucket in self._buckets if bucket <= current_bucket)
        oldest_allowed_s = now_s - self._peer_ttl_s
        removed = 0

        for bucket in due_buckets:
            for info_hash in self._buckets.pop(bucket):
                swarm = self._swarms.get(info_hash)
                if swarm is None:
                    continue

                self.swarms_visited += 1
                swarm.expiry_bucket = -1
                count = swarm.expire(oldest_allowed_s)
                removed += count
                self.peer_count -= count

                oldest_s = swarm.oldest_seen_s()
                if oldest_s is None:
                    self._drop(info_hash, swarm)
                else:
                    self._file(info_hash, swarm, oldest_s + self._peer_ttl_s)

        return removed

    def _file(self, info_hash: bytes, swarm: Swarm, expires_s: float) -> None:
        bucket = int(expires_s // self._bucket_width_s)
        swarm.expiry_bucket = bucket
        self._buckets.setdefault(bucket, set()).add(info_hash)

    def _drop(self, info_hash: bytes, swarm: Swarm) -> None:
        del self._swarms[info_hash]
        bucket = self._buckets.get(swarm.expiry_bucket)
        if bucket is not None:
            bucket.discard(info_hash)
            if not bucket:
                del self._buckets[swarm.expiry_bucket]

        self._on_swarm_emptied(info_hash)
