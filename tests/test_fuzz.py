"""Property-based fuzz (hypothesis) of every registered task's payload, through the real
`ahv serve` (a subprocess) and real HTTP: `POST /v1/jobs` and each task's blocking endpoint,
which decode the payload and run the task's submit-time `validate`.

Inputs: random JSON of every type, sizes and nesting; unicode of every plane (NUL, RTL,
emoji, combining marks, lone surrogate escapes); huge arrays and strings; negative, huge
(past 64 bits) and NaN-like numbers (`NaN`, `Infinity`, `1e999` tokens); deep nesting; raw
bytes. Mostly they mutate a valid payload of the task, field by field, so that the checks
past the first one are reached too.

The property: never a 5xx, and every 4xx is `{"ok": false, "error": {"code", "message"}}`
(a 429 also carries Retry-After); an accepted job answers its document; the server stays up.

Nothing runs: the server's only slot is held by a long `sleep` job, so accepted jobs wait in
the queue; the blocking endpoints and the cloud-provider tasks (which have backends of their
own) are called with a key whose own queue is full (`max_queued`), so a payload that passes
every check gets a 429 instead of a held connection or a run.

Examples per test: AHV_FUZZ_EXAMPLES (default 40; the whole module then takes ~20-30 s).
"""

from __future__ import annotations

import http.client
import json
import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ahv.config import Config
from ahv.tasks import load_registry
from tests.conftest import KEY_A, base_config, merge
from tests.process import AhvProcess

EXAMPLES = int(os.environ.get("AHV_FUZZ_EXAMPLES", "40"))
FUZZ = settings(
    max_examples=EXAMPLES,
    deadline=None,
    database=None,
    suppress_health_check=[
        HealthCheck.too_slow,
        HealthCheck.data_too_large,
        HealthCheck.function_scoped_fixture,
        HealthCheck.large_base_example,
    ],
)
KEY_FULL = "key-fuzz-queue-full"
PUBLIC = "http://8.8.8.8/x.png"  # a public literal: passes the guard without DNS

CONFIG = merge(
    base_config(Path("unused")),
    {
        "server": {"plugins": ["tests.plugin_tasks"], "shutdown_grace_s": 0},
        "backends": [{"name": "cpu", "slots": 1, "tasks": []}],
        # Named so remove_background and scan_objects are available and their payload checks
        # (and remove_object's by prompt) are reached.
        "images": {"matting": "matting"},
        "objects": {"detector": "detector"},
        # Set up, so their tasks are available; nothing listens at the base_url, and no job
        # of theirs is accepted (see PROVIDER_TASKS).
        "providers": {
            name: {"api_key": "test-key-0123456789", "base_url": "http://127.0.0.1:9"}
            for name in ("google", "openai")
        },
    },
)
REGISTRY = load_registry(msgspec.convert(CONFIG, Config))
TASKS = sorted(REGISTRY)
# Tasks that run on a cloud provider's own backend, not on the held slot: they are fuzzed
# with the full-queue key, so a payload that passes every check gets a 429, not a run.
PROVIDER_TASKS = {name for name, spec in REGISTRY.items() if spec.provider is not None}
LOCAL_TASKS = sorted(set(TASKS) - PROVIDER_TASKS)
DIRECT = sorted(
    {(spec.direct_path, name) for name, spec in REGISTRY.items() if spec.direct_path}
    | ({("/faceswap", "faceswap")} if "faceswap" in REGISTRY else set())
)

# A payload of each task that passes every submit-time check; fuzzing mutates it.
VALID: dict[str, dict[str, Any]] = {
    "upscale": {"image_url": PUBLIC, "scale": 2, "sharpen": 1.0},
    "remove_background": {"image_url": PUBLIC, "bg_color": "#102030"},
    "scan_objects": {"image_url": PUBLIC, "classes": ["cat"], "min_score": 0.5, "draw": True},
    "remove_object": {"image_url": PUBLIC, "prompt": "cat, dog", "dilate_px": 3},
    "faceswap": {"target_url": PUBLIC, "source_url": PUBLIC, "target_faces_index": [0, 1]},
    "faceswap_multi": {
        "target_url": PUBLIC,
        "source_urls": [PUBLIC, PUBLIC],
        "swap_faces_index": [0, 0],
        "target_faces_index": [1, 0],
    },
    "faceswap_video": {"target_url": PUBLIC, "source_url": PUBLIC, "start_s": 0.5, "end_s": 2},
    "sleep": {"seconds": 0.01, "steps": 2},
    "gg_image": {"prompt": "a red fox", "number_of_images": 2, "aspect_ratio": "16:9"},
    "cx_image": {"prompt": "a red fox", "image_urls": [PUBLIC], "mask_url": PUBLIC, "n": 1},
    "ahv_image": {"prompt": "a red fox", "image_urls": [PUBLIC], "aspect_ratio": "1:1"},
    "ahv_video": {"prompt": "a red fox", "image_url": PUBLIC, "duration_s": 8},
}


