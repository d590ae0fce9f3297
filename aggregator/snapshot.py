"""State snapshot: swarms, batch schedule, upstream peer cache and forwarder health in one file.

Written at shutdown (temporary file, fsync, rename, so a crash never leaves half a file) and
loaded at start, so a restart neither loses clients nor sends upstream announces that were not
due. Times are stored relative to the moment of writing, because the monotonic clock of one
process means nothing to the next. On load, the time the process was down is subtracted.
"""

import os
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import structlog

from aggregator.batch import Batch, Priority, TorrentBatches, UpstreamEvent
from aggregator.batch_table import BatchTable
from aggregator.due_index import DueIndex
from aggregator.forwarder import ForwarderRegistry, ForwarderState
from aggregator.peer_cache import PeerCache
from aggregator.swarm import PEER_ID_BYTES, SwarmRegistry

log = structlog.get_logger("aggregator.snapshot")

FORMAT = "aggregator-state"
VERSION = 1


@dataclass
class StateParts:
    """The in-memory state a snapshot covers, with the clock its times are measured on."""

    swarms: SwarmRegistry
    table: BatchTable
    cache: PeerCache
    registry: ForwarderRegistry
    peer_ttl_s: float
    clock: Callable[[], float]


    def scratch(self) -> "StateParts":
        """Return empty state of the same shape, to try a load on."""
        index = DueIndex()
        names = [health.name for health in self.registry.forwarders]

        return StateParts(
            swarms=SwarmRegistry(self.peer_ttl_s, lambda info_hash: None),
            table=BatchTable(len(names), index, first_wait_s=0.0, retry_base_s=1.0, retry_max_s=1.0),
            cache=PeerCache(self.peer_ttl_s),
            registry=ForwarderRegistry(names, self.registry.policy, index, self.clock),
            peer_ttl_s=self.peer_ttl_s,
            clock=self.clock,
        )


@dataclass(frozen=True, slots=True)
class LoadCounts:
    peers: int
    swarms: int
    batches: int
    cached_infohashes: int


def write_snapshot(path: str, parts: StateParts) -> int:
    """Write the state to `path` atomically; return the number of bytes written."""
    document = dump_state(parts)
    data = orjson.dumps(document)
    folder = Path(path).resolve().parent
    folder.mkdir(parents=True, exist_ok=True)

    handle, temporary = tempfile.mkstemp(prefix=".state-", suffix=".tmp", dir=folder)
    try:
        with os.fdopen(handle, "wb") as file:
            file.write(data)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise

    return len(data)


def read_snapshot(path: str, parts: StateParts) -> LoadCounts | None:
    """Load a snapshot if one exists; a corrupt or incompatible one is logged and ignored."""
    try:
        data = Path(path).read_bytes()
    except FileNotFoundError:
        log.info("snapshot.absent", path=path)
        return None
    except OSError as error:
        log.warning("snapshot.unreadable", path=path, error=str(error))
        return None

    try:
        document = orjson.loads(data)
        if not isinstance(document, dict) or document.get("format") != FORMAT:
            raise ValueError("not an aggregator state file")
        if document.get("version") != VERSION:
            raise ValueError(f"version {document.get('version')!r}, expected {VERSION}")

        # A first pass into empty, throwaway state finds a bad entry anywhere in the file before
        # anything real is touched, so a rejected file leaves the service empty, not half loaded.
        load_state(document, parts.scratch())
        return load_state(document, parts)
    except (ValueError, TypeError, KeyError, AttributeError) as error:
        log.warning("snapshot.ignored", path=path, error=f"{type(error).__name__}: {error}")
        return None


def dump_state(parts: StateParts) -> dict[str, Any]:
    now_s = parts.clock()
    names = [health.name for health in parts.registry.forwarders]

    return {
        "format": FORMAT,
        "version": VERSION,
        "saved_at": time.time(),
        "swarms": [_dump_swarm(info_hash, parts, now_s) for info_hash in parts.swarms.info_hashes()],
        "torrents": [_dump_torrent(torrent, names, now_s) for torrent in parts.table.torrents()],
        "peer_cache": [
            {
                "info_hash": info_hash.hex(),
                "entries": [
                    {
                        "forwarder": names[forwarder_index],
                        "endpoints": [endpoint.hex() for endpoint in entry.endpoints],
                        "complete": entry.complete,
                        "incomplete": entry.incomplete,
                        "downloaded": entry.downloaded,
                        "expires_in_s": entry.expires_s - now_s,
                    }
                    for forwarder_index, entry in cached.entries.items()
                    if forwarder_index < len(names)
                ],
            }
            for info_hash, cached in parts.cache.items()
        ],
        "forwarders": [
            {
                "name": health.name,
                "state": health.state.value,
                "until_in_s": health.until_s - now_s,
                "reason": health.reason,
                "probe_delay_s": health.probe_delay_s,
                "ema_latency_s": health.ema_latency_s,
                "ema_success": health.ema_success,
                "succeeded": health.succeeded,
                "failed": health.failed,
                "consecutive_failures": health.consecutive_failures,
                "last_interval_s": health.last_interval_s,
            }
            for health in parts.registry.forwarders
        ],
        "stopped_pairs": [
            [info_hash.hex(), names[forwarder_index]]
            for info_hash, forwarder_index in parts.table.stopped_pairs()
            if forwarder_index < len(names)
        ],
    }


