"""ONNX Runtime sessions, loaded lazily and cached, and the providers each device really runs.

A model is loaded on first use and the session reused by later jobs. Two jobs asking for
the same session at once load it once (a lock per key).

Devices. `cpu` sessions use the CPU provider. `cuda:N` sessions ask for
`CUDAExecutionProvider` (device N, memory arena grown only by what is requested, capped by
`models.gpu_mem_limit_mb`) with the CPU provider after it. ONNX Runtime does not fail when
the CUDA provider cannot load (missing CUDA/cuDNN libraries, no GPU visible): it logs an
error and runs on CPU. So after creating a session we read `session.get_providers()`; when
CUDA was asked for and is not the active provider the device is recorded as degraded, with
the reason, /diag/backends shows it, and a warning is logged. When a backend on that device
has `require_gpu`, the session is refused instead (and `ahv serve` refuses to start, from
`probe`): never a silent CPU run.

A stream per slot. The CUDA provider gives each InferenceSession one compute stream, which
concurrent `run()` calls on that session share (onnxruntime#12049). The `user_compute_stream`
provider option (Python since 1.17, onnxruntime#19229) takes the address of a cudaStream_t
created outside ONNX Runtime (cupy, torch, or ctypes on libcudart) and is fixed when the
session is created, not per run (onnxruntime#23319), so it would still mean one session per
stream, and it would add a CUDA binding we do not otherwise need. Instead, on a `cuda:N`
device sessions are keyed per (model, device, slot): each slot gets its own session, hence its
own stream and its own arena, and a slot runs one job at a time, so its runs are serialized on
its stream while other slots run on theirs. The price is the weights held once per slot.
`gpu_mem_limit_mb` caps each of those sessions' arena. On `cpu` one session per model is
shared by all slots (concurrent `run()` is safe and there is no stream).

Batching. `batched(model, device, ...)` wraps a session in a BatchedSession
(ahv.models.batching), one per (model, device), so the runs of concurrent jobs on one model are
gathered into batched runs. On `cpu` it wraps the shared session of `get`. On CUDA it has a
session of its own (slot key `batched`), shared by every slot of the device: a slot's session
serves one job at a time, so no other job could join its batches. A BatchedSession makes one
run at a time, so that one session's stream serves them all.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import importlib.util
import io
import logging
import os
import re
import threading
from collections import Counter
from collections.abc import Callable, Collection
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import onnxruntime as ort

from ahv.errors import AhvError
from ahv.models.batching import BatchedSession
from ahv.models.registry import ModelRegistry

log = logging.getLogger(__name__)

CPU = "CPUExecutionProvider"
CUDA = "CUDAExecutionProvider"
_CUDA_DEVICE = re.compile(r"^cuda:(\d+)$")
_BATCHED_SLOT = "batched"  # the slot key of the session behind a CUDA device's batched runs

# (kind, model name or file path, device, slot); slot is None on cpu.
_Key = tuple[str, str, str, str | None]


def cuda_index(device: str) -> int | None:
    match = _CUDA_DEVICE.match(device)
    return int(match.group(1)) if match else None


def providers_for(device: str, *, gpu_mem_limit_mb: int = 0) -> list[Any]:
    """What InferenceSession is asked for on `device`."""
    index = cuda_index(device)
    if index is None:
        return [CPU]
    options = {"device_id": str(index), "arena_extend_strategy": "kSameAsRequested"}
    if gpu_mem_limit_mb:
        options["gpu_mem_limit"] = str(gpu_mem_limit_mb * 1024 * 1024)
    return [(CUDA, options), CPU]


def degraded_reason(device: str, active: list[str]) -> str | None:
    """Why a session on `device` does not run where it was asked to, or None if it does."""
    if cuda_index(device) is None or active[:1] == [CUDA]:
        return None
    return (
        f"{CUDA} was asked for on {device} but ONNX Runtime runs on "
        f"{active or 'nothing'}: {_cuda_failure()}"
    )


def _cuda_failure() -> str:
    if CUDA not in ort.get_available_providers():
        return "this onnxruntime build has no CUDA provider (install onnxruntime-gpu)"
    library = Path(ort.__file__).parent / "capi" / "libonnxruntime_providers_cuda.so"
    if library.exists():
        try:
            ctypes.CDLL(str(library))
        except OSError as exc:
            # e.g. "libcublasLt.so.13: cannot open shared object file"
            return f"the CUDA provider library does not load ({exc}); onnxruntime-gpu " + (
                "needs the CUDA and cuDNN versions it was built for"
            )
    return "the CUDA provider did not start (no usable GPU? check CUDA_VISIBLE_DEVICES)"


def identity_model() -> bytes:
    """A one-node Identity graph, to learn a device's providers without a model file."""
    from onnx import TensorProto, helper

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])
    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "probe", [x], [y])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8  # old enough for any onnxruntime we support
    return bytes(model.SerializeToString())


def _session_options() -> ort.SessionOptions:
    options = ort.SessionOptions()
    # Warnings only about the graph itself (e.g. inswapper's unused `emap` initializer, which
    # ahv reads separately) are noise in the server log; errors such as a CUDA library that
    # fails to load are still logged.
    options.log_severity_level = 3
    return options