def test_every_task_has_a_valid_payload_to_mutate() -> None:
    assert set(TASKS) <= set(VALID), set(TASKS) - set(VALID)


# -- the server ------------------------------------------------------------------------------


class Client:
    """A keep-alive HTTP/1.1 client of the fuzz server (hypothesis runs synchronous tests)."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        self.holders: set[str] = set()  # the jobs that hold the slot

    def get(self, path: str) -> tuple[int, Any]:
        self.conn.request("GET", path, headers={"X-API-Key": KEY_A})
        response = self.conn.getresponse()
        return response.status, json.loads(response.read())

    def post(self, path: str, body: bytes, key: str = KEY_A) -> tuple[int, Any, Any]:
        headers = {"X-API-Key": key, "Content-Type": "application/json"}
        try:
            self.conn.request("POST", path, body=body, headers=headers)
            response = self.conn.getresponse()
        except (ConnectionError, http.client.HTTPException):
            # The server closed a connection (it does after a 413): one more try, fresh.
            self.conn.close()
            self.conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
            self.conn.request("POST", path, body=body, headers=headers)
            response = self.conn.getresponse()
        raw = response.read()
        if response.will_close:
            self.conn.close()
        return response.status, raw, response


@pytest.fixture(scope="module")
def client(tmp_path_factory: Any) -> Iterator[Client]:
    workdir = Path(tmp_path_factory.mktemp("fuzz"))
    config = merge(
        CONFIG,
        {
            "server": {"data_dir": str(workdir / "data")},
            "backends": [{"name": "cpu", "slots": 1, "tasks": LOCAL_TASKS}],
            "queue": {"task_timeout_s": 3600},
        },
    )
    config["keys"] = [
        *config["keys"],
        {"name": "fuzz-full", "key": KEY_FULL, "webhook_secret": "x" * 16, "max_queued": 1},
    ]
    server = AhvProcess(config, workdir)
    url = server.start()
    fuzz = Client(int(url.rsplit(":", 1)[1]))
    # Hold the only slot (60 s per job, enough of them for the examples asked for), then
    # fill the queue of KEY_FULL: nothing the fuzz sends will run.
    hold = {"task": "sleep", "payload": {"seconds": 60, "steps": 60}, "priority": 9}
    for key in [KEY_A] * (2 + EXAMPLES // 100) + [KEY_FULL]:
        status, raw, _ = fuzz.post("/v1/jobs", json.dumps(hold).encode(), key=key)
        assert status == 202, raw
        fuzz.holders.add(json.loads(raw)["job_id"])
    yield fuzz
    server.stop()


def check_answer(status: int, raw: bytes, response: Any, where: Any) -> None:
    assert status < 500, (where, status, raw[:300])
    if status in (200, 202):
        doc = json.loads(raw)
        assert doc["status"] == "queued" and re.fullmatch(r"[0-9a-f]{32}", doc["job_id"]), where
        return
    assert 400 <= status < 500, (where, status)
    assert response.getheader("Content-Type", "").startswith("application/json"), where
    body = json.loads(raw)
    assert set(body) == {"ok", "error"} and body["ok"] is False, (where, body)
    error = body["error"]
    assert set(error) == {"code", "message"}, (where, body)
    assert re.fullmatch(r"[a-z][a-z0-9_]*", error["code"]), (where, body)
    assert isinstance(error["message"], str) and error["message"].strip(), (where, body)
    assert "Traceback" not in error["message"], (where, body)
    if status == 429:
        assert (response.getheader("Retry-After") or "").isdigit(), where


# -- strategies ------------------------------------------------------------------------------

EDGE_NUMBERS = st.sampled_from(
    [0, -0.0, -1, 1, 0.5, -(2**31), 2**31, -(2**63), 2**63 - 1, 2**63, 2**64, -(2**64),
     10**30, -(10**30), 2**200, 1e308, -1e308, 5e-324, 1.7976931348623157e308, 1e-7]
)  # fmt: skip
TEXT = st.text(max_size=40) | st.sampled_from(
    ["", " ", "\x00", "\u202e\u0041", "😀" * 50, "e\u0301", "\ufeff", "%00", "../../etc/passwd",
     "http://", "http://[::1", "http://a b/", "http://xn--/", "http://例え.テスト/x.png",
     "http://8.8.8.8:99999/", "http://8.8.8.8:0/", "HTTP://8.8.8.8/X.PNG", "javascript:alert(1)",
     "http://\x00/", "http://8.8.8.8/\x00", "http://8.8.8.8/" + "a" * 5000, "#zzzzzz", "999,0,0",
     "١,٢,٣", "#FFFFFF", "cat,,dog", " , ", "NaN", "Infinity"]
)  # fmt: skip
HUGE_STRING = st.builds(
    lambda c, n: c * n, st.sampled_from(["a", "é", "😀", "\x00"]), st.integers(1000, 300_000)
)
HUGE_ARRAY = st.builds(
    lambda item, n: [item] * n,
    st.sampled_from([0, -1, 2**40, "x", None, [], {}]),
    st.integers(100, 60_000),
)
SCALARS = (
    st.none() | st.booleans() | st.integers() | EDGE_NUMBERS | TEXT
    | st.floats(allow_nan=False, allow_infinity=False)
)  # fmt: skip
JSON = st.recursive(
    SCALARS,
    lambda children: st.lists(children, max_size=6) | st.dictionaries(TEXT, children, max_size=6),
    max_leaves=25,
)
WILD = JSON | HUGE_STRING | HUGE_ARRAY


@st.composite
def mutated_payload(draw: st.DrawFn, task: str) -> Any:
    """A valid payload of `task` with some fields replaced, dropped or added; or any JSON."""
    if draw(st.integers(0, 9)) == 0:
        return draw(WILD)
    payload = dict(VALID[task])
    fields = list(REGISTRY[task].payload_type.__struct_fields__)
    for name in draw(st.lists(st.sampled_from(fields), max_size=len(fields), unique=True)):
        action = draw(st.integers(0, 9))
        if action == 0:
            payload.pop(name, None)
        elif action <= 2 and name.endswith("_urls"):
            payload[name] = draw(st.lists(TEXT, max_size=20) | HUGE_ARRAY)
        else:
            payload[name] = draw(WILD)
    if draw(st.integers(0, 9)) == 0:
        payload[draw(TEXT)] = draw(JSON)
    return payload


def encode(value: Any) -> bytes:
    # The stdlib writes non-ASCII as \\u escapes (lone surrogates included) and keeps key order.
    return json.dumps(value).encode()


# -- the tests -------------------------------------------------------------------------------


@pytest.mark.parametrize("task", TASKS)
def test_submit_never_errs_on_any_payload(client: Client, task: str) -> None:
    @FUZZ
    @given(payload=mutated_payload(task))
    def run(payload: Any) -> None:
        body = encode({"task": task, "payload": payload})
        key = KEY_FULL if task in PROVIDER_TASKS else KEY_A
        status, raw, response = client.post("/v1/jobs", body, key=key)
        check_answer(status, raw, response, where=(task, body[:300]))
        assert key == KEY_A or status != 202, "a provider job was accepted"

    run()


@pytest.mark.parametrize(("path", "task"), DIRECT)
def test_blocking_endpoints_never_err_on_any_payload(client: Client, path: str, task: str) -> None:
    @FUZZ
    @given(payload=mutated_payload(task))
    def run(payload: Any) -> None:
        body = encode(payload)
        status, raw, response = client.post(path, body, key=KEY_FULL)
        check_answer(status, raw, response, where=(path, body[:300]))
        assert status != 200, "a payload passed every check and was run"

    run()


SUBMIT_FIELDS = st.fixed_dictionaries(
    {},
    optional={
        "task": st.sampled_from(LOCAL_TASKS) | TEXT | JSON,
        "payload": JSON,
        "webhook_url": TEXT | JSON,
        "priority": EDGE_NUMBERS | st.integers(-3, 12) | JSON,
        "webhook_events": st.lists(st.sampled_from(["job.finished", "job.started"]) | TEXT) | JSON,
        "extra": JSON,
    },
)


@FUZZ
@given(request=SUBMIT_FIELDS | WILD)
def test_the_submit_envelope_never_errs(client: Client, request: Any) -> None:
    body = encode(request)
    check_answer(*client.post("/v1/jobs", body), where=body[:300])


def nested(depth: int, kind: str) -> bytes:
    opening, closing = (b"[", b"]") if kind == "array" else (b'{"a":', b"}")
    return opening * depth + b"1" + closing * depth


TOKENS = [b"NaN", b"-NaN", b"Infinity", b"-Infinity", b"1e999", b"-1e999", b"1e-999",
          b"0x10", b"01", b"+1", b"1.", b".5", b"1_000", b"true1", b"nul",
          b'"\\ud800"', b'"\\udfff\\ud800"', b'"\\u0000"', b'"\xff\xfe"', b'"\xc3\x28"',
          b'"' + b"\\" * 3 + b'"', b"[1,]", b"{,}", b"/* c */ 1", b"[1 2]"]  # fmt: skip


@st.composite
def raw_bodies(draw: st.DrawFn) -> bytes:
    """Bytes that are not quite JSON, or JSON that stdlib would never write."""
    task = draw(st.sampled_from(LOCAL_TASKS)).encode()
    choice = draw(st.integers(0, 5))
    if choice == 0:
        return draw(st.binary(max_size=3000))
    if choice == 1:
        depth = draw(st.integers(1, 300_000))
        return (
            b'{"task":"'
            + task
            + b'","payload":{"x":'
            + nested(depth, draw(st.sampled_from(["array", "object"])))
            + b"}}"
        )
    if choice == 2:  # a token where the task expects a number, a string or a list
        field = draw(
            st.sampled_from(sorted(REGISTRY[task.decode()].payload_type.__struct_fields__))
        )
        token = draw(st.sampled_from(TOKENS))
        return b'{"task":"' + task + b'","payload":{"' + field.encode() + b'":' + token + b"}}"
    if choice == 3:  # duplicate keys, BOM, trailing garbage
        return draw(st.sampled_from([
            b'{"task":"sleep","task":"upscale","payload":{}}',
            b'\xef\xbb\xbf{"task":"sleep","payload":{}}',
            b'{"task":"sleep","payload":{}} trailing',
            b'{"task":"sleep","payload":{"seconds":1,"seconds":"x"}}',
            b'{"task":"sleep","payload":null}',
            b'{"task":"sleep","payload":"{}"}',
            b"",
            b"null",
            b"\x00" * 100,
        ]))  # fmt: skip
    if choice == 4:  # a huge valid body just under and over server.max_body_bytes
        size = draw(st.sampled_from([1_000_000, 1_048_000, 1_048_577, 2_000_000]))
        return b'{"task":"sleep","payload":{"x":"' + b"a" * size + b'"}}'
    prefix = encode({"task": task.decode(), "payload": VALID[task.decode()]})
    cut = draw(st.integers(0, len(prefix)))
    return prefix[:cut]  # truncated JSON


@FUZZ
@given(body=raw_bodies())
def test_raw_bodies_never_err(client: Client, body: bytes) -> None:
    check_answer(*client.post("/v1/jobs", body), where=body[:300])
    check_answer(*client.post("/upscale", body, key=KEY_FULL), where=body[:300])


def test_the_server_is_still_up_and_ran_nothing(client: Client) -> None:
    status, stats = client.get("/stats")
    assert status == 200 and stats["counts"].get("running") == 1
    for state in ("running", "succeeded", "failed", "canceled", "rejected"):
        status, listing = client.get(f"/v1/jobs?status={state}&limit=200")
        assert status == 200
        ran = {job["job_id"] for job in listing["jobs"]}
        assert ran <= client.holders, (state, ran - client.holders)