def _dump_swarm(info_hash: bytes, parts: StateParts, now_s: float) -> dict[str, Any]:
    swarm = parts.swarms.get(info_hash)
    assert swarm is not None

    return {
        "info_hash": info_hash.hex(),
        "downloads": swarm.downloads,
        "last_leecher_left": swarm.last_leecher_left,
        "peers": [
            [endpoint.hex(), peer_id.hex(), is_seeder, now_s - last_seen_s]
            for endpoint, peer_id, is_seeder, last_seen_s in swarm.peers()
        ],
    }


def _dump_torrent(torrent: TorrentBatches, names: list[str], now_s: float) -> dict[str, Any]:
    return {
        "info_hash": torrent.info_hash.hex(),
        "upstream_port": torrent.upstream_port,
        "left": torrent.left,
        "completed_sent": torrent.completed_sent,
        "batches": [
            {
                "forwarder": names[batch.forwarder_index],
                # A batch in flight when the process stopped is due again at once.
                "due_in_s": (batch.due_s - now_s) if batch.in_index else 0.0,
                "priority": batch.priority.value,
                "pending_event": batch.pending_event.value,
                "announced": batch.announced,
                "tracker_id": batch.tracker_id.hex() if batch.tracker_id is not None else None,
                "interval_s": batch.interval_s,
                "min_interval_s": batch.min_interval_s,
                "last_success_age_s": None if batch.last_success_s is None else now_s - batch.last_success_s,
                "failures": batch.failures,
            }
            for batch in torrent.batches
            if not batch.retired and batch.forwarder_index < len(names)
        ],
    }


def load_state(document: dict[str, Any], parts: StateParts) -> LoadCounts:
    """Restore what is still valid after the time the process was down."""
    now_s = parts.clock()
    down_s = max(time.time() - float(document["saved_at"]), 0.0)
    indexes = {health.name: health.index for health in parts.registry.forwarders}

    for info_hash_hex, name in document["stopped_pairs"]:
        if name in indexes:
            parts.table.restore_stopped_pair(bytes.fromhex(info_hash_hex), indexes[name])

    peers = 0
    for swarm_doc in document["swarms"]:
        peers += _load_swarm(swarm_doc, parts, now_s, down_s)

    batches = 0
    for torrent_doc in document["torrents"]:
        info_hash = bytes.fromhex(torrent_doc["info_hash"])
        if parts.swarms.get(info_hash) is None:
            continue  # every local peer expired while the process was down: nothing to announce
        batches += _load_torrent(info_hash, torrent_doc, parts.table, indexes, now_s, down_s)

    cached = 0
    for cache_doc in document["peer_cache"]:
        cached += _load_cache(cache_doc, parts.cache, indexes, now_s, down_s)

    for forwarder_doc in document["forwarders"]:
        _load_forwarder(forwarder_doc, parts.registry, indexes, now_s, down_s)

    return LoadCounts(peers=peers, swarms=len(parts.swarms), batches=batches, cached_infohashes=cached)


def _load_swarm(swarm_doc: dict[str, Any], parts: StateParts, now_s: float, down_s: float) -> int:
    info_hash = bytes.fromhex(swarm_doc["info_hash"])
    restored = 0
    # Oldest first, so each swarm's expiry order is rebuilt as it was.
    for endpoint_hex, peer_id_hex, is_seeder, age_s in sorted(swarm_doc["peers"], key=lambda peer: -peer[3]):
        total_age_s = float(age_s) + down_s
        if total_age_s >= parts.peer_ttl_s:
            continue

        endpoint = bytes.fromhex(endpoint_hex)
        if len(endpoint) not in (6, 18):
            raise ValueError(f"invalid endpoint {endpoint_hex!r}")
        peer_id = bytes.fromhex(peer_id_hex)
        if len(peer_id) != PEER_ID_BYTES:  # the swarm's arrays hold exactly this many bytes per peer
            raise ValueError(f"invalid peer id {peer_id_hex!r}")
        parts.swarms.restore_peer(info_hash, endpoint, peer_id, bool(is_seeder), now_s - total_age_s)
        restored += 1

    swarm = parts.swarms.get(info_hash)
    if swarm is not None:
        swarm.downloads = int(swarm_doc["downloads"])
        left = swarm_doc["last_leecher_left"]
        swarm.last_leecher_left = None if left is None else int(left)

    return restored