@functools.cache
def preload_cuda_libraries() -> None:
    """Load the CUDA and cuDNN libraries of NVIDIA's pip wheels (`pip install '.[gpu]'`),
    once: onnxruntime-gpu finds them in site-packages only after this call, else the CUDA
    provider fails to load and the device runs on the CPU. Libraries installed system-wide
    need nothing; where none are found the probe reports the device degraded."""
    preload = getattr(ort, "preload_dlls", None)
    if preload is None or importlib.util.find_spec("nvidia") is None:
        return
    said = io.StringIO()  # onnxruntime prints its own warnings; they go to the log instead
    try:
        with contextlib.redirect_stdout(said):
            preload(directory="")
    except OSError as exc:
        log.warning("preloading NVIDIA's CUDA libraries failed: %s", exc)
    if said.getvalue().strip():
        log.warning("preloading NVIDIA's CUDA libraries: %s", said.getvalue().strip())


def probe_device(device: str, *, gpu_mem_limit_mb: int = 0) -> tuple[list[str], str | None]:
    """(providers actually active, degraded reason or None) for a trivial session on
    `device`, created from an in-memory model at start-up."""
    if device.startswith("cuda"):
        preload_cuda_libraries()
    try:
        session = ort.InferenceSession(
            identity_model(), providers=providers_for(device, gpu_mem_limit_mb=gpu_mem_limit_mb)
        )
    except Exception as exc:  # onnxruntime raises its own exception types
        return [], f"no ONNX Runtime session can be created on {device}: {exc}"
    active = list(session.get_providers())
    return active, degraded_reason(device, active)


@dataclass
class _Device:
    providers: list[str] = field(default_factory=list)
    degraded: str | None = None


@dataclass
class _Shared:
    registry: ModelRegistry
    gpu_mem_limit_mb: int
    require_gpu: frozenset[str]
    lock: threading.Lock = field(default_factory=threading.Lock)
    sessions: dict[_Key, ort.InferenceSession] = field(default_factory=dict)
    loading: dict[_Key, threading.Lock] = field(default_factory=dict)
    batched: dict[_Key, BatchedSession] = field(default_factory=dict)
    devices: dict[str, _Device] = field(default_factory=dict)


