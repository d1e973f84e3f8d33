"""[providers] in ahv.toml: keys and key files, strict checks, unconfigured providers
(`model_unavailable`), and provider backends that never take a cpu/cuda slot."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import msgspec
import pytest

from ahv.config import Config, ConfigError, parse_config
from ahv.errors import StartupError
from ahv.orchestrator import Orchestrator
from ahv.tasks import load_registry
from tests.conftest import StartServer, base_config, merge
from tests.fake_providers import FakeGoogle

KEY = "AIzaSyFILE-key-8d2e4b6a1c"
PROVIDER_TASKS = {
    "gg_image": ("google", {"prompt": "x"}),
    "ahv_video": ("google", {"prompt": "x"}),
    "ahv_image": ("google", {"prompt": "x"}),
    "cx_image": ("openai", {"prompt": "x"}),
}


@pytest.fixture
async def google(aiohttp_server: Any) -> FakeGoogle:
    return await FakeGoogle.start(aiohttp_server, KEY)


async def test_unconfigured_provider_tasks_are_model_unavailable(
    start_server: StartServer,
) -> None:
    api = await start_server()
    for task, (provider, payload) in PROVIDER_TASKS.items():
        status, body, _ = await api.call(
            "POST", "/v1/jobs", json={"task": task, "payload": payload}
        )
        assert status == 422, body
        assert body["error"]["code"] == "model_unavailable"
        assert f"[providers.{provider}]" in body["error"]["message"]
        assert task in body["error"]["message"]
    for path in ("/gg/image", "/cx/image", "/ahv/image", "/ahv/video"):
        status, body, _ = await api.call("POST", path, json={"prompt": "x"})
        assert status == 422 and body["error"]["code"] == "model_unavailable", path

    status, diag, _ = await api.call("GET", "/diag/backends")
    assert [row["kind"] for row in diag["backends"]] == ["cpu"]  # no provider backend
    missing = {row["provider"]: row for row in diag["unavailable_providers"]}
    assert missing["google"]["configured"] is False
    assert set(missing["google"]["unavailable_tasks"]) == {"ahv_image", "ahv_video", "gg_image"}
    assert "[providers.google]" in missing["google"]["unavailable_tasks"]["gg_image"]
    assert set(missing["openai"]["unavailable_tasks"]) == {"cx_image"}


async def test_key_file_and_provider_backend_in_diag(
    start_server: StartServer, google: FakeGoogle, tmp_path: Path
) -> None:
    key_file = tmp_path / "google.key"
    key_file.write_text(f"{KEY}\n")
    api = await start_server(
        providers={
            "google": {"api_key_file": str(key_file), "base_url": google.url, "concurrency": 3}
        }
    )
    status, diag, _ = await api.call("GET", "/diag/backends")
    assert status == 200
    rows = {row["name"]: row for row in diag["backends"]}
    row = rows["google"]
    assert (row["kind"], row["device"], row["slots"]) == ("provider", "provider:google", 3)
    assert row["tasks"] == ["ahv_image", "ahv_video", "gg_image"]
    assert row["configured"] is True and row["base_url"] == google.url
    assert "gg_image" not in rows["cpu"]["tasks"]
    assert [row["provider"] for row in diag["unavailable_providers"]] == ["openai"]
    assert KEY not in str(diag)

    job = await api.submit("gg_image", {"prompt": "x"})
    doc = await api.wait(job["job_id"])
    assert doc["status"] == "succeeded", doc["error"]
    assert google.of("predict")[0].headers["x-goog-api-key"] == KEY  # the file's first line


async def test_provider_jobs_never_take_a_cpu_slot(
    start_server: StartServer, google: FakeGoogle
) -> None:
    google.delay_s = 0.6
    api = await start_server(
        providers={"google": {"api_key": KEY, "base_url": google.url, "concurrency": 1}}
    )
    first = await api.submit("gg_image", {"prompt": "one"})
    second = await api.submit("gg_image", {"prompt": "two"})
    sleeper = await api.submit("sleep", {"seconds": 0.3})
    await google.wait_calls("predict", 1)
    _, diag, _ = await api.call("GET", "/diag/backends")
    rows = {row["name"]: row for row in diag["backends"]}
    assert rows["google"]["busy"] == 1 and rows["google"]["queued"] >= 1
    assert first["job_id"] in rows["google"]["running_jobs"]
    assert not {first["job_id"], second["job_id"]} & set(rows["cpu"]["running_jobs"])
    assert (await api.job(second["job_id"]))["status"] == "queued"  # concurrency 1
    # The cpu backend still runs its own work meanwhile.
    assert (await api.wait(sleeper["job_id"]))["status"] == "succeeded"
    assert (await api.job(first["job_id"]))["status"] == "running"
    docs = [await api.wait(job["job_id"]) for job in (first, second)]
    assert [d["status"] for d in docs] == ["succeeded", "succeeded"]
    calls = google.of("predict")
    assert calls[1].at - calls[0].at >= 0.5  # one at a time


async def test_a_missing_key_file_refuses_the_start(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere.key"
    raw = merge(
        base_config(tmp_path / "data"),
        {"providers": {"google": {"api_key_file": str(missing)}}},
    )
    orchestrator = Orchestrator(msgspec.convert(raw, Config))
    with pytest.raises(StartupError) as caught:
        await orchestrator.start()
    assert "providers.google.api_key_file" in str(caught.value)
    assert str(missing) in str(caught.value)
    assert not (tmp_path / "data" / "ahv.sqlite3").exists()  # nothing opened

    empty = tmp_path / "empty.key"
    empty.write_text("\n")
    raw["providers"]["google"]["api_key_file"] = str(empty)
    with pytest.raises(StartupError, match="is empty"):
        await Orchestrator(msgspec.convert(raw, Config)).start()


@pytest.mark.parametrize(
    ("text", "names"),
    [
        ('[providers.google]\napi_key = "s3cret-value"\napi_key_file = "k"\n',
         ["providers.google", "not both"]),
        ('[providers.openai]\nbase_url = "ftp://x"\n', ["providers.openai.base_url"]),
        ('[providers.google]\nveo_model = "../v1/files"\n', ["providers.google.veo_model"]),
        ('[providers.google]\npoll_interval_s = 10\npoll_max_interval_s = 5\n',
         ["providers.google.poll_max_interval_s"]),
        ('[providers]\nahv_image_provider = "azure"\n', ["providers.ahv_image_provider"]),
        ('[providers.azure]\napi_key = "k"\n', ["providers", "azure"]),
        ('[providers.google]\napi_kee = "k"\n', ["providers.google", "api_kee"]),
        ('[providers.openai]\nconcurrency = 0\n', ["providers.openai.concurrency"]),
        ('[[backends]]\nname = "google"\n', ["backends", "google"]),
        # Credentials in the URL: OpenAI's Bearer key cannot travel next to them (aiohttp
        # refuses both at once), and the URL is shown in /diag/backends.
        ('[providers.openai]\napi_key = "k"\nbase_url = "https://me:s3cret-value@proxy.example"\n',
         ["providers.openai.base_url", "user name or password"]),
        ('[providers.google]\nbase_url = "http://s3cret-value@10.0.0.2:8080/gemini"\n',
         ["providers.google.base_url"]),
        ('[providers.openai]\napi_key = "sk-proj s3cret-value"\n', ["providers.openai.api_key"]),
        ('[providers.google]\napi_key = "AIza\\u00e9s3cret-value"\n', ["providers.google.api_key"]),
    ],
)  # fmt: skip
def test_bad_provider_config_names_the_key(text: str, names: list[str]) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_config(text)
    for name in names:
        assert name in str(caught.value)
    assert "s3cret-value" not in str(caught.value)


def test_provider_tasks_cannot_be_given_to_a_cpu_backend() -> None:
    config = parse_config('[[backends]]\nname = "cpu"\ntasks = ["upscale", "gg_image"]\n')
    with pytest.raises(ConfigError) as caught:
        load_registry(config)
    assert "backends[0].tasks" in str(caught.value) and "gg_image" in str(caught.value)
    assert "[providers.google]" in str(caught.value)


async def test_key_files_as_editors_write_them(
    start_server: StartServer, google: FakeGoogle, tmp_path: Path
) -> None:
    # A byte-order mark and a CRLF line end (Windows editors): the key is still the key.
    key_file = tmp_path / "google.key"
    key_file.write_bytes(b"\xef\xbb\xbf" + KEY.encode() + b"\r\n")
    api = await start_server(
        providers={"google": {"api_key_file": str(key_file), "base_url": google.url}}
    )
    doc = await api.wait((await api.submit("gg_image", {"prompt": "x"}))["job_id"])
    assert doc["status"] == "succeeded", doc["error"]
    assert google.of("predict")[0].headers["x-goog-api-key"] == KEY


@pytest.mark.parametrize("key", ["sk-proj s3cret", "sk-proj-\u00e9s3cret", "sk-\x7fs3cret"])
async def test_a_key_file_a_header_cannot_carry_refuses_the_start(tmp_path: Path, key: str) -> None:
    key_file = tmp_path / "openai.key"
    key_file.write_text(f"{key}\n", encoding="utf-8")
    raw = merge(
        base_config(tmp_path / "data"),
        {"providers": {"openai": {"api_key_file": str(key_file)}}},
    )
    with pytest.raises(StartupError) as caught:
        await Orchestrator(msgspec.convert(raw, Config)).start()
    message = str(caught.value)
    assert "providers.openai.api_key_file" in message and str(key_file) in message
    assert "s3cret" not in message
