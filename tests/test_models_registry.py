"""Model files (registry, statuses, `ahv models list|fetch`), the ONNX Runtime session cache,
and devices whose CUDA provider does not load (degraded, or a refused start with
require_gpu). Real files, real tiny ONNX models, real HTTP servers; nothing mocked."""

from __future__ import annotations

import functools
import hashlib
import http.server
import logging
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgspec
import numpy as np
import pytest
from aiohttp import web

from ahv.config import ConfigError, ModelFileConfig, ModelsConfig, parse_config
from ahv.errors import AhvError
from ahv.models.fetch import fetch_model, text_progress
from ahv.models.registry import ModelRegistry
from ahv.models.sessions import SessionCache, probe_device
from tests.conftest import KEY_ADMIN, StartServer, base_config
from tests.model_tasks import tiny_model

ROOT = Path(__file__).resolve().parent.parent
CPU = ["CPUExecutionProvider"]


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@functools.cache
def cuda_really_works() -> bool:
    return probe_device("cuda:0")[1] is None


def skip_if_cuda_works() -> None:
    if cuda_really_works():
        pytest.skip("CUDA works on this machine: nothing falls back to CPU")


def names_in(folder: Path) -> list[str]:
    return sorted(os.listdir(folder))


def registry_of(models_dir: Path, **files: ModelFileConfig) -> ModelRegistry:
    return ModelRegistry(ModelsConfig(dir=str(models_dir), files=files))


