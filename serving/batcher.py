"""Dynamic batching: requests that arrive together run as one model call.

Each request's images join a bounded queue; one worker takes the first waiting request,
then keeps taking more until `max_batch` images are gathered or `max_delay` has passed
since the first, runs the model once on the stack, and hands every request its own rows. A
full queue refuses at once (`QueueFull`), never an unbounded wait.

Where the model runs: a call expected to take less than `INLINE_S` (from the cost per image
of the calls so far) runs on the event loop itself, since handing it to a thread and back
costs more than the call (ONNX Runtime: ~0.2 µs per image); a longer one runs in a thread,
so the event loop keeps accepting meanwhile.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from fmnist_deploy.errors import FmnistError

Model = Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]]  # uint8 (N,28,28) -> logits, probabilities

INLINE_S = 0.0005  # longest model call run on the event loop instead of in a thread


class QueueFull(FmnistError):
    """The queue holds `max_queue` requests already: answer 503. None of the kinds (the request, the model,
    the device are all fine): a refusal for now, so it derives from the root itself."""


@dataclass
class _Pending:
    images: np.ndarray
    future: asyncio.Future
    enqueued: float


@dataclass(frozen=True)
class BatchStats:
    """What one model call was: its size in images, the requests' time in the queue, and its three steps
    (stacking the requests' images, the model call, handing each request its rows)."""

    images: int
    requests: int
    queue_seconds: list[float]
    compute_seconds: float
    input_seconds: float = 0.0
    output_seconds: float = 0.0


@dataclass(frozen=True)
class Answer:
    """One request's rows of a model call, and its time in the queue and in the model."""

    logits: np.ndarray  # (n, 10) float32
    probabilities: np.ndarray  # (n, 10) float32
    queue_seconds: float
    compute_seconds: float


class Batcher:
    """Gathers concurrent requests into model calls of at most `max_batch` images."""

    def __init__(
        self,
        model: Model,
        *,
        max_batch: int = 256,
        max_delay_s: float = 0.002,
        max_queue: int = 1024,
        on_batch: Callable[[BatchStats], None] | None = None,
        arriving: Callable[[], int] | None = None,
    ) -> None:
        self.model = model
        self.max_batch = max_batch
        self.max_delay_s = max_delay_s
        self.queue: asyncio.Queue[_Pending] = asyncio.Queue(maxsize=max_queue)
        self.on_batch = on_batch
        # requests accepted but not queued yet (still being read or parsed): worth waiting for; when there
        # are none, a lone request runs at once instead of sitting out max_delay for company that cannot come
        self.arriving = arriving or (lambda: 1)
        self._worker: asyncio.Task | None = None
        self._carry: _Pending | None = None  # a request too large to join the last batch: it leads the next
        self._busy = False
        self._per_image_s = 0.0  # moving average of the model's time per image; 0 until the first call

    def start(self) -> None:
        """Start the worker on the running event loop."""
        self._worker = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        """Answer everything already queued, then stop the worker."""
        while not self.queue.empty() or self._carry is not None or self._busy:
            await asyncio.sleep(0.001)
        if self._worker is not None:
            self._worker.cancel()

    async def infer(self, images: np.ndarray) -> Answer:
        """This request's logits and probabilities, computed in a batch with whatever else is waiting."""
        future = asyncio.get_running_loop().create_future()
        try:
            self.queue.put_nowait(_Pending(images, future, time.perf_counter()))
        except asyncio.QueueFull:
            raise QueueFull(f"{self.queue.maxsize} requests are waiting already") from None
        return await future

    async def _gather(self) -> list[_Pending]:
        first = self._carry if self._carry is not None else await self.queue.get()
        self._carry = None
        self._busy = True  # from here until its results are handed out, this batch is in flight
        batch, count = [first], len(first.images)
        deadline = time.perf_counter() + self.max_delay_s
        while count < self.max_batch:
            if self.queue.empty():
                remaining = deadline - time.perf_counter()
                if remaining <= 0 or self.arriving() == 0:
                    break
                try:
                    item = await asyncio.wait_for(self.queue.get(), remaining)
                except TimeoutError:
                    break
            else:
                item = self.queue.get_nowait()
            if count + len(item.images) > self.max_batch:
                self._carry = item
                break
            batch.append(item)
            count += len(item.images)
        return batch

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            batch = await self._gather()
            try:
                await self._compute(loop, batch)
            finally:
                self._busy = False

    async def _compute(self, loop: asyncio.AbstractEventLoop, group: list[_Pending]) -> None:
        started = time.perf_counter()
        images = group[0].images if len(group) == 1 else np.concatenate([p.images for p in group])
        stacked = time.perf_counter()
        try:
            if self._per_image_s * len(images) < INLINE_S:
                logits, probs = self._timed(images)
            else:
                logits, probs = await loop.run_in_executor(None, self._timed, images)
        except Exception as exc:  # noqa: BLE001 - every waiting request gets the failure, none hangs
            for pending in group:
                if not pending.future.done():
                    pending.future.set_exception(exc)
            return
        computed = time.perf_counter()
        compute = computed - stacked
        start = 0
        for pending in group:
            stop = start + len(pending.images)
            if not pending.future.done():
                answer = Answer(logits[start:stop], probs[start:stop], started - pending.enqueued, compute)
                pending.future.set_result(answer)
            start = stop
        if self.on_batch is not None:
            queued = [started - p.enqueued for p in group]
            handed = time.perf_counter() - computed
            self.on_batch(BatchStats(len(images), len(group), queued, compute, stacked - started, handed))

    def _timed(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The model call, its cost per image folded into the moving average that picks where the next runs."""
        started = time.perf_counter()
        outputs = self.model(images)
        per_image = (time.perf_counter() - started) / max(1, len(images))
        self._per_image_s = per_image if self._per_image_s == 0.0 else 0.8 * self._per_image_s + 0.2 * per_image
        return outputs
