"""Local swarms: the peers that announced to this aggregator, per infohash, with expiry.

A swarm keeps its peers in parallel arrays per address family, in compact form (BEP 23 and BEP 7),
so that a reply copies a slice of ready-made bytes instead of building one object per peer. A
dict from endpoint to array position is ordered by last announce (a re-announce moves the peer
to the end), so expired peers are always at its front. Swarms are filed in time buckets by the
expiry of their oldest peer, so a sweep visits only swarms that may hold expired peers.
"""

import random
from array import array
from collections.abc import Callable, Iterator

from aggregator.endpoints import IPV4_ENDPOINT_BYTES, IPV6_ENDPOINT_BYTES

PEER_ID_BYTES = 20


class PeerArrays:
    """The peers of one address family in one swarm: position i of each array is the same peer.

    Removal moves the last peer into the freed position, so the arrays stay dense and a window
    at a random start picks every peer with the same chance.
    """

    __slots__ = ("width", "endpoints", "peer_ids", "last_seen_s", "seeder_flags")

    def __init__(self, width: int) -> None:
        self.width = width  # bytes per endpoint: 6 for IPv4, 18 for IPv6
        self.endpoints = bytearray()  # compact endpoints, ready to send
        self.peer_ids = bytearray()  # PEER_ID_BYTES per peer, for replies that carry peer ids
        self.last_seen_s = array("d")
        self.seeder_flags = bytearray()  # 1 for a seeder

    def __len__(self) -> int:
        return len(self.seeder_flags)

    def append(self, endpoint: bytes, peer_id: bytes, is_seeder: bool, now_s: float) -> int:
        """Add a peer at the end and return its position."""
        self.endpoints += endpoint
        self.peer_ids += peer_id
        self.last_seen_s.append(now_s)
        self.seeder_flags.append(is_seeder)

        return len(self.seeder_flags) - 1

    def endpoint_at(self, position: int) -> bytes:
        start = position * self.width

        return bytes(self.endpoints[start : start + self.width])

    def peer_id_at(self, position: int) -> bytes:
        start = position * PEER_ID_BYTES

        return bytes(self.peer_ids[start : start + PEER_ID_BYTES])

    def move_last_to(self, position: int) -> None:
        """Overwrite `position` with the last peer and drop the last slot."""
        last = len(self.seeder_flags) - 1
        if position != last:
            width = self.width
            self.endpoints[position * width : (position + 1) * width] = self.endpoints[last * width :]
            self.peer_ids[position * PEER_ID_BYTES : (position + 1) * PEER_ID_BYTES] = self.peer_ids[
                last * PEER_ID_BYTES :
            ]
            self.last_seen_s[position] = self.last_seen_s[last]
            self.seeder_flags[position] = self.seeder_flags[last]

        del self.endpoints[last * self.width :]
        del self.peer_ids[last * PEER_ID_BYTES :]
        self.last_seen_s.pop()
        self.seeder_flags.pop()

    def window(self, count: int, excluded_position: int) -> bytes:
        """Return `count` compact endpoints from a random window, without the excluded position.

        A contiguous window costs one slice whatever its size. Each peer is equally likely to be
        picked. Neighbours in the arrays tend to be picked together, but swap removals keep
        changing who the neighbours are.
        """
        size = len(self.seeder_flags)
        width = self.width
        if count <= 0 or size == 0:
            return b""

        if size <= count + 1:
            data = bytes(self.endpoints)
            start = 0
            window_size = size
        else:
            # One extra so that cutting the requester out still leaves `count` peers.
            window_size = count + 1
            start = random_index(size)
            data = wrapped_window(self.endpoints, width, start, window_size)

        offset = (excluded_position - start) % size if excluded_position >= 0 else window_size
        if offset < window_size:
            data = data[: offset * width] + data[(offset + 1) * width :]

        return data[: count * width]


