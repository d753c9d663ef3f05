"""Scoring off the event loop: a bounded pool of scoring threads, and the micro-batcher that
scores concurrent single-user requests together as one matrix product.

Threads, not processes: implicit's top-k, numpy's BLAS and faiss release the GIL while they
compute, so scoring runs beside the event loop, which keeps answering /healthz, /readyz and
the cheap parts of every request while a large request is scored.

Overload: work waits in a bounded queue, `max_queued` users counted across all requests
(waiting or being scored). Past it a request is refused at once with 503 and Retry-After
instead of waiting: a queue without a bound turns a burst into timeouts for every client, and
another pod behind the Service may have room now.

Batching adapts to load. A request that finds no batch scoring is scored at once, together with
whatever arrived in the same turn of the event loop: at low load nothing waits for a window.
While a batch is scoring, new requests gather; a free thread takes them `window_seconds` later,
or as soon as `max_batch` are waiting; while every thread is busy they wait for the first to
finish, which takes all that gathered. Batches grow with load, up to `max_batch`.
"""

from __future__ import annotations

import asyncio
import functools
import os
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar

from .scorer import Query, Ranked, ServingModel

if TYPE_CHECKING:
    from prometheus_client import Gauge, Histogram

T = TypeVar("T")


def default_threads() -> int:
    """One CPU for the event loop, the others for scoring threads (at least one).

    Scoring one batch is memory-bound: on two CPUs a second scoring thread competes with the
    first for memory bandwidth and with the event loop for CPU, and serves fewer requests
    per second at a higher latency than one thread does."""
    return max(1, len(os.sched_getaffinity(0)) - 1)


@dataclass(frozen=True)
class ScoringConfig:
    threads: int = field(default_factory=default_threads)
    batching: bool = True
    window_seconds: float = 0.001
    max_batch: int = 64
    max_queued: int = 2048

    def __post_init__(self) -> None:
        if self.threads < 1 or self.max_batch < 1 or self.max_queued < 1:
            raise ValueError("threads, max_batch and max_queued must be at least 1")
        if not 0 <= self.window_seconds <= 1:
            raise ValueError("the batch window is 0 to 1 second")


class OverloadedError(Exception):
    """More scoring work is waiting than the queue holds."""

    retry_after_seconds = 1


@dataclass
class _Waiting:
    model: ServingModel
    query: Query
    future: asyncio.Future[Ranked]
    admitted: float  # loop time


def _one_thread_each() -> None:
    """Parallelism comes from the scoring threads: a library that also spreads one call over
    every core only oversubscribes them. OpenMP's setting is per thread; OpenBLAS's is global
    (the server's other BLAS work is small)."""
    import faiss
    from threadpoolctl import threadpool_limits

    threadpool_limits(1)
    faiss.omp_set_num_threads(1)


def _score(batch: list[_Waiting]) -> list[Ranked | Exception]:
    """One micro-batch, grouped by model version; a failing query fails alone."""
    out: list[Ranked | Exception] = [Exception("not scored")] * len(batch)
    by_model: dict[int, list[int]] = {}
    for position, waiting in enumerate(batch):
        by_model.setdefault(id(waiting.model), []).append(position)
    for positions in by_model.values():
        model = batch[positions[0]].model
        try:
            ranked = model.recommend_many([batch[p].query for p in positions])
        except Exception:
            for p in positions:
                try:
                    out[p] = model.recommend_many([batch[p].query])[0]
                except Exception as exc:
                    out[p] = exc
            continue
        for p, r in zip(positions, ranked, strict=True):
            out[p] = r
    return out