def _load_torrent(
    info_hash: bytes,
    torrent_doc: dict[str, Any],
    table: BatchTable,
    indexes: dict[str, int],
    now_s: float,
    down_s: float,
) -> int:
    torrent = TorrentBatches(info_hash)
    torrent.upstream_port = int(torrent_doc["upstream_port"])
    torrent.left = int(torrent_doc["left"])
    torrent.completed_sent = bool(torrent_doc["completed_sent"])

    saved = {batch_doc["forwarder"]: batch_doc for batch_doc in torrent_doc["batches"]}
    for name, forwarder_index in indexes.items():
        batch = Batch(torrent, forwarder_index)
        batch_doc = saved.get(name)
        if batch_doc is None:
            # A forwarder added since the snapshot: announce to it as for a new infohash.
            table.restore_batch(batch, now_s)
            continue

        batch.priority = Priority(int(batch_doc["priority"]))
        batch.pending_event = UpstreamEvent(batch_doc["pending_event"])
        batch.announced = bool(batch_doc["announced"])
        tracker_id = batch_doc["tracker_id"]
        batch.tracker_id = None if tracker_id is None else bytes.fromhex(tracker_id)
        batch.interval_s = float(batch_doc["interval_s"])
        batch.min_interval_s = float(batch_doc["min_interval_s"])
        age_s = batch_doc["last_success_age_s"]
        batch.last_success_s = None if age_s is None else now_s - float(age_s) - down_s
        batch.failures = int(batch_doc["failures"])
        # Whatever came due while the process was down is due now, not in a burst later.
        table.restore_batch(batch, now_s + max(float(batch_doc["due_in_s"]) - down_s, 0.0))

    # Without this count, clients of a restored infohash whose upstreams returned no peers would
    # get `first_interval` forever, because only a batch's first success increments it.
    torrent.replied = sum(not batch.retired and batch.last_success_s is not None for batch in torrent.batches)

    return sum(not batch.retired for batch in torrent.batches)


def _load_cache(
    cache_doc: dict[str, Any], cache: PeerCache, indexes: dict[str, int], now_s: float, down_s: float
) -> int:
    info_hash = bytes.fromhex(cache_doc["info_hash"])
    restored = 0
    for entry in cache_doc["entries"]:
        remaining_s = float(entry["expires_in_s"]) - down_s
        if entry["forwarder"] not in indexes or remaining_s <= 0:
            continue

        cache.store(
            info_hash,
            indexes[entry["forwarder"]],
            [bytes.fromhex(endpoint) for endpoint in entry["endpoints"]],
            int(entry["complete"]),
            int(entry["incomplete"]),
            int(entry["downloaded"]),
            now_s,
            expires_s=now_s + remaining_s,
        )
        restored = 1

    return restored


def _load_forwarder(
    forwarder_doc: dict[str, Any], registry: ForwarderRegistry, indexes: dict[str, int], now_s: float, down_s: float
) -> None:
    if forwarder_doc["name"] not in indexes:
        return

    health = registry[indexes[forwarder_doc["name"]]]
    health.ema_latency_s = forwarder_doc["ema_latency_s"]
    health.ema_success = float(forwarder_doc["ema_success"])
    health.succeeded = int(forwarder_doc["succeeded"])
    health.failed = int(forwarder_doc["failed"])
    health.consecutive_failures = int(forwarder_doc["consecutive_failures"])
    health.last_interval_s = forwarder_doc["last_interval_s"]
    health.probe_delay_s = float(forwarder_doc["probe_delay_s"])

    state = ForwarderState(forwarder_doc["state"])
    remaining_s = float(forwarder_doc["until_in_s"]) - down_s
    if state is ForwarderState.ACTIVE or (state is ForwarderState.SUSPENDED and remaining_s <= 0):
        return

    # A disabled forwarder stays disabled until a probe succeeds; one whose probe time passed is probed now.
    health.state = state
    health.until_s = now_s + max(remaining_s, 0.0)
    health.reason = str(forwarder_doc["reason"])
