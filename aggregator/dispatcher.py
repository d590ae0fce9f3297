"""The dispatcher: sleeps until the earliest due batch, then hands due batches to the worker pool.

The pool is a concurrency limit: each admitted batch runs as its own task, and the dispatcher
pops a batch only while fewer than `target_workers` tasks run. Overload control changes
`target_workers` while the service runs.
"""

import asyncio
from collections.abc import Awaitable, Callable

import structlog

from aggregator.batch import Batch
from aggregator.due_index import DueIndex

Clock = Callable[[], float]

log = structlog.get_logger("aggregator.dispatcher")


class Dispatcher:
    """Pops due batches only when a worker is free, so waiting batches stay in the index.

    The index calls `wake` when a batch becomes the earliest one, which cuts the current sleep short.
    """

    def __init__(
        self,
        index: DueIndex,
        run_batch: Callable[[Batch], Awaitable[None]],
        workers: int,
        clock: Clock,
        admit: Callable[[Batch, float], bool] = lambda batch, now_s: True,
        observe_lag: Callable[[float], None] = lambda lag_s: None,
    ) -> None:
        self._index = index
        self._run_batch = run_batch
        self._clock = clock
        self._admit = admit  # may move or park a batch and return False
        self._observe_lag = observe_lag  # receives each dispatched batch's flush lag, in seconds
        self.target_workers = workers
        self.busy_workers = 0
        self.dispatched = 0
        self._wakeup = asyncio.Event()
        self._worker_free = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        self._running: set[asyncio.Task[None]] = set()
        self._dispatcher_task: asyncio.Task[None] | None = None
        index.on_new_earliest = self.wake

    def wake(self) -> None:
        self._wakeup.set()

    def set_workers(self, count: int) -> None:
        """Change the worker limit; a lower limit takes effect as running announces finish."""
        self.target_workers = count
        self._worker_free.set()

    def start(self) -> None:
        self._dispatcher_task = asyncio.get_running_loop().create_task(self._dispatch(), name="dispatcher")

    async def wait_until_idle(self) -> None:
        """Wait until no batch is in flight."""
        await self._idle.wait()

    async def stop_dispatching(self) -> None:
        """Stop popping batches; announces already handed to workers go on."""
        if self._dispatcher_task is not None:
            self._dispatcher_task.cancel()
            await asyncio.gather(self._dispatcher_task, return_exceptions=True)

    async def drain(self, timeout_s: float) -> bool:
        """Wait up to `timeout_s` for the workers to finish; return whether they all did."""
        try:
            await asyncio.wait_for(self.wait_until_idle(), timeout_s)
        except asyncio.TimeoutError:
            return False

        return True

    async def stop(self) -> None:
        """Cancel the dispatcher and every announce still in flight."""
        await self.stop_dispatching()
        running = list(self._running)
        for task in running:
            task.cancel()
        await asyncio.gather(*running, return_exceptions=True)

    async def _dispatch(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            while self.busy_workers >= self.target_workers:
                self._worker_free.clear()
                await self._worker_free.wait()

            batch = await self._next_due()
            while not self._admit(batch, self._clock()):
                batch = await self._next_due()

            # Lag counts from the due time of the batch's round, however often throttling or a full
            # forwarder moved the batch since.
            round_due_s = batch.round_due_s
            batch.ready_since_s = None
            self._observe_lag(max(self._clock() - round_due_s, 0.0))
            self.dispatched += 1
            self.busy_workers += 1
            self._idle.clear()
            task = loop.create_task(self._work(batch))
            self._running.add(task)
            task.add_done_callback(self._running.discard)

    async def _next_due(self) -> Batch:
        while True:
            # Clear before looking, so a wake() that races with the look is never lost.
            self._wakeup.clear()
            now_s = self._clock()
            batch = self._index.pop_due(now_s)
            if batch is not None:
                return batch

            earliest = self._index.earliest()
            timeout_s = None if earliest is None else max(earliest.due_s - now_s, 0.0)
            # asyncio.timeout, not wait_for: on Python 3.11 wait_for can swallow a cancellation
            # that arrives as the inner wait ends (CPython gh-86296), and stop() would then hang.
            try:
                async with asyncio.timeout(timeout_s):
                    await self._wakeup.wait()
            except TimeoutError:
                pass

    async def _work(self, batch: Batch) -> None:
        try:
            await self._run_batch(batch)
        except Exception:
            # run_batch handles upstream failures itself; this is a bug, and the pool must survive it.
            log.exception("worker.batch.crashed", info_hash=batch.info_hash.hex())
        finally:
            self.busy_workers -= 1
            self._worker_free.set()
            if self.busy_workers == 0:
                self._idle.set()
