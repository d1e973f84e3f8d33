"""Image generation through cloud providers: `gg_image` (Imagen 4), `cx_image` (OpenAI's GPT
image model: generations, or edits of input images) and `ahv_image` (text-to-image and
image-to-image on the provider ahv.toml routes it to, Gemini's image model by default).

Each runs on its provider's backend; the provider's images are stored under /files/ and the
job reports them like a local job's (`result.url` = the first, `result.files` = all).
"""

from __future__ import annotations

from typing import Annotated, Literal

import msgspec

from ahv.config import Config
from ahv.errors import invalid_payload
from ahv.providers.google import GeminiClient
from ahv.providers.openai import OpenAIClient
from ahv.providers.types import InputImage
from ahv.tasks.base import TaskContext, TaskOutput, TaskSpec
from ahv.tasks.gen_common import (
    ModelOverride,
    Prompt,
    hub,
    key_kept_out,
    load_image,
    load_mask,
    save_images,
)

ImageUrls = Annotated[
    list[str],
    msgspec.Meta(max_length=16, description="Input images (http/https URLs), in order."),
]


class GgImagePayload(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """Imagen 4 through the Gemini API (`providers.google.imagen_model`)."""

    prompt: Prompt
    number_of_images: Annotated[
        int, msgspec.Meta(ge=1, le=4, description="Images to generate, 1-4.")
    ] = 1
    aspect_ratio: Annotated[
        Literal["1:1", "3:4", "4:3", "9:16", "16:9"] | None,
        msgspec.Meta(description="Shape of the images; the model's default is 1:1."),
    ] = None
    image_size: Annotated[
        Literal["1K", "2K"] | None,
        msgspec.Meta(description="Resolution class (Imagen 4 Standard and Ultra)."),
    ] = None
    negative_prompt: (
        Annotated[
            str, msgspec.Meta(max_length=8000, description="What the images should not show.")
        ]
        | None
    ) = None
    person_generation: Annotated[
        Literal["dont_allow", "allow_adult", "allow_all"] | None,
        msgspec.Meta(description="Whether people may be drawn (the provider's policy)."),
    ] = None
    model: ModelOverride | None = None


class CxImagePayload(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """OpenAI's GPT image model (`providers.openai.image_model`): a generation from the
    prompt, or an edit of `image_urls` (with an optional `mask_url`)."""

    prompt: Prompt
    image_urls: ImageUrls = []
    mask_url: Annotated[
        str | None,
        msgspec.Meta(
            description="Edit mask for the first input image: transparent pixels, or white "
            "ones in a mask without alpha, mark what to change."
        ),
    ] = None
    size: Annotated[
        Literal["auto", "1024x1024", "1536x1024", "1024x1536"] | None,
        msgspec.Meta(description="Output size; `auto` lets the model choose."),
    ] = None
    quality: Annotated[
        Literal["auto", "low", "medium", "high"] | None,
        msgspec.Meta(description="Rendering quality (and cost)."),
    ] = None
    background: Annotated[
        Literal["auto", "transparent", "opaque"] | None,
        msgspec.Meta(description="`transparent` gives PNGs with alpha."),
    ] = None
    n: Annotated[int, msgspec.Meta(ge=1, le=10, description="Images to generate, 1-10.")] = 1
    model: ModelOverride | None = None


class AhvImagePayload(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """Text-to-image, or image-to-image when `image_urls` are given, on the provider and model
    that `providers.ahv_image_provider` / `ahv_image_model` name."""

    prompt: Prompt
    image_urls: ImageUrls = []
    aspect_ratio: Annotated[
        Literal["1:1", "2:3", "3:2", "3:4", "4:3", "4:5", "5:4", "9:16", "16:9", "21:9"] | None,
        msgspec.Meta(description="Shape of the image (on OpenAI: the nearest of its sizes)."),
    ] = None


def _validate_cx(payload: CxImagePayload, config: Config) -> None:
    if payload.mask_url is not None and not payload.image_urls:
        raise invalid_payload("payload.mask_url", "needs image_urls (it masks the first image)")


async def _inputs(ctx: TaskContext, urls: list[str]) -> list[InputImage]:
    return [await load_image(ctx, url, f"image_urls[{i}]") for i, url in enumerate(urls)]


async def run_gg_image(ctx: TaskContext, payload: GgImagePayload) -> TaskOutput:
    client = hub(ctx).google()
    model = payload.model or client.settings.imagen_model
    ctx.progress(10)
    with key_kept_out(client):
        batch = await client.imagen(
            model,
            prompt=payload.prompt,
            count=payload.number_of_images,
            aspect_ratio=payload.aspect_ratio,
            image_size=payload.image_size,
            negative_prompt=payload.negative_prompt,
            person_generation=payload.person_generation,
        )
    ctx.progress(80)
    return await save_images(ctx, batch, provider="google", model=model, scrub=client.scrub)


async def run_cx_image(ctx: TaskContext, payload: CxImagePayload) -> TaskOutput:
    client = hub(ctx).openai()
    model = payload.model or client.settings.image_model
    images = await _inputs(ctx, payload.image_urls)
    mask = None
    if payload.mask_url is not None:
        mask = await load_mask(
            ctx, payload.mask_url, "mask_url", (images[0].width, images[0].height)
        )
    ctx.progress(10)
    size, quality, background = payload.size, payload.quality, payload.background
    with key_kept_out(client):
        if images:
            batch = await client.edit(
                model, prompt=payload.prompt, images=images, mask=mask, n=payload.n, size=size,
                quality=quality, background=background,
            )  # fmt: skip
        else:
            batch = await client.generate(
                model, prompt=payload.prompt, n=payload.n, size=size, quality=quality,
                background=background,
            )  # fmt: skip
    ctx.progress(80)
    output = await save_images(ctx, batch, provider="openai", model=model, scrub=client.scrub)
    output.meta["mode"] = "edit" if images else "generation"
    return output


def _openai_size(aspect_ratio: str | None) -> str | None:
    """The GPT image size nearest an aspect ratio (they come in 1:1, 3:2 and 2:3)."""
    if aspect_ratio is None:
        return None
    width, height = (int(side) for side in aspect_ratio.split(":"))
    ratio = width / height
    return "1536x1024" if ratio > 1.2 else "1024x1536" if ratio < 1 / 1.2 else "1024x1024"


async def run_ahv_image(ctx: TaskContext, payload: AhvImagePayload) -> TaskOutput:
    providers = ctx.config.providers
    name = providers.ahv_image_provider
    images = await _inputs(ctx, payload.image_urls)
    ctx.progress(10)
    client: OpenAIClient | GeminiClient
    if name == "openai":
        client = hub(ctx).openai()
        model = providers.ahv_image_model or client.settings.image_model
        size = _openai_size(payload.aspect_ratio)
        with key_kept_out(client):
            if images:
                batch = await client.edit(
                    model, prompt=payload.prompt, images=images, mask=None, n=1, size=size,
                    quality=None, background=None,
                )  # fmt: skip
            else:
                batch = await client.generate(
                    model, prompt=payload.prompt, n=1, size=size, quality=None, background=None
                )
    else:
        client = hub(ctx).google()
        model = providers.ahv_image_model or client.settings.image_model
        with key_kept_out(client):
            batch = await client.generate_images(
                model, prompt=payload.prompt, images=images, aspect_ratio=payload.aspect_ratio
            )
    ctx.progress(80)
    output = await save_images(ctx, batch, provider=name, model=model, scrub=client.scrub)
    output.meta["mode"] = "image-to-image" if images else "text-to-image"
    return output


GG_IMAGE = TaskSpec(
    name="gg_image",
    payload_type=GgImagePayload,
    run=run_gg_image,
    direct_path="/gg/image",
    default_predict_s=15.0,
    provider=lambda config: "google",
)

CX_IMAGE = TaskSpec(
    name="cx_image",
    payload_type=CxImagePayload,
    run=run_cx_image,
    url_fields=("mask_url",),
    list_url_fields=("image_urls",),
    direct_path="/cx/image",
    default_predict_s=40.0,
    validate=_validate_cx,
    provider=lambda config: "openai",
)

AHV_IMAGE = TaskSpec(
    name="ahv_image",
    payload_type=AhvImagePayload,
    run=run_ahv_image,
    list_url_fields=("image_urls",),
    direct_path="/ahv/image",
    default_predict_s=20.0,
    provider=lambda config: config.providers.ahv_image_provider,
)