# -- config --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("entry", "key"),
    [
        ('file = "a.onnx"\nsha256 = "abc"', "models.files.det.sha256"),
        (f'file = "a.onnx"\nsha256 = "{"A" * 64}"', "models.files.det.sha256"),
        ('file = "a.onnx"\nurl = "ftp://example.com/a.onnx"', "models.files.det.url"),
        ('file = "../a.onnx"', "models.files.det.file"),
        ('file = "/etc/a.onnx"', "models.files.det.file"),
        ('sha256 = ""', "models.files.det"),
        ('file = "a.onnx"\nsize = 3', "models.files.det"),
    ],
)
def test_bad_model_entries_name_the_key(entry: str, key: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_config(f"[models.files.det]\n{entry}\n")
    assert key in str(caught.value)


def test_model_config_keys() -> None:
    config = parse_config(
        "[models]\ngpu_mem_limit_mb = 512\n[models.files.det]\n"
        f'file = "det.onnx"\nsha256 = "{"a" * 64}"\nurl = "https://example.com/det.onnx"\n'
        '[[backends]]\nname = "g"\ndevice = "cuda:1"\nrequire_gpu = true\n'
    )
    assert config.models.gpu_mem_limit_mb == 512
    assert config.models.files["det"].file == "det.onnx"
    assert config.backends[0].require_gpu is True
    with pytest.raises(ConfigError, match=r"models\.gpu_mem_limit_mb"):
        parse_config("[models]\ngpu_mem_limit_mb = -1\n")


# -- registry ---------------------------------------------------------------------------------


def test_registry_statuses(tmp_path: Path) -> None:
    data = tiny_model()
    (tmp_path / "good.onnx").write_bytes(data)
    (tmp_path / "bad.onnx").write_bytes(data + b"tampered")
    (tmp_path / "plain.onnx").write_bytes(data)
    registry = registry_of(
        tmp_path,
        good=ModelFileConfig(file="good.onnx", sha256=sha(data)),
        bad=ModelFileConfig(file="bad.onnx", sha256=sha(data)),
        plain=ModelFileConfig(file="plain.onnx"),
        gone=ModelFileConfig(file="gone.onnx", sha256=sha(data)),
    )
    assert registry.names() == ["bad", "gone", "good", "plain"]
    assert registry.path("good") == tmp_path / "good.onnx"
    assert {name: registry.status(name) for name in registry.names()} == {
        "good": "present",
        "bad": "corrupt",
        "plain": "unverified",
        "gone": "missing",
    }
    assert registry.require("good") == tmp_path / "good.onnx"
    assert registry.require("plain") == tmp_path / "plain.onnx"
    with pytest.raises(AhvError) as missing:
        registry.require("gone")
    assert missing.value.code == "model_unavailable" and missing.value.status == 503
    assert str(tmp_path / "gone.onnx") in missing.value.message
    assert "is missing" in missing.value.message
    assert "`ahv models fetch gone`" in missing.value.message
    with pytest.raises(AhvError) as corrupt:
        registry.require("bad")
    assert corrupt.value.code == "model_unavailable"
    assert "sha256 mismatch" in corrupt.value.message
    assert str(tmp_path / "bad.onnx") in corrupt.value.message
    with pytest.raises(AhvError) as unknown:
        registry.require("nope")
    assert unknown.value.code == "model_unavailable"
    assert "not configured in ahv.toml [models.files]" in unknown.value.message
    assert registry.problem("good") is None and "is missing" in (registry.problem("gone") or "")


def test_a_file_is_hashed_once_until_it_changes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import ahv.models.registry as registry_module

    hashed: list[Path] = []
    real = registry_module.sha256_file

    def counting(path: Path) -> str:
        hashed.append(path)
        return real(path)

    monkeypatch.setattr(registry_module, "sha256_file", counting)
    data = tiny_model()
    path = tmp_path / "m.onnx"
    path.write_bytes(data)
    registry = registry_of(tmp_path, m=ModelFileConfig(file="m.onnx", sha256=sha(data)))
    for _ in range(3):
        assert registry.status("m") == "present"
    assert len(hashed) == 1
    path.write_bytes(data + b"x")  # another size (and mtime): hashed again
    assert registry.status("m") == "corrupt"
    assert registry.status("m") == "corrupt"
    assert len(hashed) == 2


# -- fetch ------------------------------------------------------------------------------------

PAYLOAD = os.urandom(3 * 1024 * 1024 + 123)


async def serve_model(request: web.Request) -> web.StreamResponse:
    response = web.StreamResponse(headers={"Content-Length": str(len(PAYLOAD))})
    await response.prepare(request)
    for start in range(0, len(PAYLOAD), 256 * 1024):
        await response.write(PAYLOAD[start : start + 256 * 1024])
    await response.write_eof()
    return response


@pytest.fixture
async def model_url(aiohttp_server: Any) -> str:
    app = web.Application()
    app.router.add_get("/files/model.onnx", serve_model)
    server = await aiohttp_server(app)
    return str(server.make_url("/files/"))


async def test_fetch_writes_the_file_after_checking_it(tmp_path: Path, model_url: str) -> None:
    registry = registry_of(
        tmp_path / "models",
        m=ModelFileConfig(file="m.onnx", sha256=sha(PAYLOAD), url=model_url + "model.onnx"),
    )
    seen: list[tuple[int, int | None]] = []
    path = await fetch_model(registry, "m", progress=lambda done, total: seen.append((done, total)))
    assert path == tmp_path / "models" / "m.onnx"
    assert path.read_bytes() == PAYLOAD
    assert registry.status("m") == "present"
    assert names_in(path.parent) == ["m.onnx"]  # no .part left
    done = [d for d, _ in seen]
    assert len(seen) > 2 and done == sorted(done) and done[-1] == len(PAYLOAD)
    assert all(total == len(PAYLOAD) for _, total in seen)


async def test_fetch_refuses_a_mismatching_file(tmp_path: Path, model_url: str) -> None:
    wrong = sha(b"another file")
    registry = registry_of(
        tmp_path, m=ModelFileConfig(file="m.onnx", sha256=wrong, url=model_url + "model.onnx")
    )
    with pytest.raises(AhvError) as caught:
        await fetch_model(registry, "m", progress=None)
    assert caught.value.code == "model_fetch_failed"
    assert wrong in caught.value.message and sha(PAYLOAD) in caught.value.message
    assert names_in(tmp_path) == []
    # An older file in place is left alone.
    (tmp_path / "m.onnx").write_bytes(b"old")
    with pytest.raises(AhvError):
        await fetch_model(registry, "m", progress=None)
    assert names_in(tmp_path) == ["m.onnx"]
    assert (tmp_path / "m.onnx").read_bytes() == b"old"


async def test_fetch_http_error_and_no_url(tmp_path: Path, model_url: str) -> None:
    registry = registry_of(
        tmp_path,
        m=ModelFileConfig(file="m.onnx", url=model_url + "absent.onnx"),
        local=ModelFileConfig(file="local.onnx"),
    )
    with pytest.raises(AhvError) as caught:
        await fetch_model(registry, "m", progress=None)
    assert "404" in caught.value.message
    assert names_in(tmp_path) == []
    with pytest.raises(AhvError, match="no url"):
        await fetch_model(registry, "local", progress=None)
    with pytest.raises(AhvError, match="not configured"):
        await fetch_model(registry, "other", progress=None)


def test_text_progress_bar() -> None:
    lines: list[str] = []
    show = text_progress(lines.append)
    for done in range(0, 2_000_001, 100_000):
        show(done, 2_000_000)
    assert lines[0].startswith("\r[") and "0%" in lines[0]
    assert lines[-1].endswith("2.0 / 2.0 MB") and "100%" in lines[-1]
    assert len(lines) <= 22


# -- the CLI ------------------------------------------------------------------------------------


@pytest.fixture
def file_server(tmp_path: Path) -> Iterator[str]:
    root = tmp_path / "www"
    root.mkdir()
    (root / "model.onnx").write_bytes(PAYLOAD)

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:
            pass

    handler = functools.partial(Quiet, directory=str(root))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def ahv(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "ahv", *args], capture_output=True, text=True, cwd=ROOT, timeout=60
    )


