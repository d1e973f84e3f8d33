"""What the provider clients take and give back, independent of any provider's JSON."""

from __future__ import annotations

from typing import NamedTuple


class InputImage(NamedTuple):
    """An input image, already decoded, checked and re-encoded by ahv (PNG or JPEG)."""

    data: bytes
    mime: str
    width: int
    height: int


class GeneratedImage(NamedTuple):
    """One result image: its bytes (from base64), or a URL to fetch it from."""

    data: bytes | None
    mime: str | None = None
    url: str | None = None


class ImageBatch(NamedTuple):
    images: list[GeneratedImage]
    # Why results were withheld by the provider's safety filter (one entry per image).
    filtered: tuple[str, ...] = ()
    # Text the model answered next to its images (Gemini), if any.
    text: str = ""
