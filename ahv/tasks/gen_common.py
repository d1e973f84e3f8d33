"""What the generation tasks share: the provider hub, input images prepared for a provider,
and result images saved under /files/ with their meta.

Input images go through the same fetcher, limits and decoder as local tasks (EXIF orientation
applied, odd modes normalised, size checked from the header), then are re-encoded: PNG when
they have alpha, else JPEG, so a provider only ever sees a clean upright image.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Annotated, Any, Protocol

import msgspec
import numpy as np

from ahv.errors import AhvError
from ahv.imaging import decode_image, encode_image
from ahv.providers.config import MODEL_NAME
from ahv.providers.hub import ProviderHub
from ahv.providers.types import ImageBatch, InputImage
from ahv.tasks import masks
from ahv.tasks.base import OutputFile, TaskContext, TaskOutput

_EXTENSIONS = {"png": "png", "jpeg": "jpg", "webp": "webp"}
_MIMES = {"png": "image/png", "jpg": "image/jpeg", "webp": "image/webp"}

Prompt = Annotated[
    str,
    msgspec.Meta(min_length=1, max_length=32000, description="What to generate, in words."),
]
ModelOverride = Annotated[
    str,
    msgspec.Meta(
        pattern=MODEL_NAME.pattern,
        description="The provider's model to use instead of the one ahv.toml names.",
    ),
]


class _Scrubber(Protocol):
    def scrub(self, text: str) -> str: ...


@contextlib.contextmanager
def key_kept_out(client: _Scrubber) -> Iterator[None]:
    """Errors raised in the block with the provider's key scrubbed from their message: they
    quote the provider's own words (refusals, operation errors, the text a model answered),
    which must not carry the key into job documents, webhooks or logs."""
    try:
        yield
    except AhvError as exc:
        exc.message = client.scrub(exc.message)
        exc.args = (exc.message,)
        raise


def hub(ctx: TaskContext) -> ProviderHub:
    if ctx.providers is None:
        raise AhvError("model_unavailable", f"{ctx.task}: no cloud provider is configured")
    return ctx.providers


async def load_image(ctx: TaskContext, url: str, field: str) -> InputImage:
    """An input image fetched, decoded with the local tasks' limits, re-encoded."""
    fetched = await ctx.fetch(url, field=field)
    limits = ctx.config.limits

    def prepare() -> InputImage:
        image = decode_image(
            fetched.data, max_pixels=limits.max_input_pixels, max_side=limits.max_side, field=field
        )
        encoded = encode_image(image.pixels, has_alpha=image.has_alpha)
        height, width = image.pixels.shape[:2]
        return InputImage(encoded.data, encoded.content_type, width, height)

    return await ctx.run_in_thread(prepare)


async def load_mask(ctx: TaskContext, url: str, field: str, size: tuple[int, int]) -> InputImage:
    """An edit mask as OpenAI wants it: a PNG of the first image's size whose transparent
    pixels mark what to change. A mask with alpha is taken as given (OpenAI's own form); one
    without is read like remove_object's masks (ahv/tasks/masks.py: white = change, a 0/1
    label map's 1 = change, 16-bit scaled). Resized (nearest) when only its scale differs;
    another aspect ratio is `invalid_mask`, as for remove_object."""
    fetched = await ctx.fetch(url, field=field)
    limits = ctx.config.limits

    def prepare() -> InputImage:
        image = decode_image(
            fetched.data, max_pixels=limits.max_input_pixels, max_side=limits.max_side, field=field
        )
        if image.has_alpha:
            alpha = np.ascontiguousarray(image.pixels[..., 3])
        else:
            alpha = 255 - masks.binarise(image.pixels, has_alpha=False)
        alpha, _ = masks.fit_to(alpha, size, field)
        width, height = size
        rgba = np.zeros((height, width, 4), np.uint8)
        rgba[..., 3] = alpha
        encoded = encode_image(rgba, has_alpha=True)
        return InputImage(encoded.data, encoded.content_type, width, height)

    return await ctx.run_in_thread(prepare)


async def save_images(
    ctx: TaskContext,
    batch: ImageBatch,
    *,
    provider: str,
    model: str,
    scrub: Callable[[str], str],
) -> TaskOutput:
    """Every image of `batch` saved under /files/; `result.url` is the first, `result.files`
    lists them all with their own meta. The provider's words kept in the meta (filter
    reasons, text) pass through `scrub` first."""
    blobs: list[bytes] = []
    for i, image in enumerate(batch.images):
        if image.data is not None:
            blobs.append(image.data)
        elif image.url is not None:  # a URL result is fetched like an input, without the key
            blobs.append((await ctx.fetch(image.url, field=f"{provider} result {i}")).data)
    ctx.checkpoint()

    def save() -> list[OutputFile]:
        return [_save_one(ctx, data, i, provider) for i, data in enumerate(blobs)]

    files = await ctx.run_in_thread(save)
    meta: dict[str, Any] = {
        **files[0].meta,
        "provider": provider,
        "model": model,
        "images": len(files),
    }
    if batch.filtered:  # withheld by the provider's safety filter
        meta["filtered"] = [scrub(reason) for reason in batch.filtered]
    if batch.text:
        meta["text"] = scrub(batch.text)[:2000]
    return TaskOutput(filename=files[0].filename, meta=meta, files=files)


def _save_one(ctx: TaskContext, data: bytes, index: int, provider: str) -> OutputFile:
    field = f"{provider} result {index}"
    limits = ctx.config.limits
    try:
        # Decoded in full, not only probed: a truncated file, or a header that claims more
        # pixels than limits.max_output_pixels (a decompression bomb), is the provider's
        # failure, never a result handed to the client.
        image = decode_image(
            data, max_pixels=limits.max_output_pixels, max_side=limits.max_side, field=field
        )
    except AhvError as exc:
        raise AhvError(
            "provider_error", f"{provider} returned an image ahv cannot read ({exc.message})"
        ) from None
    height, width = image.pixels.shape[:2]
    extension = _EXTENSIONS.get(image.source_format)
    if extension is None or image.orientation != 1:
        # Not a web format (a BMP, a TIFF), or turned by EXIF: re-encoded, upright.
        encoded = encode_image(image.pixels, has_alpha=image.has_alpha)
        data, extension = encoded.data, encoded.extension
    filename = ctx.save_output(data, extension)
    meta = {
        "width": width,
        "height": height,
        "mime": _MIMES[extension],
        "bytes": len(data),
        "index": index,
    }
    return OutputFile(filename=filename, meta=meta)