def test_models_cli_list_and_fetch(tmp_path: Path, file_server: str) -> None:
    models = tmp_path / "models"
    models.mkdir()
    tiny = tiny_model()
    (models / "tiny.onnx").write_bytes(tiny)
    (models / "bad.onnx").write_bytes(b"not this")
    url = file_server + "/model.onnx"
    config = {
        "models": {
            "dir": str(models),
            "files": {
                "tiny": {"file": "tiny.onnx", "sha256": sha(tiny)},
                "bad": {"file": "bad.onnx", "sha256": sha(tiny)},
                "raw": {"file": "raw.onnx"},
                "big": {"file": "big.onnx", "sha256": sha(PAYLOAD), "url": url},
                "wrong": {"file": "wrong.onnx", "sha256": sha(tiny), "url": url},
                "gone": {"file": "gone.onnx", "url": file_server + "/nothing.onnx"},
            },
        }
    }
    path = tmp_path / "ahv.toml"
    path.write_bytes(msgspec.toml.encode(config))

    listed = ahv("models", "list", "--config", str(path))
    assert listed.returncode == 0, listed.stderr
    rows = {line.split()[0]: line.split() for line in listed.stdout.splitlines()[1:]}
    assert listed.stdout.splitlines()[0].split() == ["name", "file", "status", "size"]
    assert rows["tiny"][1:3] == [str(models / "tiny.onnx"), "present"]
    assert rows["bad"][2] == "corrupt"
    assert rows["raw"][2:] == ["missing", "-"]
    assert rows["big"][2] == "missing"

    fetched = ahv("models", "fetch", "big", "--config", str(path))
    assert fetched.returncode == 0, fetched.stderr
    assert (models / "big.onnx").read_bytes() == PAYLOAD
    assert "100%" in fetched.stderr and "3.1 / 3.1 MB" in fetched.stderr
    assert "big" in fetched.stdout and "present" in fetched.stdout
    listed = ahv("models", "list", "--config", str(path))
    assert "present" in next(line for line in listed.stdout.splitlines() if line.startswith("big"))

    wrong = ahv("models", "fetch", "wrong", "--config", str(path))
    assert wrong.returncode == 2
    assert "sha256 mismatch" in wrong.stderr and "Traceback" not in wrong.stderr
    gone = ahv("models", "fetch", "gone", "--config", str(path))
    assert gone.returncode == 2 and "404" in gone.stderr
    unknown = ahv("models", "fetch", "nope", "--config", str(path))
    assert unknown.returncode == 2 and "not configured" in unknown.stderr
    assert names_in(models) == ["bad.onnx", "big.onnx", "tiny.onnx"]


# -- sessions ---------------------------------------------------------------------------------


