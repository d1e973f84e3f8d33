"""`ahv.toml`, decoded into frozen msgspec Structs.

An unknown key, a wrong type or a bad value stops the start with a ConfigError whose
message names the key (e.g. `backends[0].slots`). Every field here is documented in the
sample `ahv.toml` and in the README; tests/test_config.py fails when one is not.
"""

from __future__ import annotations

import base64
import hashlib
import ipaddress
import re
from pathlib import Path
from typing import Annotated, Literal

import msgspec

from ahv.providers.config import ProvidersConfig, check_providers

PositiveFloat = Annotated[float, msgspec.Meta(gt=0)]
PositiveInt = Annotated[int, msgspec.Meta(ge=1)]
# Durations in seconds have an upper bound: they are added to the current time (a job's
# `expires_at`, a retry's or a webhook's next attempt, a queue rank, a timer), and a time past
# the year 9999 cannot be written (a job document would be a 500); `inf` and `1e999` are valid
# TOML floats too. 100 years is as good as for ever.
MAX_DURATION_S = 100 * 365 * 86400.0
Seconds = Annotated[float, msgspec.Meta(gt=0, le=MAX_DURATION_S)]
NonNegativeSeconds = Annotated[float, msgspec.Meta(ge=0, le=MAX_DURATION_S)]
Priority = Annotated[int, msgspec.Meta(ge=0, le=9)]


class ConfigError(Exception):
    """The config file cannot be used; the message names the key and the problem."""


