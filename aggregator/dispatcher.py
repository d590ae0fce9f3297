"""The dispatcher: sleeps until the earliest due batch, then hands due batches to a bounded worker pool."""

import asyncio
from collections.abc import Awaitable, Callable

import structlog

from aggregator.batch import Batch
from aggregator.due_index import DueIndex

Clock = Callable[[], float]

log = structlog.get_logger("aggregator.dispatcher")


class Dispatcher:
    """Pops due batches only when a worker is idle, so waiting batches stay in the index.

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
        self._admit = admit  # may move or park a batch and return False
        self._observe_lag = observe_lag  # receives each dispatched batch's flush lag, in seconds
        self._dispatcher_task: asyncio.Task[None] | None = None
        self._run_batch = run_batch
        self._worker_count = workers
        self._clock = clock
        self._wakeup = asyncio.Event()
        self._idle_workers = asyncio.Semaphore(workers)
        self._ready: asyncio.Queue[Batch] = asyncio.Queue()
        self._tasks: list[asyncio.Task[None]] = []
        self.busy_workers = 0
        self.dispatched = 0
        self._batch_finished = asyncio.Condition()
        index.on_new_earliest = self.wake

    def wake(self) -> None:
        self._wakeup.set()

    async def wait_until_idle(self) -> None:
        """Wait until no batch is in flight or handed over to a worker."""
        async with self._batch_finished:
            await self._batch_finished.wait_for(lambda: self.busy_workers == 0 and self._ready.empty())

    def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._tasks = [loop.create_task(self._work(), name=f"worker-{n}") for n in range(self._worker_count)]
        self._dispatcher_task = loop.create_task(self._dispatch(), name="dispatcher")
        self._tasks.append(self._dispatcher_task)

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
        """Cancel the dispatcher and the workers; in-flight announces are abandoned."""
        for task in self._tasks:
            task.cancel()

        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks = []

    async def _dispatch(self) -> None:
        while True:
            await self._idle_workers.acquire()
            batch = await self._next_due()
            while not self._admit(batch, self._clock()):
                batch = await self._next_due()

            self._observe_lag(max(self._clock() - batch.due_s, 0.0))
            self.dispatched += 1
            self._ready.put_nowait(batch)

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
            try:
                await asyncio.wait_for(self._wakeup.wait(), timeout_s)
            except asyncio.TimeoutError:
                pass

    async def _work(self) -> None:
        while True:
            batch = await self._ready.get()
            self.busy_workers += 1
            try:
                await self._run_batch(batch)
            except Exception:
                # run_batch handles upstream failures itself; this is a bug, and the worker must survive it.
                log.exception("worker.batch.crashed", info_hash=batch.info_hash.hex())
            finally:
                self.busy_workers -= 1
                self._idle_workers.release()
                async with self._batch_finished:
                    self._batch_finished.notify_all()