class Swarm:
    """The local peers of one infohash."""

    __slots__ = ("positions", "ipv4", "ipv6", "seeders", "downloads", "expiry_bucket", "last_leecher_left")

    def __init__(self) -> None:
        # Endpoint -> position in its family's arrays, ordered by last announce, oldest first.
        self.positions: dict[bytes, int] = {}
        self.ipv4 = PeerArrays(IPV4_ENDPOINT_BYTES)
        self.ipv6: PeerArrays | None = None  # created by the first IPv6 peer, as most swarms never get one
        self.seeders = 0
        self.downloads = 0  # `completed` events seen while this swarm existed
        self.expiry_bucket = -1
        self.last_leecher_left: int | None = None

    def __len__(self) -> int:
        return len(self.positions)

    @property
    def leechers(self) -> int:
        return len(self.positions) - self.seeders

    def upsert(self, endpoint: bytes, peer_id: bytes, left: int | None, now_s: float) -> None:
        """Add the peer or refresh it, moving it to the newest end of the expiry order."""
        is_seeder = left == 0
        if not is_seeder and left is not None:
            self.last_leecher_left = left

        family = self.ipv4 if len(endpoint) == IPV4_ENDPOINT_BYTES else self._family(endpoint)
        position = self.positions.pop(endpoint, -1)
        if position < 0:
            position = family.append(endpoint, peer_id, is_seeder, now_s)
        else:
            self.seeders -= family.seeder_flags[position]
            family.peer_ids[position * PEER_ID_BYTES : (position + 1) * PEER_ID_BYTES] = peer_id
            family.last_seen_s[position] = now_s
            family.seeder_flags[position] = is_seeder

        self.seeders += is_seeder
        self.positions[endpoint] = position

    def remove(self, endpoint: bytes) -> bool:
        """Remove the peer at `endpoint`; return whether it was there."""
        position = self.positions.pop(endpoint, -1)
        if position < 0:
            return False

        self._drop_position(self._family(endpoint), position)

        return True

    def expire(self, oldest_allowed_s: float) -> int:
        """Remove peers last seen before `oldest_allowed_s`; return how many were removed."""
        removed = 0
        while self.positions:
            endpoint = next(iter(self.positions))
            family = self._family(endpoint)
            position = self.positions[endpoint]
            if family.last_seen_s[position] >= oldest_allowed_s:
                break

            del self.positions[endpoint]
            self._drop_position(family, position)
            removed += 1

        return removed

    def oldest_seen_s(self) -> float | None:
        for endpoint, position in self.positions.items():
            return self._family(endpoint).last_seen_s[position]

        return None

    def peer_id_of(self, endpoint: bytes) -> bytes | None:
        position = self.positions.get(endpoint)
        if position is None:
            return None

        return self._family(endpoint).peer_id_at(position)

    def peers(self) -> Iterator[tuple[bytes, bytes, bool, float]]:
        """Yield (endpoint, peer_id, is_seeder, last_seen_s) of every peer, oldest announce first."""
        for endpoint, position in self.positions.items():
            family = self._family(endpoint)
            yield endpoint, family.peer_id_at(position), bool(family.seeder_flags[position]), family.last_seen_s[position]

    def sample(self, count: int, excluded_endpoint: bytes, width: int | None = None) -> tuple[bytes, bytes]:
        """Pick up to `count` peers at random, never the excluded one; return compact IPv4 and IPv6 strings.

        With `width`, only peers of that endpoint width are picked (a UDP reply has one family).
        Otherwise the count is split between the families in proportion to their sizes.
        """
        ipv6 = self.ipv6
        size4 = len(self.ipv4) if width != IPV6_ENDPOINT_BYTES else 0
        size6 = len(ipv6) if ipv6 is not None and width != IPV4_ENDPOINT_BYTES else 0

        # Split what can be picked: the excluded peer does not count in its family.
        excluded = self.positions.get(excluded_endpoint, -1)
        is_ipv4 = len(excluded_endpoint) == IPV4_ENDPOINT_BYTES
        if excluded >= 0:
            if is_ipv4:
                size4 -= size4 > 0
            else:
                size6 -= size6 > 0
        count4, count6 = split_count(count, size4, size6)
        peers4 = b""
        if count4:
            peers4 = self.ipv4.window(count4, excluded if is_ipv4 else -1)
        peers6 = b""
        if count6 and ipv6 is not None:
            peers6 = ipv6.window(count6, -1 if is_ipv4 else excluded)

        return peers4, peers6

    def _family(self, endpoint: bytes) -> PeerArrays:
        if len(endpoint) == IPV4_ENDPOINT_BYTES:
            return self.ipv4

        if self.ipv6 is None:
            self.ipv6 = PeerArrays(IPV6_ENDPOINT_BYTES)

        return self.ipv6

    def _drop_position(self, family: PeerArrays, position: int) -> None:
        self.seeders -= family.seeder_flags[position]
        last = len(family) - 1
        if position != last:
            # The last peer moves into the freed slot, and its dict entry keeps its place in the order.
            self.positions[family.endpoint_at(last)] = position
        family.move_last_to(position)


def random_index(size: int) -> int:
    """Return a uniform random index below `size`.

    Scaled random() costs a third of randrange(), and its bias, about size / 2**53, is
    negligible for any swarm.
    """
    return int(random.random() * size)


def wrapped_window(compact: bytes | bytearray, width: int, start: int, count: int) -> bytes:
    """Return `count` endpoints of `width` bytes from position `start`, wrapping around the end."""
    size = len(compact) // width
    end = start + count
    if end <= size:
        return bytes(compact[start * width : end * width])

    return bytes(compact[start * width :]) + bytes(compact[: (end - size) * width])


def split_count(count: int, size4: int, size6: int) -> tuple[int, int]:
    """Split `count` picks between two families of `size4` and `size6` candidates, by their sizes."""
    if size4 + size6 <= count:
        return size4, size6
    if not size6:
        return count, 0
    if not size4:
        return 0, count

    count4 = min(size4, round(count * size4 / (size4 + size6)))
    count6 = min(size6, count - count4)

    return count - count6, count6


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

    def seeder_count(self) -> int:
        """Count the seeders of every swarm; costs O(swarms)."""
        return sum(swarm.seeders for swarm in self._swarms.values())

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

        before = len(swarm.positions)
        swarm.upsert(endpoint, peer_id, left, now_s)
        # No peer can have expired before the start of the swarm's expiry bucket (the bucket of
        # its oldest peer when it was filed, or earlier), so most announces skip the check.
        if now_s >= swarm.expiry_bucket * self._bucket_width_s:
            swarm.expire(now_s - self._peer_ttl_s)
        self.peer_count += len(swarm.positions) - before

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