class _Section(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    pass


class ServerConfig(_Section, frozen=True):
    host: str = "0.0.0.0"
    port: Annotated[int, msgspec.Meta(ge=0, le=65535)] = 2022
    public_url: str = ""
    data_dir: str = "./data"
    max_body_bytes: PositiveInt = 1_048_576
    shutdown_grace_s: NonNegativeSeconds = 30.0
    plugins: list[str] = []
    # Seconds between keepalive comments on an idle event stream (GET /v1/events, ...). At
    # most 50: the dashboard takes a stream silent for 60 s as broken and reconnects.
    sse_keepalive_s: Annotated[float, msgspec.Meta(gt=0, le=50)] = 15.0
    # `Authorization: Bearer <token>` accepted on GET /metrics; empty = admin keys only.
    metrics_token: str = ""
    # Log lines as plain text or one JSON object a line (for log shippers); `ahv serve
    # --log-format` and `--log-level` win over these.
    log_format: Literal["text", "json"] = "text"
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    # Slow clients: the most a client may take to send a request's headers (from connecting,
    # or from the end of its previous response) and, separately, its body.
    read_timeout_s: Seconds = 30.0


class KeyConfig(_Section, frozen=True):
    name: Annotated[str, msgspec.Meta(min_length=1)]
    webhook_secret: Annotated[str, msgspec.Meta(min_length=16)]
    key: str = ""
    key_sha256: str = ""
    role: Literal["client", "admin"] = "client"
    max_queued: Annotated[int, msgspec.Meta(ge=0)] = 0
    rate_per_min: Annotated[int, msgspec.Meta(ge=0)] = 0


class QueueConfig(_Section, frozen=True):
    max_depth: PositiveInt = 10_000
    age_step_s: Seconds = 30.0
    default_priority: Priority = 5
    direct_priority: Priority = 9
    max_attempts: PositiveInt = 3
    retry_base_s: Seconds = 2.0
    retry_max_s: Seconds = 300.0
    task_timeout_s: Seconds = 600.0
    timeouts_s: dict[str, Seconds] = {}
    poll_interval_s: Seconds = 1.0
    keep_durations: PositiveInt = 50
    fsync: bool = False
    cancel_wait_s: Seconds = 10.0


class WebhookConfig(_Section, frozen=True):
    timeout_s: Seconds = 15.0
    max_attempts: PositiveInt = 10
    retry_base_s: Seconds = 5.0
    retry_max_s: Seconds = 3600.0
    retry_after_max_s: Seconds = 3600.0
    concurrency: PositiveInt = 64
    progress_interval_s: Seconds = 1.0
    flush_on_shutdown_s: NonNegativeSeconds = 5.0


class FetchConfig(_Section, frozen=True):
    connect_timeout_s: Seconds = 10.0
    read_timeout_s: Seconds = 30.0
    total_timeout_s: Seconds = 120.0
    max_bytes: PositiveInt = 50 * 1024 * 1024
    max_redirects: Annotated[int, msgspec.Meta(ge=0)] = 5
    allowed_networks: list[str] = []


class LimitsConfig(_Section, frozen=True):
    max_input_pixels: PositiveInt = 50_000_000
    max_output_pixels: PositiveInt = 100_000_000
    max_side: PositiveInt = 16_384
    # New jobs get 503 `disk_full` while the data dir's disk has less free space (0 = off).
    min_free_disk_mb: Annotated[int, msgspec.Meta(ge=0)] = 0


class RetentionTaskConfig(_Section, frozen=True):
    # Per-task overrides of [retention]; a key left out keeps the section's value.
    files_s: NonNegativeSeconds | None = None
    jobs_s: NonNegativeSeconds | None = None


class RetentionConfig(_Section, frozen=True):
    # Result files and finished job records are removed this long after the job ended
    # (0 = kept for ever); a record outlives its files (jobs_s >= files_s).
    files_s: NonNegativeSeconds = 7 * 86400.0
    jobs_s: NonNegativeSeconds = 30 * 86400.0
    sweep_interval_s: Seconds = 60.0
    tasks: dict[str, RetentionTaskConfig] = {}


class ModelFileConfig(_Section, frozen=True):
    # The file's name inside models.dir (as its publisher names it, e.g. "det_10g.onnx").
    file: Annotated[str, msgspec.Meta(min_length=1)]
    # 64 lowercase hex digits; empty = not checked (`ahv models list` says "unverified").
    sha256: str = ""
    # Where `ahv models fetch NAME` downloads it from (http or https); never used at run time.
    url: str = ""


class ModelsConfig(_Section, frozen=True):
    dir: str = "./models"
    # 0 = no limit; else each CUDA session's memory arena is capped at this many MB.
    gpu_mem_limit_mb: Annotated[int, msgspec.Meta(ge=0)] = 0
    files: dict[str, ModelFileConfig] = {}


class BackendConfig(_Section, frozen=True):
    name: Annotated[str, msgspec.Meta(pattern=r"^[A-Za-z0-9_.-]+$")]
    device: str = "cpu"
    slots: PositiveInt = 1
    tasks: list[str] = []
    # A `cuda:N` backend whose sessions would run on CPU stops the start instead of being
    # marked degraded in /diag/backends.
    require_gpu: bool = False


class ObjectsConfig(_Section, frozen=True):
    # scan_objects' YOLO detector (v8/v11 ONNX): a name in [models.files]; empty = unavailable.
    detector: str = ""
    # Class names, used when the model's metadata has none.
    names: list[str] = []
    input_size: Annotated[int, msgspec.Meta(ge=32, le=4096, multiple_of=32)] = 640
    min_score: Annotated[float, msgspec.Meta(gt=0, lt=1)] = 0.25
    # remove_object's LaMa-family inpainting model; empty = classical cv2.inpaint (Telea).
    inpainter: str = ""
    mask_dilate_px: Annotated[int, msgspec.Meta(ge=0, le=256)] = 15


class FaceSwapConfig(_Section, frozen=True):
    detector: str = "mtcnn"
    recognizer: str = "w600k_r50"
    swapper: str = "inswapper_128"
    min_face_px: PositiveInt = 20
    det_size: Annotated[int, msgspec.Meta(ge=32, le=2048, multiple_of=32)] = 640
    score_threshold: Annotated[float, msgspec.Meta(gt=0, lt=1)] = 0.5
    nsfw_model: str = ""
    nsfw_threshold: Annotated[float, msgspec.Meta(gt=0, le=1)] = 0.8
    nsfw_class: Annotated[int, msgspec.Meta(ge=0)] = 1


class ImageModelsConfig(_Section, frozen=True):
    # Super-resolution model in [models.files] for `upscale`; empty = classical Lanczos.
    upscaler: str = ""
    tile_px: Annotated[int, msgspec.Meta(ge=32, le=4096)] = 256
    tile_overlap_px: Annotated[int, msgspec.Meta(ge=0, le=256)] = 16
    tile_batch: Annotated[int, msgspec.Meta(ge=1, le=64)] = 4
    # Face restore model (GFPGAN/CodeFormer family, 512x512); empty = face_restore refused.
    restorer: str = ""
    # Matting model for `remove_background`; empty = the task is unavailable.
    matting: str = ""
    matting_family: Literal["auto", "u2net", "isnet", "birefnet", "modnet"] = "auto"
    matting_size: Annotated[int, msgspec.Meta(ge=32, le=4096)] = 1024


class BatchingConfig(_Section, frozen=True):
    # Concurrent jobs' runs of one model (dynamic batch axis) gathered into one session run.
    enabled: bool = True
    max_batch: Annotated[int, msgspec.Meta(ge=1, le=64)] = 8
    max_wait_ms: Annotated[float, msgspec.Meta(ge=0, le=100)] = 5.0


class VideoConfig(_Section, frozen=True):
    max_duration_s: PositiveFloat = 600.0
    max_frames: PositiveInt = 36_000
    max_pixels: PositiveInt = 3840 * 2160
    max_bytes: PositiveInt = 200 * 1024 * 1024
    batch_frames: Annotated[int, msgspec.Meta(ge=1, le=64)] = 8
    track_similarity: Annotated[float, msgspec.Meta(ge=-1, le=1)] = 0.3


class Config(_Section, frozen=True):
    server: ServerConfig = ServerConfig()
    keys: list[KeyConfig] = []
    queue: QueueConfig = QueueConfig()
    webhooks: WebhookConfig = WebhookConfig()
    fetch: FetchConfig = FetchConfig()
    limits: LimitsConfig = LimitsConfig()
    models: ModelsConfig = ModelsConfig()
    faceswap: FaceSwapConfig = FaceSwapConfig()
    objects: ObjectsConfig = ObjectsConfig()
    video: VideoConfig = VideoConfig()
    images: ImageModelsConfig = ImageModelsConfig()
    batching: BatchingConfig = BatchingConfig()
    retention: RetentionConfig = RetentionConfig()
    backends: list[BackendConfig] = []
    # Cloud APIs for the generation tasks (ahv/providers/config.py).
    providers: ProvidersConfig = ProvidersConfig()


_DEVICE = re.compile(r"^(cpu|cuda:\d+)$")
_SHA256 = re.compile(r"^[0-9a-f]{64}$")
_MODEL_NAME = re.compile(r"^[A-Za-z0-9_.-]+$")


def load_config(path: str | Path) -> Config:
    try:
        raw = Path(path).read_bytes()
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror}") from exc
    return parse_config(raw, source=str(path))


