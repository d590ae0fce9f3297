"""Upstream peers per (infohash, forwarder), kept until `upstream_peer_ttl` after the reply that brought them.

A failed upstream announce stores nothing, so peers that are still fresh survive it. Client
replies draw from a merged, deduplicated view per infohash that is rebuilt only after a store or
an expiry, never per announce.
"""

import random
from collections import OrderedDict


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
        self._merged: list[bytes] | None = None
        self._merged_expires_s = 0.0
        self.complete = 0  # max over forwarders of their reported seeders
        self.incomplete = 0  # max over forwarders of their reported leechers
        self.downloaded = 0  # max over forwarders of their reported completed downloads

    def merged(self, now_s: float) -> list[bytes]:
        """Return the distinct live endpoints over all forwarders, rebuilding after a change or expiry."""
        if self._merged is not None and now_s < self._merged_expires_s:
            return self._merged

        for forwarder_index in [index for index, entry in self.entries.items() if entry.expires_s <= now_s]:
            del self.entries[forwarder_index]

        distinct: dict[bytes, None] = {}
        for entry in self.entries.values():
            distinct.update(dict.fromkeys(entry.endpoints))

        self._merged = list(distinct)
        self._merged_expires_s = min((entry.expires_s for entry in self.entries.values()), default=float("inf"))
        self.complete = max((entry.complete for entry in self.entries.values()), default=0)
        self.incomplete = max((entry.incomplete for entry in self.entries.values()), default=0)
        self.downloaded = max((entry.downloaded for entry in self.entries.values()), default=0)

        return self._merged

    def sample(self, count: int, now_s: float) -> list[bytes]:
        """Pick up to `count` distinct upstream endpoints uniformly at random."""
        merged = self.merged(now_s)
        if len(merged) <= count:
            return merged

        return random.sample(merged, count)

    def invalidate(self) -> None:
        self._merged = None


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
