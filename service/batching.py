"""Micro-batching: concurrent inspections share one model call, behind a bounded queue.

    request ─ submit(key, job, deadline) ─► asyncio.Queue(maxsize=queue_size) ─► worker task
                 │ full: 429 + Retry-After                                       │ takes the first
                 │ deadline passed: 503 + Retry-After                            │ job, waits up to
                 ▼                                                               │ max_wait for more
              awaits its future ◄── results ◄── model thread (one batch at a time) ◄┘ (max_batch)

Jobs carry a key (namespace, prototype version, class subset): only jobs with equal keys share a
model call, because the prototype matrix is one input of the call; a batch drawn from the queue
is split by key and run group by group. The model call is blocking and CPU-bound, so it runs on
one dedicated thread (`model_thread()`, which also loads the model), never on the event loop;
`run_exclusive` puts other model work (prompt encoding, warm-up) on the same thread so two model
calls never compete for the cores.

Waiting for company only pays when company is coming: requests announce themselves on arrival
(`arrival()`, before they decode their image) and the worker waits up to max_wait only while
announced requests are still on their way to the queue. A lone request goes straight to the model.

Nothing waits forever: the queue is bounded (429 when full, with a Retry-After estimated from the
recent batch time, and 429 at once when the work already queued outlasts the request's deadline)
and every job has a deadline (503 past it; a job whose caller gave up is skipped when its turn
comes). `close()` stops intake and lets the queue drain (graceful shutdown).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Hashable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from service.errors import Problem

log = logging.getLogger(__name__)
J = TypeVar("J")
R = TypeVar("R")


def model_thread() -> ThreadPoolExecutor:
    """The one thread every model call runs on.

    Load the model on it too: PyTorch's CPU thread pools (OpenMP, oneDNN) belong to the thread
    that first used them, and a model loaded on one thread but run on another ran ~50% slower
    on a 2-core machine (two thread teams competing for the cores).
    """
    return ThreadPoolExecutor(max_workers=1, thread_name_prefix="model")


def _deadline_problem(retry_after: float) -> Problem:
    return Problem(
        503,
        "deadline-exceeded",
        "the inspection could not be completed within the request deadline "
        "(INSPECT_REQUEST_TIMEOUT_S); the service is overloaded",
        retry_after=retry_after,
    )


@dataclass
class _Pending(Generic[J]):
    key: Hashable
    job: J
    deadline: float  # time.monotonic()
    future: asyncio.Future[Any]
    enqueued: float = field(default_factory=time.monotonic)


class Arrival:
    """A request on its way to the queue (decoding); closed when queued or abandoned."""

    def __init__(self, batcher: MicroBatcher[Any, Any]) -> None:
        self._batcher = batcher
        self._open = True
        batcher._announced += 1

    def close(self) -> None:
        if self._open:
            self._open = False
            self._batcher._announced -= 1

    def __enter__(self) -> Arrival:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


@dataclass(frozen=True)
class BatchStats:
    """What the batcher reports to metrics for one model call."""

    size: int
    seconds: float
    queue_waits: list[float]


class MicroBatcher(Generic[J, R]):
    """Groups submitted jobs into calls of `run_batch(jobs) -> results` (same order and length)."""

    def __init__(
        self,
        run_batch: Callable[[Sequence[J]], Sequence[R]],
        *,
        max_batch: int,
        max_wait_s: float,
        queue_size: int,
        on_batch: Callable[[BatchStats], None] | None = None,
        on_depth: Callable[[int], None] | None = None,
        executor: ThreadPoolExecutor | None = None,
    ) -> None:
        self._run_batch = run_batch
        self.max_batch = max_batch
        self.max_wait_s = max_wait_s
        self.queue_size = queue_size
        self._on_batch = on_batch
        self._on_depth = on_depth
        self._queue: asyncio.Queue[_Pending[J]] | None = None
        self._executor = executor  # the model thread: given (it loaded the model) or made
        self._worker: asyncio.Task[None] | None = None
        self._closing = False
        self._busy = False
        self._announced = 0  # requests decoding that will submit soon (see Arrival)
        self._batch_ewma_s = 0.1  # recent seconds per model call, for Retry-After
        # recent seconds from one batch's end to the next one's while work was waiting: the model
        # call plus everything around it (on a busy machine the event loop and decoding share the
        # cores), for refusing work that cannot start before its deadline
        self._cycle_ewma_s = 0.0
        self._last_done: float | None = None

    # ---- lifecycle ------------------------------------------------------------------------------

    async def start(self) -> None:
        """Create the queue, the model thread and the worker task (on the running loop)."""
        self._queue = asyncio.Queue(maxsize=self.queue_size)
        if self._executor is None:
            self._executor = model_thread()
        self._worker = asyncio.create_task(self._work(), name="micro-batcher")

    async def close(self, timeout: float = 30.0) -> None:
        """Refuse new jobs, let queued ones finish (up to `timeout`), then stop the thread."""
        self._closing = True
        if self._queue is not None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._queue.join(), timeout)
        if self._worker is not None:
            self._worker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._worker
        if self._executor is not None:
            self._executor.shutdown(wait=True, cancel_futures=True)

    @property
    def depth(self) -> int:
        """Jobs waiting (the batch being run excluded)."""
        return self._queue.qsize() if self._queue is not None else 0

    @property
    def busy(self) -> bool:
        return self._busy

    @property
    def closing(self) -> bool:
        return self._closing

    # ---- intake ---------------------------------------------------------------------------------

    def retry_after_s(self) -> float:
        """Estimated seconds until the queue has room: the waiting batches times the batch time."""
        batches = self.depth / max(1, self.max_batch) + 1
        return max(1.0, batches * self._batch_ewma_s)

    def arrival(self) -> Arrival:
        """Announce a request that will submit once its input is ready (a context manager)."""
        return Arrival(self)

    async def submit(
        self, key: Hashable, job: J, deadline: float, arrival: Arrival | None = None
    ) -> R:
        """Queue a job and wait for its result; Problem 429/503 when refused or late."""
        if arrival is not None:
            arrival.close()
        if self._closing or self._queue is None:
            raise Problem(503, "shutting-down", "the service is shutting down", retry_after=5)
        # Refuse at once what cannot start before its deadline: a 429 now beats a 503 later.
        per_batch = max(self._batch_ewma_s, self._cycle_ewma_s)
        queued_s = -(-self.depth // max(1, self.max_batch)) * per_batch
        if queued_s > deadline - time.monotonic():
            raise Problem(
                429,
                "overloaded",
                f"the inspection queue holds about {queued_s:.1f} s of work, more than the "
                "request deadline (INSPECT_REQUEST_TIMEOUT_S) allows; retry later",
                retry_after=self.retry_after_s(),
            )
        loop = asyncio.get_running_loop()
        pending = _Pending(key, job, deadline, loop.create_future())
        try:
            self._queue.put_nowait(pending)
        except asyncio.QueueFull:
            raise Problem(
                429,
                "overloaded",
                f"the inspection queue is full ({self.queue_size} waiting); retry later",
                retry_after=self.retry_after_s(),
            ) from None
        self._report_depth()
        remaining = deadline - time.monotonic()
        try:
            return await asyncio.wait_for(asyncio.shield(pending.future), max(0.0, remaining))
        except TimeoutError:
            pending.future.cancel()
            raise _deadline_problem(self.retry_after_s()) from None
        except asyncio.CancelledError:  # the client went away
            pending.future.cancel()
            raise

    async def run_exclusive(self, fn: Callable[..., R], *args: Any) -> R:
        """Run other model work (prompt encoding) on the model thread."""
        if self._executor is None:
            raise RuntimeError("batcher not started")
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)

    # ---- worker ---------------------------------------------------------------------------------

    def _report_depth(self) -> None:
        if self._on_depth is not None:
            self._on_depth(self.depth)

    async def _collect(self) -> list[_Pending[J]]:
        assert self._queue is not None
        first = await self._queue.get()
        batch = [first]
        end = time.monotonic() + self.max_wait_s
        while len(batch) < self.max_batch:
            if not self._queue.empty():
                batch.append(self._queue.get_nowait())
                continue
            remaining = end - time.monotonic()
            if remaining <= 0 or self._announced <= 0:  # nobody else is on the way
                break
            try:  # short naps: an announced request may also fail before it submits
                batch.append(await asyncio.wait_for(self._queue.get(), min(remaining, 0.001)))
            except TimeoutError:
                continue
        self._report_depth()
        return batch

    async def _work(self) -> None:
        assert self._queue is not None
        loop = asyncio.get_running_loop()
        while True:
            backlog = not self._queue.empty()  # then the time since the last batch was all work
            batch = await self._collect()
            ran = False
            try:
                now = time.monotonic()
                live = []
                for p in batch:
                    if p.future.done():  # its caller gave up (deadline or disconnect)
                        continue
                    if p.deadline <= now:
                        p.future.set_exception(_deadline_problem(self.retry_after_s()))
                        continue
                    live.append(p)
                groups: dict[Hashable, list[_Pending[J]]] = {}
                for p in live:
                    groups.setdefault(p.key, []).append(p)
                self._busy = True
                for group in groups.values():
                    await self._run_group(loop, group)
                ran = bool(groups)
            finally:
                self._busy = False
                if ran:
                    done = time.monotonic()
                    if backlog and self._last_done is not None:
                        cycle = done - self._last_done
                        self._cycle_ewma_s = 0.8 * self._cycle_ewma_s + 0.2 * cycle
                    self._last_done = done
                for _ in batch:
                    self._queue.task_done()

    async def _run_group(self, loop: asyncio.AbstractEventLoop, group: list[_Pending[J]]) -> None:
        start = time.monotonic()
        waits = [start - p.enqueued for p in group]
        try:
            results = await loop.run_in_executor(
                self._executor, self._run_batch, [p.job for p in group]
            )
        except Exception as exc:
            log.exception("model call failed for a batch of %d", len(group))
            for p in group:
                if not p.future.done():
                    p.future.set_exception(exc)
            return
        seconds = time.monotonic() - start
        self._batch_ewma_s = 0.8 * self._batch_ewma_s + 0.2 * seconds
        for p, result in zip(group, results, strict=True):
            if not p.future.done():
                p.future.set_result(result)
        if self._on_batch is not None:
            self._on_batch(BatchStats(len(group), seconds, waits))