@pytest.fixture
def tiny_registry(tmp_path: Path) -> ModelRegistry:
    data = tiny_model()
    (tmp_path / "tiny.onnx").write_bytes(data)
    (tmp_path / "junk.onnx").write_bytes(b"not an onnx model")
    return registry_of(
        tmp_path,
        tiny=ModelFileConfig(file="tiny.onnx", sha256=sha(data)),
        junk=ModelFileConfig(file="junk.onnx"),
        gone=ModelFileConfig(file="gone.onnx"),
    )


def test_sessions_are_cached_and_loaded_once(
    tiny_registry: ModelRegistry, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="ahv.models.sessions")
    cache = SessionCache(tiny_registry, gpu_mem_limit_mb=0)
    barrier = threading.Barrier(8)
    got: list[Any] = []

    def ask() -> None:
        barrier.wait()
        got.append(cache.get("tiny", "cpu"))

    threads = [threading.Thread(target=ask) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(got) == 8 and all(session is got[0] for session in got)
    assert cache.get("tiny", "cpu") is got[0]
    # On cpu, all slots share one session.
    assert cache.for_slot("cpu-2").get("tiny", "cpu") is got[0]
    loads = [r for r in caplog.records if r.getMessage().startswith("model tiny loaded")]
    assert len(loads) == 1
    (out,) = got[0].run(None, {"x": np.ones((1, 3), np.float32)})
    assert out.tolist() == [[2.0, 2.0, 2.0]]
    assert got[0].get_providers() == CPU
    assert cache.status() == {
        "cpu": {"providers": CPU, "degraded": None, "models_loaded": ["tiny"], "batching": {}}
    }


def test_unusable_models_fail_with_model_unavailable(tiny_registry: ModelRegistry) -> None:
    cache = SessionCache(tiny_registry)
    with pytest.raises(AhvError) as missing:
        cache.get("gone", "cpu")
    assert missing.value.code == "model_unavailable"
    assert "gone.onnx" in missing.value.message and "ahv models fetch gone" in missing.value.message
    with pytest.raises(AhvError) as junk:
        cache.get("junk", "cpu")
    assert junk.value.code == "model_unavailable" and "cannot load" in junk.value.message
    assert cache.loaded("cpu") == []
    # A file ahv builds itself, outside [models.files].
    session = cache.get_file(tiny_registry.path("tiny"), "cpu")
    assert cache.get_file(tiny_registry.path("tiny"), "cpu") is session
    assert cache.loaded("cpu") == ["tiny.onnx"]


def test_probe_cpu() -> None:
    assert probe_device("cpu") == (CPU, None)


def test_cuda_that_runs_on_cpu_is_degraded(
    tiny_registry: ModelRegistry, caplog: pytest.LogCaptureFixture
) -> None:
    skip_if_cuda_works()
    providers, reason = probe_device("cuda:0")
    assert providers == CPU
    assert reason is not None and "CUDAExecutionProvider" in reason and "cuda:0" in reason
    cache = SessionCache(tiny_registry, gpu_mem_limit_mb=256)
    session = cache.get("tiny", "cuda:0")  # runs, on CPU, and says so
    (out,) = session.run(None, {"x": np.ones((1, 3), np.float32)})
    assert out.tolist() == [[2.0, 2.0, 2.0]]
    state = cache.status()["cuda:0"]
    assert state["providers"] == CPU and state["models_loaded"] == ["tiny"]
    assert "CUDAExecutionProvider" in state["degraded"]
    warning = next(r for r in caplog.records if r.levelno == logging.WARNING)
    assert "tiny" in warning.getMessage() and "cuda:0" in warning.getMessage()
    # On CUDA, each slot has its own session (its own stream); one slot reuses its own.
    first = cache.for_slot("gpu-1").get("tiny", "cuda:0")
    second = cache.for_slot("gpu-2").get("tiny", "cuda:0")
    assert first is not second and cache.for_slot("gpu-1").get("tiny", "cuda:0") is first
    # Batched runs have one wrapper per device, shared by every slot (a slot's own session
    # serves one job at a time, so no other job could join its batches), on a session of its own.
    wrapper = cache.for_slot("gpu-1").batched("tiny", "cuda:0", max_batch=8, max_wait_ms=5)
    again = cache.for_slot("gpu-2").batched("tiny", "cuda:0", max_batch=4, max_wait_ms=1)
    assert again is wrapper and wrapper.session not in (first, second)
    assert wrapper.max_batch == 4  # a reloaded [batching] applies to the live wrapper
    # With require_gpu, the session is refused rather than run on CPU.
    strict = SessionCache(tiny_registry, require_gpu={"cuda:0"})
    with pytest.raises(AhvError) as refused:
        strict.get("tiny", "cuda:0")
    assert refused.value.code == "gpu_unavailable" and strict.loaded("cuda:0") == []


# -- through the server -------------------------------------------------------------------------


async def test_diag_backends_shows_models_and_devices(
    start_server: StartServer, tmp_path: Path
) -> None:
    models = tmp_path / "models"
    backends = [
        {"name": "cpu", "device": "cpu", "slots": 1, "tasks": ["sleep", "onnx_identity"]},
        {"name": "gpu0", "device": "cuda:0", "slots": 2, "tasks": ["onnx_identity"]},
    ]
    api = await start_server(
        server={"plugins": ["tests.plugin_tasks", "tests.model_tasks"]},
        models={"dir": str(models), "files": {"tiny": {"file": "tiny.onnx"}}},
        backends=backends,
    )
    _, diag, _ = await api.call("GET", "/diag/backends", key=KEY_ADMIN)
    cpu, gpu = diag["backends"]
    assert cpu["providers"] == CPU and cpu["degraded"] is None and cpu["models_loaded"] == []
    reason = cpu["unavailable_tasks"]["onnx_identity"]
    assert "tiny.onnx" in reason and "ahv models fetch tiny" in reason
    assert "sleep" not in cpu["unavailable_tasks"]
    assert gpu["unavailable_tasks"] == {"onnx_identity": reason}
    if not cuda_really_works():
        assert gpu["providers"] == CPU
        assert "CUDAExecutionProvider" in gpu["degraded"]

    # Its jobs fail with model_unavailable, naming the file and the fetch command.
    job = await api.submit("onnx_identity", {"value": 1.5})
    done = await api.wait(job["job_id"])
    assert done["status"] == "failed" and done["error"]["code"] == "model_unavailable"
    assert "tiny.onnx" in done["error"]["message"]
    assert "ahv models fetch tiny" in done["error"]["message"]

    models.mkdir()
    (models / "tiny.onnx").write_bytes(tiny_model())
    job = await api.submit("onnx_identity", {"value": 1.5})
    done = await api.wait(job["job_id"])
    assert done["status"] == "succeeded", done
    assert done["result"]["meta"]["values"] == [3.0, 3.0, 3.0]
    assert done["result"]["meta"]["slot"] == done["result"]["meta"]["backend"]
    _, diag, _ = await api.call("GET", "/diag/backends", key=KEY_ADMIN)
    loaded = {b["name"]: b["models_loaded"] for b in diag["backends"]}
    assert ["tiny"] in loaded.values()
    assert all(b["unavailable_tasks"] == {} for b in diag["backends"])


def test_require_gpu_refuses_to_start(tmp_path: Path) -> None:
    config = base_config(tmp_path / "data")
    config["backends"] = [
        {"name": "gpu0", "device": "cuda:0", "slots": 1, "tasks": ["sleep"], "require_gpu": True}
    ]
    path = tmp_path / "ahv.toml"
    path.write_bytes(msgspec.toml.encode(config))
    # No GPU visible, as on a box whose CUDA is broken: the same on GPU machines.
    result = subprocess.run(
        [sys.executable, "-m", "ahv", "serve", "--config", str(path)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=60,
        env={**os.environ, "CUDA_VISIBLE_DEVICES": ""},
    )
    assert result.returncode == 2, result.stderr[-2000:]
    assert "ahv listening" not in result.stdout
    assert "ahv: cannot start: backend 'gpu0' has require_gpu = true" in result.stderr
    assert "cuda:0" in result.stderr and "Traceback" not in result.stderr
