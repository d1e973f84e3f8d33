"""Cross-job batching: concurrent `run()` calls on one model gathered into one session run.

`BatchedSession` wraps an ONNX Runtime session whose inputs and outputs all have a dynamic
first (batch) axis. Jobs call `run(output_names, feeds)` from their worker threads as they
would on the session. Calls whose feeds have the same names, dtypes and shapes except axis 0
(and ask for the same outputs) join one open batch; the first caller (the leader) waits at
most `max_wait_ms` for others, or until `max_batch` items are in, then concatenates the feeds
along axis 0, runs the session once and hands each caller its slice of every output. An
exception in that run is raised in every caller of the batch. Followers block on an event:
no polling.

A model whose batch axis is fixed (or any input or output without one) passes straight
through: `run` calls the session as it is. Every session run made through the wrapper is
counted (`stats()`: batches, items, mean batch size).
"""

from __future__ import annotations

import threading
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


class _Batch:
    def __init__(self) -> None:
        self.feeds: list[dict[str, _Array]] = []
        self.sizes: list[int] = []
        self.count = 0
        self.full = threading.Event()
        self.done = threading.Event()
        self.outputs: list[Any] = []
        self.error: BaseException | None = None


class BatchedSession:
    """A session whose concurrent runs are batched; thread-safe. See the module doc."""

    def __init__(self, session: Any, *, max_batch: int = 8, max_wait_ms: float = 5.0) -> None:
        self.session = session
        self.max_batch = max(1, int(max_batch))
        self.max_wait_s = max(0.0, float(max_wait_ms)) / 1000.0
        self.batching = dynamic_batch(session)
        self._lock = threading.Lock()
        self._open: dict[_GroupKey, _Batch] = {}
        self._batches = 0
        self._items = 0
        self._sizes: Counter[int] = Counter()  # runs per batch size, for /metrics

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
        size = sizes.pop()
        if size >= self.max_batch:
            self._count(size)
            return list(self.session.run(output_names, arrays))
        key: _GroupKey = (
            tuple(output_names) if output_names is not None else None,
            tuple(sorted((name, tuple(a.shape[1:]), a.dtype.str) for name, a in arrays.items())),
        )
        with self._lock:
            batch = self._open.get(key)
            if batch is not None and batch.count + size > self.max_batch:
                del self._open[key]  # it cannot take this call: let it run now
                batch.full.set()
                batch = None
            leader = batch is None
            if batch is None:
                batch = self._open[key] = _Batch()
            index = len(batch.feeds)
            batch.feeds.append(arrays)
            batch.sizes.append(size)
            batch.count += size
            if batch.count >= self.max_batch:
                self._open.pop(key, None)
                batch.full.set()
        if leader:
            if self.max_wait_s > 0:
                batch.full.wait(self.max_wait_s)
            with self._lock:
                if self._open.get(key) is batch:
                    del self._open[key]  # closed: nobody joins from here on
            self._run_batch(output_names, batch)
        else:
            batch.done.wait()
        if batch.error is not None:
            raise batch.error
        start = sum(batch.sizes[:index])
        return [output[start : start + size] for output in batch.outputs]

    def _run_batch(self, output_names: Sequence[str] | None, batch: _Batch) -> None:
        try:
            if len(batch.feeds) == 1:
                joined = batch.feeds[0]
            else:
                joined = {
                    name: np.concatenate([feed[name] for feed in batch.feeds], axis=0)
                    for name in batch.feeds[0]
                }
            self._count(batch.count)
            outputs = list(self.session.run(output_names, joined))
            for output in outputs:
                if np.ndim(output) == 0 or np.shape(output)[0] != batch.count:
                    raise ValueError(
                        f"batched run of {batch.count} items gave an output of shape "
                        f"{np.shape(output)}: it cannot be split per item"
                    )
            batch.outputs = outputs
        except BaseException as exc:  # raised in every caller of the batch
            batch.error = exc
        finally:
            batch.done.set()