class SessionCache:
    """Sessions per (model, device) (per slot too on CUDA, see the module doc); thread-safe.

    `for_slot(slot)` gives a view that shares the cache and fills in `slot`: the scheduler
    hands each running job the view of its slot, so tasks just call `get(model, device)`.
    """

    def __init__(
        self,
        registry: ModelRegistry,
        *,
        gpu_mem_limit_mb: int = 0,
        require_gpu: Collection[str] = (),
        _shared: _Shared | None = None,
        _slot: str | None = None,
    ) -> None:
        self._shared = _shared or _Shared(registry, gpu_mem_limit_mb, frozenset(require_gpu))
        self.slot = _slot

    @property
    def registry(self) -> ModelRegistry:
        return self._shared.registry

    def for_slot(self, slot: str) -> SessionCache:
        return SessionCache(self._shared.registry, _shared=self._shared, _slot=slot)

    # -- sessions ----------------------------------------------------------------------------

    def get(self, model: str, device: str, *, slot: str | None = None) -> ort.InferenceSession:
        """The session of model `model` (a name in [models.files]) on `device`, loaded on
        first use. A missing or corrupt file raises AhvError `model_unavailable`."""
        key = self._key("model", model, device, slot)
        # Checked on every use, not only at load (cheap: hashes are cached per size and
        # mtime), so jobs and /diag/backends agree when a file goes missing or changes.
        self.registry.require(model)
        found = self._cached(key)
        if found is not None:
            return found
        return self._load(key, model, lambda: self.registry.require(model), device)

    def batched(
        self, model: str, device: str, *, max_batch: int, max_wait_ms: float
    ) -> BatchedSession:
        """The session of `model` on `device` wrapped so that concurrent runs from several
        jobs are batched (see ahv.models.batching); one wrapper per (model, device), shared by
        every slot (see the module doc)."""
        session = self.get(model, device, slot=_BATCHED_SLOT)
        key = self._key("model", model, device, _BATCHED_SLOT)
        with self._shared.lock:
            wrapper = self._shared.batched.get(key)
            if wrapper is None or wrapper.session is not session:
                wrapper = BatchedSession(session, max_batch=max_batch, max_wait_ms=max_wait_ms)
                self._shared.batched[key] = wrapper
            else:  # [batching] may have been reloaded
                wrapper.configure(max_batch=max_batch, max_wait_ms=max_wait_ms)
            return wrapper

    def batching(self, device: str) -> dict[str, dict[str, Any]]:
        """{model: {batches, items, mean_batch}} of the batched sessions on `device` (summed
        over slots on CUDA)."""
        with self._shared.lock:
            wrappers = [(k[1], w) for k, w in self._shared.batched.items() if k[2] == device]
        totals: dict[str, dict[str, Any]] = {}
        for model, wrapper in sorted(wrappers, key=lambda pair: pair[0]):
            stats = wrapper.stats()
            row = totals.setdefault(model, {"batches": 0, "items": 0, "mean_batch": 0.0})
            row["batches"] += stats["batches"]
            row["items"] += stats["items"]
            row["mean_batch"] = round(row["items"] / row["batches"], 3) if row["batches"] else 0.0
        return totals

    def batch_sizes(self) -> dict[str, Counter[int]]:
        """{model: {batch size: runs}} over every device and slot (for /metrics)."""
        with self._shared.lock:
            wrappers = [(k[1], w) for k, w in self._shared.batched.items()]
        totals: dict[str, Counter[int]] = {}
        for model, wrapper in wrappers:
            totals.setdefault(model, Counter()).update(wrapper.sizes())
        return totals

    def get_file(self, path: Path, device: str, *, slot: str | None = None) -> ort.InferenceSession:
        """Like `get`, for a model file that is not in [models.files] (built by ahv itself)."""
        key = self._key("file", str(Path(path).resolve()), device, slot)

        def exists() -> Path:
            if not Path(path).is_file():
                raise AhvError("model_unavailable", f"model file {path} is missing", status=503)
            return Path(path)

        found = self._cached(key)
        if found is not None:
            return found
        return self._load(key, Path(path).name, exists, device)

    def _key(self, kind: str, ident: str, device: str, slot: str | None) -> _Key:
        per_slot = slot if slot is not None else self.slot
        return (kind, ident, device, per_slot if cuda_index(device) is not None else None)

    def _cached(self, key: _Key) -> ort.InferenceSession | None:
        with self._shared.lock:
            return self._shared.sessions.get(key)

    def _load(
        self, key: _Key, label: str, locate: Callable[[], Path], device: str
    ) -> ort.InferenceSession:
        shared = self._shared
        with shared.lock:
            loading = shared.loading.setdefault(key, threading.Lock())
        with loading:
            found = self._cached(key)
            if found is not None:
                return found
            path: Path = locate()
            try:
                session = ort.InferenceSession(
                    str(path),
                    sess_options=_session_options(),
                    providers=providers_for(device, gpu_mem_limit_mb=shared.gpu_mem_limit_mb),
                )
            except Exception as exc:  # onnxruntime raises its own exception types
                hint = f" (run `ahv models fetch {label}`)" if key[0] == "model" else ""
                raise AhvError(
                    "model_unavailable",
                    f"model {label!r}: cannot load {path} on {device}: {exc}{hint}",
                    status=503,
                ) from exc
            active = list(session.get_providers())
            reason = degraded_reason(device, active)
            self._record(device, active, reason)
            if reason is not None:
                log.warning(
                    "model %s on %s runs on %s, not CUDA: %s", label, device, active, reason
                )
                if device in shared.require_gpu:
                    raise AhvError("gpu_unavailable", f"model {label!r}: {reason}", status=503)
            log.info("model %s loaded on %s (%s)", label, device, ", ".join(active))
            with shared.lock:
                shared.sessions[key] = session
            return session

    # -- devices -------------------------------------------------------------------------------

    def probe(self, device: str) -> tuple[list[str], str | None]:
        """Learn (and record) the providers active on `device`; see `probe_device`."""
        active, reason = probe_device(device, gpu_mem_limit_mb=self._shared.gpu_mem_limit_mb)
        self._record(device, active, reason)
        if reason is not None:
            log.warning("device %s is degraded (its sessions run on CPU): %s", device, reason)
        return active, reason

    def _record(self, device: str, active: list[str], reason: str | None) -> None:
        with self._shared.lock:
            state = self._shared.devices.setdefault(device, _Device())
            state.providers = active
            # Once a fallback is seen on a device it stays reported.
            state.degraded = state.degraded or reason

    def providers(self, device: str) -> list[str]:
        with self._shared.lock:
            state = self._shared.devices.get(device)
            return list(state.providers) if state else []

    def degraded(self, device: str) -> str | None:
        with self._shared.lock:
            state = self._shared.devices.get(device)
            return state.degraded if state else None

    def loaded(self, device: str) -> list[str]:
        """Names of the models with a session on `device` (files by their file name)."""
        with self._shared.lock:
            keys = [k for k in self._shared.sessions if k[2] == device]
        return sorted(
            {os.path.basename(ident) if kind == "file" else ident for kind, ident, *_ in keys}
        )

    def status(self) -> dict[str, dict[str, Any]]:
        """Per device seen: providers active, degraded reason or None, models loaded."""
        with self._shared.lock:
            devices = set(self._shared.devices) | {k[2] for k in self._shared.sessions}
        return {
            device: {
                "providers": self.providers(device),
                "degraded": self.degraded(device),
                "models_loaded": self.loaded(device),
                "batching": self.batching(device),
            }
            for device in sorted(devices)
        }

    def clear(self) -> None:
        """Drop every session (their memory is freed once no job holds them)."""
        with self._shared.lock:
            self._shared.sessions.clear()
            self._shared.loading.clear()
            self._shared.batched.clear()
