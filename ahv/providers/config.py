"""`[providers]` of ahv.toml: credentials, base URLs, default models and limits of the cloud
APIs that the generation tasks (gg_image, cx_image, ahv_image, ahv_video) are forwarded to.

A provider is configured when its section gives `api_key` or `api_key_file`; without either
its tasks are unavailable (`model_unavailable`). Problems are reported by key name only: a
key's value never appears in a message.
"""

from __future__ import annotations

import re
from typing import Annotated, Literal

import msgspec

PositiveFloat = Annotated[float, msgspec.Meta(gt=0)]
Slots = Annotated[int, msgspec.Meta(ge=1, le=256)]

# Model names go into request paths (`/v1beta/models/{model}:predict`): no `/`, `:` or `..`.
MODEL_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
PROVIDERS = ("google", "openai")
# What an API key may hold: it travels in an HTTP header (visible ASCII, no spaces).
KEY_TEXT = re.compile(r"^[\x21-\x7e]*$")


class _Section(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    pass


class GoogleProviderConfig(_Section, frozen=True):
    # The Gemini API key (sent as `x-goog-api-key`), or a file holding it (read at start).
    api_key: str = ""
    api_key_file: str = ""
    base_url: str = "https://generativelanguage.googleapis.com"
    # Gemini image-output model (ahv_image), Imagen model (gg_image), Veo model (ahv_video).
    image_model: str = "gemini-2.5-flash-image"
    imagen_model: str = "imagen-4.0-generate-001"
    veo_model: str = "veo-3.1-generate-preview"
    # Time limit of one request to the API (a Veo job as a whole is bounded by the job timeout).
    timeout_s: PositiveFloat = 120.0
    # Jobs running at once against this provider: the slots of its backend.
    concurrency: Slots = 4
    # Veo operations are polled after poll_interval_s, then 1.5x longer each time, at most
    # poll_max_interval_s apart.
    poll_interval_s: PositiveFloat = 5.0
    poll_max_interval_s: PositiveFloat = 30.0


class OpenAIProviderConfig(_Section, frozen=True):
    # The OpenAI API key (sent as `Authorization: Bearer`), or a file holding it.
    api_key: str = ""
    api_key_file: str = ""
    base_url: str = "https://api.openai.com"
    # GPT image model for cx_image (and ahv_image when routed here).
    image_model: str = "gpt-image-1.5"
    # GPT image requests can take a couple of minutes.
    timeout_s: PositiveFloat = 300.0
    concurrency: Slots = 4


class ProvidersConfig(_Section, frozen=True):
    # Which provider runs ahv_image, and with which model ("" = that provider's image_model).
    ahv_image_provider: Literal["google", "openai"] = "google"
    ahv_image_model: str = ""
    google: GoogleProviderConfig = GoogleProviderConfig()
    openai: OpenAIProviderConfig = OpenAIProviderConfig()


ProviderSection = GoogleProviderConfig | OpenAIProviderConfig


def section(providers: ProvidersConfig, name: str) -> ProviderSection:
    found: ProviderSection = providers.google if name == "google" else providers.openai
    return found


def is_configured(providers: ProvidersConfig, name: str) -> bool:
    entry = section(providers, name)
    return bool(entry.api_key or entry.api_key_file)


def check_providers(providers: ProvidersConfig, backend_names: set[str]) -> list[str]:
    """Problems with [providers], each naming its key (never a key's value)."""
    problems: list[str] = []
    for name in PROVIDERS:
        entry = section(providers, name)
        where = f"providers.{name}"
        if entry.api_key and entry.api_key_file:
            problems.append(f"{where}: give `api_key` or `api_key_file`, not both")
        if entry.api_key != entry.api_key.strip():
            problems.append(f"{where}.api_key: has leading or trailing white space")
        if not re.match(r"^https?://[^/\s?#]+(/[^\s?#]*)?$", entry.base_url):
            problems.append(f"{where}.base_url: must be an http:// or https:// URL")
        elif "@" in entry.base_url.partition("://")[2].partition("/")[0]:
            # Credentials in the URL would be sent as Basic auth next to the key (OpenAI's
            # Bearer header cannot coexist with them) and shown wherever the URL is.
            problems.append(
                f"{where}.base_url: must not hold a user name or password (`user:pass@`); "
                "the key goes in api_key or api_key_file"
            )
        if not KEY_TEXT.match(entry.api_key.strip()):
            problems.append(
                f"{where}.api_key: holds characters an HTTP header cannot carry "
                "(spaces, control or non-ASCII characters)"
            )
        models = {"image_model": entry.image_model}
        if isinstance(entry, GoogleProviderConfig):
            models |= {"imagen_model": entry.imagen_model, "veo_model": entry.veo_model}
            if entry.poll_max_interval_s < entry.poll_interval_s:
                problems.append(f"{where}.poll_max_interval_s: is below poll_interval_s")
        for key, model in models.items():
            if not MODEL_NAME.match(model):
                problems.append(f"{where}.{key}: {model!r} is not a model name")
        if name in backend_names:
            problems.append(
                f"backends: the name {name!r} is taken by the [providers.{name}] backend"
            )
    model = providers.ahv_image_model
    if model and not MODEL_NAME.match(model):
        problems.append(f"providers.ahv_image_model: {model!r} is not a model name")
    return problems
