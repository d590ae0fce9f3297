"""Upstream peers per (infohash, forwarder), kept until `upstream_peer_ttl` after the reply that brought them.

A failed upstream announce stores nothing, so peers that are still fresh survive it. Client
replies draw from a merged, deduplicated view per infohash that is rebuilt only after a store or
an expiry, never per announce.
"""

from collections import OrderedDict
from collections.abc import Collection

from aggregator.endpoints import IPV4_ENDPOINT_BYTES, IPV6_ENDPOINT_BYTES, split_compact
from aggregator.swarm import random_index, split_count, wrapped_window


class _Entry:
    __slots__ = ("endpoints", "complete", "incomplete", "downloaded", "expires_s")

    def __init__(
        self, endpoints: list[bytes], complete: int, incomplete: int, downloaded: int, expires_s: float
    ) -> None:
        self.endpoints = endpoints
        self.complete = complete
        self.incomplete = incomplete
        self.downloaded = downloaded
        self.expires_s = expires_s


class CachedTorrent:
    """The upstream peers of one infohash, per forwarder, and their merged view."""

    __slots__ = ("entries", "_merged", "_merged_expires_s", "complete", "incomplete", "downloaded")

    def __init__(self) -> None:
        self.entries: dict[int, _Entry] = {}
        # Distinct live endpoints as one compact string per family, rebuilt after a change or expiry.
        self._merged: tuple[bytes, bytes] | None = None
        self._merged_expires_s = 0.0
        self.complete = 0  # max over forwarders of their reported seeders
        self.incomplete = 0  # max over forwarders of their reported leechers
        self.downloaded = 0  # max over forwarders of their reported completed downloads

    def merged(self, now_s: float) -> tuple[bytes, bytes]:
        """Return the distinct live IPv4 and IPv6 endpoints over all forwarders, as compact strings."""
        if self._merged is not None and now_s < self._merged_expires_s:
            return self._merged

        for forwarder_index in [index for index, entry in self.entries.items() if entry.expires_s <= now_s]:
            del self.entries[forwarder_index]

        distinct: dict[bytes, None] = {}
        for entry in self.entries.values():
            distinct.update(dict.fromkeys(entry.endpoints))

        self._merged = (
            b"".join(endpoint for endpoint in distinct if len(endpoint) == IPV4_ENDPOINT_BYTES),
            b"".join(endpoint for endpoint in distinct if len(endpoint) == IPV6_ENDPOINT_BYTES),
        )
        self._merged_expires_s = min((entry.expires_s for entry in self.entries.values()), default=float("inf"))
        self.complete = max((entry.complete for entry in self.entries.values()), default=0)
        self.incomplete = max((entry.incomplete for entry in self.entries.values()), default=0)
        self.downloaded = max((entry.downloaded for entry in self.entries.values()), default=0)

        return self._merged

    def endpoints(self, now_s: float) -> list[bytes]:
        """Return the distinct live endpoints, IPv4 first."""
        peers4, peers6 = self.merged(now_s)

        return split_compact(peers4, IPV4_ENDPOINT_BYTES) + split_compact(peers6, IPV6_ENDPOINT_BYTES)

    def sample(
        self, count: int, now_s: float, excluded: Collection[bytes], width: int | None = None
    ) -> tuple[bytes, bytes]:
        """Pick up to `count` endpoints from a random window, none of them in `excluded`.

        With `width`, only endpoints of that width are picked. Otherwise the count is split
        between the families by their sizes. Returns compact IPv4 and IPv6 strings.
        """
        peers4, peers6 = self.merged(now_s)
        size4 = len(peers4) // IPV4_ENDPOINT_BYTES if width != IPV6_ENDPOINT_BYTES else 0
        size6 = len(peers6) // IPV6_ENDPOINT_BYTES if width != IPV4_ENDPOINT_BYTES else 0
        count4, count6 = split_count(count, size4, size6)
        picked4 = _window_without(peers4, IPV4_ENDPOINT_BYTES, count4, excluded)
        picked6 = _window_without(peers6, IPV6_ENDPOINT_BYTES, count6, excluded)

        # Exclusions may leave one family short while the other has more: draw again from that one.
        short = count - len(picked4) // IPV4_ENDPOINT_BYTES - len(picked6) // IPV6_ENDPOINT_BYTES
        if short > 0:
            if len(picked4) == count4 * IPV4_ENDPOINT_BYTES and size4 > count4:
                picked4 = _window_without(peers4, IPV4_ENDPOINT_BYTES, count4 + short, excluded)
            elif len(picked6) == count6 * IPV6_ENDPOINT_BYTES and size6 > count6:
                picked6 = _window_without(peers6, IPV6_ENDPOINT_BYTES, count6 + short, excluded)

        return picked4, picked6

    def invalidate(self) -> None:
        self._merged = None