def parse_config(raw: bytes | str, *, source: str = "ahv.toml") -> Config:
    try:
        config = msgspec.toml.decode(raw, type=Config)
    except msgspec.ValidationError as exc:
        message = _readable(str(exc))
        if message.startswith("models.files[...]"):  # msgspec does not name dict keys
            message = _model_entry_error(raw) or message
        raise ConfigError(f"{source}: {message}") from exc
    except msgspec.DecodeError as exc:
        raise ConfigError(f"{source}: not valid TOML: {exc}") from exc
    problems = _check(config)
    if problems:
        raise ConfigError(f"{source}: " + "; ".join(problems))
    return config


def _model_entry_error(raw: bytes | str) -> str | None:
    """The first bad [models.files.NAME] entry, named: "models.files.NAME: problem"."""
    files = msgspec.toml.decode(raw).get("models", {}).get("files", {})
    for name, entry in files.items() if isinstance(files, dict) else []:
        try:
            msgspec.convert(entry, ModelFileConfig)
        except msgspec.ValidationError as exc:
            text = str(exc)
            # "file: Expected `str`..." (a field named) or "Object missing required field"
            inside = " - at `$." in text
            return f"models.files.{name}{'.' if inside else ': '}{_readable(text)}"
    return None


def _readable(message: str) -> str:
    # msgspec says "... - at `$.backends[0].slots`"; we say "backends[0].slots: ...".
    match = re.match(r"^(.*) - at `\$\.?(.*)`$", message)
    if not match:
        return message
    problem, where = match.groups()
    return f"{where or '(top level)'}: {problem}"


