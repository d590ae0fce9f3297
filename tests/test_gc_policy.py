"""Long-lived state must be freed by reference counting, so freezing it away from the collector leaks nothing."""

import asyncio
import gc

from aggregator.batch import Batch, TorrentBatches
from aggregator.batch_table import BatchTable
from aggregator.due_index import DueIndex
from aggregator.gc_policy import GcPolicy
from aggregator.swarm import Swarm, SwarmRegistry
from tests.fake_clock import FakeClock

INFO_HASHES = [bytes([index]) * 20 for index in range(1, 41)]


def live_batch_objects() -> int:
    return sum(isinstance(obj, (Batch, TorrentBatches)) for obj in gc.get_objects())


async def test_retired_batches_freed_without_cycle_collection() -> None:
    index = DueIndex()
    table = BatchTable(forwarder_count=3, index=index, first_wait_s=1.0, retry_base_s=30.0, retry_max_s=1800.0)
    swarms = SwarmRegistry(1800.0, lambda info_hash: None)
    gc.collect()
    gc.disable()  # from here on, only reference counting frees anything
    try:
        for info_hash in INFO_HASHES:
            table.open(info_hash, 0.0)
            swarms.announce(info_hash, bytes(4) + b"\x1a\xe1", b"-XX0001-" + bytes(12), 1, 0.0)

        # Every batch gets one upstream reply, half the swarms empty out and queue `stopped`, and
        # one `stopped` is in flight when every infohash is retired.
        while (batch := index.pop_due(10.0)) is not None:
            table.after_success(batch, table.start_announce(batch), 1800.0, 900.0, 0, 10.0)
        for info_hash in INFO_HASHES[:20]:
            table.note_swarm_emptied(info_hash, 20.0)
        in_flight = index.pop_due(20.0)
        assert in_flight is not None
        table.start_announce(in_flight)
        for info_hash in INFO_HASHES:
            table.retire_infohash(info_hash)
            swarms.drop_swarm(info_hash)
        table.after_success(in_flight, in_flight.pending_event, 1800.0, 900.0, 0, 30.0)
        del in_flight

        assert table.batch_count == 0
        assert len(swarms) == 0
        assert live_batch_objects() == 0
        assert not any(isinstance(obj, Swarm) for obj in gc.get_objects())
    finally:
        gc.enable()


def test_policy_freezes_and_runs_full_collections() -> None:
    clock = FakeClock(0.0)
    policy = GcPolicy(60, full_interval_s=3600.0, clock=clock)
    try:
        policy.start()
        assert policy.full_collections == 1
        assert gc.get_freeze_count() > 0

        policy.tick()
        assert (policy.freezes, policy.full_collections) == (1, 1)

        clock.advance(3600.0)
        policy.tick()
        assert (policy.freezes, policy.full_collections) == (1, 2)
    finally:
        policy.stop()

    assert gc.get_freeze_count() == 0


def test_policy_off_leaves_collector_alone() -> None:
    policy = GcPolicy(0)
    policy.start()
    policy.tick()

    assert gc.get_freeze_count() == 0
    assert (policy.freezes, policy.full_collections) == (0, 0)


def test_loop_survives_policy_under_asyncio() -> None:
    async def run() -> int:
        policy = GcPolicy(1)
        policy.start()
        await asyncio.sleep(0)
        policy.tick()
        policy.stop()
        return policy.freezes

    assert asyncio.run(run()) == 1