def _window_without(compact: bytes, width: int, count: int, excluded: Collection[bytes]) -> bytes:
    """Take `count` endpoints from a random window of `compact`, skipping those in `excluded`."""
    size = len(compact) // width
    if count <= 0 or size == 0:
        return b""

    start = random_index(size)
    if len(excluded) <= count:
        # Few endpoints to skip: cut each out of a window that has room for all of them.
        window = wrapped_window(compact, width, start, min(size, count + len(excluded)))
        for endpoint in excluded:
            window = _cut(window, width, endpoint)

        return window[: count * width]

    # Many to skip (a nearly full local swarm needs only a few upstream peers): walk from the
    # start and stop at `count` chosen endpoints, so the cost follows `count`, not the exclusions.
    chosen: list[bytes] = []
    for step in range(size):
        at = (start + step) % size * width
        endpoint = compact[at : at + width]
        if endpoint not in excluded:
            chosen.append(endpoint)
            if len(chosen) == count:
                break

    return b"".join(chosen)


def _cut(window: bytes, width: int, endpoint: bytes) -> bytes:
    """Remove `endpoint` from a compact string if it is there, at an endpoint boundary."""
    if len(endpoint) != width:
        return window

    at = window.find(endpoint)
    while at >= 0 and at % width:
        at = window.find(endpoint, at + 1)
    if at < 0:
        return window

    return window[:at] + window[at + width :]


class PeerCache:
    """Upstream peers of every infohash, in memory."""

    def __init__(self, ttl_s: float) -> None:
        self._ttl_s = ttl_s
        # Ordered by last store. With one TTL for all, the stalest infohashes are at the front.
        self._torrents: OrderedDict[bytes, CachedTorrent] = OrderedDict()

    def __len__(self) -> int:
        return len(self._torrents)

    def get(self, info_hash: bytes) -> CachedTorrent | None:
        return self._torrents.get(info_hash)

    def drop(self, info_hash: bytes) -> None:
        self._torrents.pop(info_hash, None)

    def items(self) -> list[tuple[bytes, CachedTorrent]]:
        return list(self._torrents.items())

    def store(
        self,
        info_hash: bytes,
        forwarder_index: int,
        endpoints: list[bytes],
        complete: int,
        incomplete: int,
        downloaded: int,
        now_s: float,
        expires_s: float | None = None,
    ) -> None:
        """Replace what one forwarder reported for one infohash; by default it expires after the TTL."""
        torrent = self._torrents.get(info_hash)
        if torrent is None:
            torrent = CachedTorrent()
            self._torrents[info_hash] = torrent
        else:
            self._torrents.move_to_end(info_hash)

        if expires_s is None:
            expires_s = now_s + self._ttl_s
        torrent.entries[forwarder_index] = _Entry(endpoints, complete, incomplete, downloaded, expires_s)
        torrent.invalidate()

    def expire(self, now_s: float) -> int:
        """Drop infohashes whose newest store is older than the TTL; return how many were dropped."""
        dropped = 0
        while self._torrents:
            info_hash, torrent = next(iter(self._torrents.items()))
            newest_expiry_s = max((entry.expires_s for entry in torrent.entries.values()), default=0.0)
            if newest_expiry_s > now_s:
                break

            del self._torrents[info_hash]
            dropped += 1

        return dropped

    def peer_count(self) -> int:
        """Count the cached endpoints, duplicates over forwarders included; costs O(infohashes)."""
        return sum(len(entry.endpoints) for torrent in self._torrents.values() for entry in torrent.entries.values())
