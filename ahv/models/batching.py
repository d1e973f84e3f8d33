"""Cross-job batching: concurrent `run()` calls on one model gathered into one session run.

`BatchedSession` wraps an ONNX Runtime session whose inputs and outputs all have a dynamic
first (batch) axis. Jobs call `run(output_names, feeds)` from their worker threads as they
would on the session. Calls whose feeds have the same names, dtypes and shapes except axis 0
(and ask for the same outputs) can share a run.

Continuous batching, as inference servers do it (Triton's dynamic batcher with one model
instance): at most one session run of the wrapper is in flight. Calls that arrive while it
runs queue up, and when it ends the next run takes every queued call of the oldest call's
group, up to `max_batch` items, at once. So under load batches fill by themselves while the
model is busy, and no time is spent waiting; only a call that finds the model idle and too
few others queued waits, at most `max_wait_ms` after the oldest call arrived, for company.
One run at a time is also what the hardware wants: one ONNX Runtime CPU run already uses
every core (intra-op threads), and a GPU runs one batch better than several small ones side
by side. The run is made by one of the waiting callers' threads (the first to find the model
idle), not by a thread of the wrapper's own, so there is nothing to start or stop. An
exception in a run is raised in every caller of that batch.

A model whose batch axis is fixed (or any input or output without one) passes straight
through: `run` calls the session as it is, concurrently. Every session run made through the
wrapper is counted (`stats()`: batches, items, mean batch size; `sizes()` for /metrics).
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

_Array = npt.NDArray[Any]
_GroupKey = tuple[tuple[str, ...] | None, tuple[tuple[str, tuple[int, ...], str], ...]]


def dynamic_batch(session: Any) -> bool:
    """Whether every input and output of `session` has a dynamic first axis."""
    args = [*session.get_inputs(), *session.get_outputs()]
    for arg in args:
        shape = list(arg.shape or [])
        if not shape or (isinstance(shape[0], int) and shape[0] > 0):
            return False
    return bool(args)


class _Call:
    """One caller's feeds, waiting in the queue; `outputs` or `error` once its batch ran."""

    def __init__(self, key: _GroupKey, feeds: dict[str, _Array], size: int) -> None:
        self.key = key
        self.output_names = list(key[0]) if key[0] is not None else None
        self.feeds = feeds
        self.size = size
        self.arrived_s = time.monotonic()
        self.done = False
        self.outputs: list[Any] = []
        self.error: BaseException | None = None


class BatchedSession:
    """A session whose concurrent runs are batched; thread-safe. See the module doc."""

    def __init__(self, session: Any, *, max_batch: int = 8, max_wait_ms: float = 5.0) -> None:
        self.session = session
        self.configure(max_batch=max_batch, max_wait_ms=max_wait_ms)
        self.batching = dynamic_batch(session)
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)  # a call queued or a run ended
        self._queue: list[_Call] = []
        self._busy = False  # a caller is gathering or running a batch
        self._batches = 0
        self._items = 0
        self._sizes: Counter[int] = Counter()  # runs per batch size, for /metrics

    def configure(self, *, max_batch: int, max_wait_ms: float) -> None:
        """Set the batch bound and the wait; calls already queued see the new values."""
        self.max_batch = max(1, int(max_batch))
        self.max_wait_s = max(0.0, float(max_wait_ms)) / 1000.0

    def __getattr__(self, name: str) -> Any:
        # get_inputs, get_outputs, get_modelmeta, get_providers, ...
        return getattr(self.session, name)

    def stats(self) -> dict[str, Any]:
        with self._lock:
            batches, items = self._batches, self._items
        mean = round(items / batches, 3) if batches else 0.0
        return {"batches": batches, "items": items, "mean_batch": mean}

    def sizes(self) -> Counter[int]:
        """How many session runs had each batch size."""
        with self._lock:
            return Counter(self._sizes)

    def _count(self, items: int) -> None:
        with self._lock:
            self._count_locked(items)

    def _count_locked(self, items: int) -> None:
        self._batches += 1
        self._items += items
        self._sizes[items] += 1

    def run(
        self, output_names: Sequence[str] | None, feeds: Mapping[str, Any], *args: Any
    ) -> list[Any]:
        arrays = {name: np.asarray(value) for name, value in feeds.items()}
        sizes = {value.shape[0] if value.ndim else -1 for value in arrays.values()}
        if not self.batching or args or len(sizes) != 1 or min(sizes) < 1:
            self._count(1)
            return list(self.session.run(output_names, feeds, *args))
        key: _GroupKey = (
            tuple(output_names) if output_names is not None else None,
            tuple(sorted((name, tuple(a.shape[1:]), a.dtype.str) for name, a in arrays.items())),
        )
        call = _Call(key, arrays, sizes.pop())
        with self._changed:
            self._queue.append(call)
            self._changed.notify_all()
            while not call.done:
                if self._busy:
                    self._changed.wait()
                    continue
                self._busy = True
                try:
                    batch = self._gather_locked()
                    self._changed.release()
                    try:
                        outputs, error = self._run_batch(batch)
                    finally:
                        self._changed.acquire()
                    self._hand_out_locked(batch, outputs, error)
                finally:
                    self._busy = False
                    self._changed.notify_all()
        if call.error is not None:
            raise call.error
        return call.outputs

    def _take_locked(self) -> list[_Call]:
        """The oldest queued call and the later ones of its group, up to max_batch items (a
        call of max_batch items or more runs alone)."""
        head = self._queue[0]
        batch, count = [head], head.size
        for call in self._queue[1:]:
            if call.key == head.key and count + call.size <= self.max_batch:
                batch.append(call)
                count += call.size
        return batch

    def _gather_locked(self) -> list[_Call]:
        """Wait (the lock released meanwhile) until the batch is full or the oldest call has
        waited max_wait; then take the batch out of the queue."""
        batch = self._take_locked()
        deadline_s = batch[0].arrived_s + self.max_wait_s
        while sum(call.size for call in batch) < self.max_batch:
            left_s = deadline_s - time.monotonic()
            if left_s <= 0:
                break
            self._changed.wait(left_s)
            batch = self._take_locked()
        taken = {id(call) for call in batch}
        self._queue = [call for call in self._queue if id(call) not in taken]
        self._count_locked(sum(call.size for call in batch))
        return batch

    def _run_batch(self, batch: list[_Call]) -> tuple[list[Any], BaseException | None]:
        count = sum(call.size for call in batch)
        try:
            if len(batch) == 1:
                joined = batch[0].feeds
            else:
                joined = {
                    name: np.concatenate([call.feeds[name] for call in batch], axis=0)
                    for name in batch[0].feeds
                }
            outputs = list(self.session.run(batch[0].output_names, joined))
            for output in outputs:
                if np.ndim(output) == 0 or np.shape(output)[0] != count:
                    raise ValueError(
                        f"batched run of {count} items gave an output of shape "
                        f"{np.shape(output)}: it cannot be split per item"
                    )
            return outputs, None
        except BaseException as exc:  # raised in every caller of the batch
            return [], exc

    @staticmethod
    def _hand_out_locked(
        batch: list[_Call], outputs: list[Any], error: BaseException | None
    ) -> None:
        start = 0
        for call in batch:
            call.error = error
            if error is None:
                call.outputs = [output[start : start + call.size] for output in outputs]
            start += call.size
            call.done = True