class Scoring:
    """The one way handlers score: `recommend` (batched) and `run` (any scoring call).

    Everything here but the worker functions runs on the event loop, so the counters need no
    lock.
    """

    def __init__(
        self,
        config: ScoringConfig | None = None,
        queued_gauge: Gauge | None = None,
        batch_histogram: Histogram | None = None,
        wait_histogram: Histogram | None = None,
        batch_seconds: Histogram | None = None,
    ) -> None:
        self.config = config or ScoringConfig()
        self._gauge = queued_gauge
        self._batch_histogram = batch_histogram
        self._wait_histogram = wait_histogram
        self._batch_seconds = batch_seconds
        self._executor = ThreadPoolExecutor(
            self.config.threads, thread_name_prefix="scoring", initializer=_one_thread_each
        )
        self.queued = 0  # users admitted and not answered yet
        self._waiting: list[_Waiting] = []
        self._batches = 0  # micro-batches being scored
        self._timer: asyncio.TimerHandle | None = None
        self._flush_due = False

    async def start(self) -> None:
        """Start every thread now, not on the first requests (each imports and sets up)."""
        barrier = threading.Barrier(self.config.threads)
        loop = asyncio.get_running_loop()
        await asyncio.gather(
            *(
                loop.run_in_executor(self._executor, barrier.wait, 30.0)
                for _ in range(self.config.threads)
            )
        )

    def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)

    def _admit(self, weight: int) -> None:
        if not weight:
            return
        # A request larger than the whole queue still runs on an idle server: the per-request
        # work bound, not this queue, limits its size.
        if self.queued and self.queued + weight > self.config.max_queued:
            raise OverloadedError(
                f"{self.queued} users are waiting to be scored (at most "
                f"{self.config.max_queued}); retry in {OverloadedError.retry_after_seconds} s"
            )
        self._count(weight)

    def _count(self, change: int) -> None:
        self.queued += change
        if self._gauge is not None:
            self._gauge.set(self.queued)

    async def run(self, fn: Callable[..., T], *args: Any, weight: int = 1) -> T:
        """`fn(*args)` on a scoring thread; `weight` is the number of users it scores (0: work
        of a request already admitted, see `reserve`)."""
        with self.reserve(weight):
            loop = asyncio.get_running_loop()
            return await loop.run_in_executor(self._executor, functools.partial(fn, *args))

    @contextmanager
    def reserve(self, weight: int) -> Iterator[None]:
        """Admit `weight` users of work for the block, or refuse them (OverloadedError)."""
        self._admit(weight)
        try:
            yield
        finally:
            self._count(-weight)

    async def recommend(self, model: ServingModel, query: Query) -> Ranked:
        if not self.config.batching:
            return (await self.run(model.recommend_many, [query]))[0]
        self._admit(1)
        try:
            loop = asyncio.get_running_loop()
            waiting = _Waiting(model, query, loop.create_future(), loop.time())
            self._waiting.append(waiting)
            self._schedule(loop)
            return await waiting.future
        finally:
            self._count(-1)

    def _schedule(self, loop: asyncio.AbstractEventLoop) -> None:
        if self._batches >= self.config.threads:
            return  # the first batch to finish takes what is waiting
        if self._batches == 0 or len(self._waiting) >= self.config.max_batch:
            if not self._flush_due:
                # Soon, not now: requests read in this same turn of the loop join the batch.
                self._flush_due = True
                loop.call_soon(self._flush, loop)
        elif self._timer is None:
            self._timer = loop.call_later(self.config.window_seconds, self._flush, loop)

    def _flush(self, loop: asyncio.AbstractEventLoop) -> None:
        self._flush_due = False
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        size = self.config.max_batch
        while self._waiting and self._batches < self.config.threads:
            batch, self._waiting = self._waiting[:size], self._waiting[size:]
            self._batches += 1
            started = loop.time()
            if self._batch_histogram is not None:
                self._batch_histogram.observe(len(batch))
            if self._wait_histogram is not None:
                for waiting in batch:
                    self._wait_histogram.observe(started - waiting.admitted)
            future = loop.run_in_executor(self._executor, _score, batch)
            future.add_done_callback(functools.partial(self._done, loop, batch, started))

    def _done(
        self,
        loop: asyncio.AbstractEventLoop,
        batch: list[_Waiting],
        started: float,
        future: asyncio.Future[list[Ranked | Exception]],
    ) -> None:
        self._batches -= 1
        if self._batch_seconds is not None:
            self._batch_seconds.observe(loop.time() - started)
        failed = RuntimeError("scoring was cancelled") if future.cancelled() else future.exception()
        results: list[Ranked | BaseException] = (
            [failed] * len(batch) if failed is not None else list(future.result())
        )
        for waiting, result in zip(batch, results, strict=True):
            if waiting.future.done():  # its request went away
                continue
            if isinstance(result, BaseException):
                waiting.future.set_exception(result)
            else:
                waiting.future.set_result(result)
        if self._waiting:
            self._flush(loop)