def _check(config: Config) -> list[str]:
    problems = _check_keys(config.keys)
    backend_names: set[str] = set()
    for i, backend in enumerate(config.backends):
        where = f"backends[{i}]"
        if backend.name in backend_names:
            problems.append(f"{where}.name: duplicate backend name {backend.name!r}")
        backend_names.add(backend.name)
        if not _DEVICE.match(backend.device):
            problems.append(f"{where}.device: {backend.device!r} is not `cpu` or `cuda:N`")
    for i, network in enumerate(config.fetch.allowed_networks):
        try:
            ipaddress.ip_network(network)
        except ValueError as exc:
            problems.append(f"fetch.allowed_networks[{i}]: {network!r}: {exc}")
    if config.server.public_url and not re.match(r"^https?://", config.server.public_url):
        problems.append("server.public_url: must start with http:// or https://")
    problems += _check_models(config.models)
    problems += check_providers(config.providers, backend_names)
    problems += _check_retention(config.retention)
    return problems


def _check_retention(retention: RetentionConfig) -> list[str]:
    problems: list[str] = []
    rules = [("retention", retention.files_s, retention.jobs_s)]
    for task, rule in retention.tasks.items():
        files_s = retention.files_s if rule.files_s is None else rule.files_s
        jobs_s = retention.jobs_s if rule.jobs_s is None else rule.jobs_s
        rules.append((f"retention.tasks.{task}", files_s, jobs_s))
    for where, files_s, jobs_s in rules:
        # 0 = for ever: a record kept for ever may keep its files; a record never outlived.
        if jobs_s and (not files_s or jobs_s < files_s):
            problems.append(
                f"{where}.jobs_s: job records must be kept at least as long as their files "
                f"(jobs_s {jobs_s:g} < files_s {files_s or 'for ever (0)'})"
            )
    return problems


def _check_models(models: ModelsConfig) -> list[str]:
    problems: list[str] = []
    for name, entry in models.files.items():
        where = f"models.files.{name}"
        if not _MODEL_NAME.match(name):
            problems.append(f"{where}: a model name is letters, digits, `_`, `.` and `-`")
        file = Path(entry.file)
        if file.is_absolute() or ".." in file.parts:
            problems.append(f"{where}.file: must be a relative path inside models.dir")
        if entry.sha256 and not _SHA256.match(entry.sha256):
            problems.append(f"{where}.sha256: must be 64 lowercase hex digits (or empty)")
        if entry.url and not re.match(r"^https?://[^/\s]+", entry.url):
            problems.append(f"{where}.url: must start with http:// or https://")
    return problems


def _check_keys(keys: list[KeyConfig]) -> list[str]:
    problems: list[str] = []
    names: set[str] = set()
    for i, key in enumerate(keys):
        where = f"keys[{i}]"
        if key.name in names:
            problems.append(f"{where}.name: duplicate key name {key.name!r}")
        names.add(key.name)
        if bool(key.key) == bool(key.key_sha256):
            problems.append(f"{where}: give exactly one of `key` or `key_sha256`")
        if key.key_sha256 and not _SHA256.match(key.key_sha256):
            problems.append(f"{where}.key_sha256: must be 64 lowercase hex digits")
    digests: dict[str, int] = {}
    for i, key in enumerate(keys):
        digest = key.key_sha256 or hashlib.sha256(key.key.encode()).hexdigest()
        if digest in digests:
            problems.append(f"keys[{i}]: the same key as keys[{digests[digest]}]")
        digests.setdefault(digest, i)
        if key.webhook_secret.startswith("whsec_"):
            try:
                base64.b64decode(key.webhook_secret.removeprefix("whsec_"), validate=True)
            except ValueError:
                problems.append(f"keys[{i}].webhook_secret: whsec_ must be followed by base64")
    return problems
