"""Decode untrusted image bytes into upright BGR(A) uint8 arrays, and encode results.

Every awkward input (research cases C01–C11) ends as a clean array or as an AhvError with a
stable code, never as a half-decoded image or a raw library traceback."""

from __future__ import annotations

import contextlib
import io
import struct
import warnings
import zlib
from typing import NamedTuple

import cv2
import numpy as np
import numpy.typing as npt
from PIL import Image, ImageFile, ImageOps

from ahv.errors import AhvError

# Pillow plugin names we hand bytes to; every other parser (PSD, ICO, EPS...) stays unreachable.
_FORMATS = ("JPEG", "PNG", "WEBP", "GIF", "BMP", "TIFF")
_ANIMATABLE = frozenset({"GIF", "PNG", "WEBP"})
_ALPHA_MODES = frozenset({"LA", "La", "PA", "RGBA", "RGBa"})
_HIGH_DEPTH_MODES = frozenset({"I;16", "I;16B", "I;16L", "I;16N", "I", "F"})
_ORIENTATION_TAG = 0x0112
# PNG Adam7 passes as (first column, first row, column step, row step).
_ADAM7 = (
    (0, 0, 8, 8),
    (4, 0, 8, 8),
    (0, 4, 4, 8),
    (2, 0, 4, 4),
    (0, 2, 2, 4),
    (1, 0, 2, 2),
    (0, 1, 1, 2),
)
_UNSUPPORTED = "not a supported image (JPEG, PNG, WebP, BMP, TIFF or single-frame GIF)"
# Models that judge the picture (detectors, matting) see transparent pixels as this flat gray,
# the letterbox fill YOLO is trained on: whatever colour lies under alpha 0 is not shown.
VISIBLE_GRAY = 114

Pixels = npt.NDArray[np.uint8]


class DecodedImage(NamedTuple):
    pixels: Pixels
    has_alpha: bool
    source_format: str
    orientation: int


class EncodedImage(NamedTuple):
    data: bytes
    extension: str
    content_type: str


def probe_image(data: bytes, *, field: str = "image_url") -> tuple[int, int, str]:
    """(width, height, format) read from the header; no pixel data is decoded."""
    with _open(data, field) as image:
        return image.size[0], image.size[1], _format_name(image)


def decode_image(
    data: bytes, *, max_pixels: int, max_side: int, field: str = "image_url"
) -> DecodedImage:
    opened = _open(data, field)
    width, height = opened.size
    image: Image.Image = opened
    try:
        if width * height > max_pixels or max(width, height) > max_side:
            raise _too_large(field, width, height, max_pixels, max_side)
        with _without_pillow_bomb_warning(width * height):
            if opened.format == "PNG":
                _check_png(data)
            opened.load()
            orientation = _orientation(opened)
            if orientation != 1:
                image = ImageOps.exif_transpose(opened)
            pixels, has_alpha = _to_bgr(image)
    except (AhvError, MemoryError):
        raise
    except Image.DecompressionBombError:
        raise _too_large(field, width, height, max_pixels, max_side) from None
    except Exception as exc:
        raise _corrupt(field, exc) from None
    finally:
        opened.close()
    return DecodedImage(np.ascontiguousarray(pixels), has_alpha, _format_name(opened), orientation)


def encode_image(pixels: Pixels, *, has_alpha: bool, jpeg_quality: int = 95) -> EncodedImage:
    if not 1 <= jpeg_quality <= 100:
        raise ValueError(f"jpeg_quality must be 1..100, got {jpeg_quality}")
    if has_alpha:
        extension, content_type, params = "png", "image/png", [cv2.IMWRITE_PNG_COMPRESSION, 3]
    else:
        extension, content_type = "jpg", "image/jpeg"
        params = [cv2.IMWRITE_JPEG_QUALITY, jpeg_quality]
        if pixels.ndim == 3 and pixels.shape[2] == 4:
            pixels = np.asarray(cv2.cvtColor(pixels, cv2.COLOR_BGRA2BGR), dtype=np.uint8)
    try:  # cv2 writes no EXIF at all, so viewers cannot rotate the upright result again.
        ok, buffer = cv2.imencode(f".{extension}", pixels, params)
    except cv2.error:
        ok, buffer = False, np.empty(0, np.uint8)
    if not ok:
        raise AhvError("internal_error", f"could not encode the result as {extension}", status=500)
    return EncodedImage(buffer.tobytes(), extension, content_type)


def flatten_alpha(pixels: Pixels, gray: int = VISIBLE_GRAY) -> Pixels:
    """The BGR picture as shown: BGRA composited over a flat gray (BGR is returned as is).

    Detection and matting run on this, so that an object hidden under fully transparent
    pixels (editors often keep the colour there) is neither found nor matted; tasks that
    return pixels keep working on the colour and carry the alpha through."""
    if pixels.ndim != 3 or pixels.shape[2] != 4:
        return pixels
    alpha = pixels[..., 3:4].astype(np.uint32)
    mixed = (pixels[..., :3] * alpha + gray * (255 - alpha) + 127) // 255
    return np.ascontiguousarray(mixed, dtype=np.uint8)


def _open(data: bytes, field: str) -> ImageFile.ImageFile:
    if not data:
        raise AhvError("corrupt_input", f"{field}: empty file")
    Image.init()
    prefix = data[:16]
    for name in _FORMATS:
        if name not in Image.OPEN:
            continue
        factory, accept = Image.OPEN[name]
        verdict = accept(prefix) if accept is not None else True
        if isinstance(verdict, str):
            raise AhvError("unsupported_media_type", f"{field}: {verdict}", status=415)
        if not verdict:
            continue
        # The plugin factory, not Image.open: Image.open applies Pillow's bomb limit to the
        # header and would raise before we can report WxH against our own configured limit.
        try:
            image = factory(io.BytesIO(data), "")
            # Multi-page TIFF and MPO (camera JPEG + previews) are stills: frame 0 is used.
            animated = image.format in _ANIMATABLE and bool(getattr(image, "is_animated", False))
        except MemoryError:
            raise
        except Exception as exc:
            raise _corrupt(field, exc) from None
        if animated:
            raise AhvError(
                "unsupported_media_type", f"{field}: animated images are not supported", status=415
            )
        return image
    raise AhvError("unsupported_media_type", f"{field}: {_UNSUPPORTED}", status=415)


def _check_png(data: bytes) -> None:
    """Raise ValueError unless every chunk's CRC holds and IDAT inflates to the full image.

    Pillow checks neither IDAT CRCs nor whether the zlib stream ended early: a flipped byte or
    a short stream would load "successfully" as wrong or half-black pixels."""
    view, pos, idat, header, kind = memoryview(data), 8, [], b"", b""
    while kind != b"IEND":
        length, kind = struct.unpack_from(">I4s", data, pos) if pos + 8 <= len(data) else (0, b"")
        if not kind or pos + 12 + length > len(data):
            raise ValueError("PNG file is cut short")
        body = view[pos + 8 : pos + 8 + length]
        (stored_crc,) = struct.unpack_from(">I", data, pos + 8 + length)
        if zlib.crc32(body, zlib.crc32(kind)) != stored_crc:
            raise ValueError(f"bad CRC in {kind.decode('latin-1')} chunk")
        header = bytes(body) if kind == b"IHDR" else header
        idat += [body] if kind == b"IDAT" else []
        pos += 12 + length
    width, height, depth, colour, _, _, interlace = struct.unpack(">IIBBBBB", header)
    bits = depth * {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}.get(colour, 1)
    passes = _ADAM7 if interlace else ((0, 0, 1, 1),)
    expected = 0
    for x0, y0, dx, dy in passes:
        cols, rows = -(-(width - x0) // dx), -(-(height - y0) // dy)
        if cols > 0 and rows > 0:
            expected += rows * (1 + -(-cols * bits // 8))
    inflater, produced = zlib.decompressobj(), 0
    for part in idat:
        pending: bytes | memoryview = part
        while pending and produced < expected:
            # Bounded steps: the output is only counted, never held in memory.
            produced += len(inflater.decompress(pending, 1 << 20))
            pending = inflater.unconsumed_tail
    if produced < expected:
        raise ValueError(f"image data ends early ({produced} of {expected} bytes)")


def _without_pillow_bomb_warning(pixels: int) -> contextlib.AbstractContextManager[object]:
    # Our limit has already been applied; Pillow's warning (an exception under strict warning
    # filters) would only reject images we accepted. catch_warnings touches process-wide
    # state, so it is only used when the warning can actually fire.
    threshold = Image.MAX_IMAGE_PIXELS
    if threshold is None or pixels <= threshold:
        return contextlib.nullcontext()
    return warnings.catch_warnings(action="ignore", category=Image.DecompressionBombWarning)


def _orientation(image: Image.Image) -> int:
    try:
        value = image.getexif().get(_ORIENTATION_TAG, 1)
    except Exception:
        # A mangled EXIF block should not cost the user an otherwise good photo.
        return 1
    return value if isinstance(value, int) and 1 <= value <= 8 else 1


def _to_bgr(image: Image.Image) -> tuple[Pixels, bool]:
    mode = image.mode
    if mode in _HIGH_DEPTH_MODES:
        gray = _scale_to_uint8(np.asarray(image), mode)
        return np.asarray(cv2.cvtColor(gray, cv2.COLOR_GRAY2BGR), dtype=np.uint8), False
    if mode in _ALPHA_MODES or "transparency" in image.info:
        target, code = "RGBA", cv2.COLOR_RGBA2BGRA
    elif mode in ("1", "L"):
        target, code = "L", cv2.COLOR_GRAY2BGR
    else:
        # CMYK (Adobe inverted inks included), YCbCr, LAB...: Pillow's conversion is the reference.
        target, code = "RGB", cv2.COLOR_RGB2BGR
    array = np.asarray(image if mode == target else image.convert(target), dtype=np.uint8)
    return np.asarray(cv2.cvtColor(array, code), dtype=np.uint8), target == "RGBA"


def _scale_to_uint8(values: npt.NDArray[np.generic], mode: str) -> Pixels:
    """Scale (never clip or wrap) a high-depth gray plane to 0..255.

    I;16*: /257; I: /257 when it fits 16 bits, else min–max; F: [0,1] ×255, [0,255] kept, else
    min–max. An integer plane holding only 0 and 1 is a label map (a mask saved as is): ×255,
    as a 1-bit image would be, instead of all black."""
    data = np.nan_to_num(values.astype(np.float32), nan=0.0, posinf=0.0, neginf=0.0)
    lo, hi = float(data.min()), float(data.max())
    if mode.startswith("I") and lo >= 0 and hi <= 1:
        scaled = data * 255.0
    elif mode.startswith("I;16") or (mode == "I" and lo >= 0 and hi <= 65535):
        scaled = data / 257.0
    elif mode == "F" and lo >= 0 and hi <= 1.0:
        scaled = data * 255.0
    elif mode == "F" and lo >= 0 and hi <= 255.0:
        scaled = data
    elif hi > lo:
        scaled = (data - lo) * (255.0 / (hi - lo))
    else:
        scaled = np.zeros_like(data)
    return np.asarray(np.clip(np.rint(scaled), 0, 255), dtype=np.uint8)


def _format_name(image: Image.Image) -> str:
    name = (image.format or "unknown").lower()
    return "jpeg" if name == "mpo" else name


def _too_large(field: str, width: int, height: int, max_pixels: int, max_side: int) -> AhvError:
    return AhvError(
        "image_too_large",
        f"{field}: image is {width}x{height} ({width * height} pixels); the limit is "
        f"{max_pixels} pixels and {max_side} px per side",
        status=413,
    )


def _corrupt(field: str, exc: BaseException) -> AhvError:
    detail = (str(exc).splitlines() or [""])[0].strip()[:120] or type(exc).__name__
    return AhvError("corrupt_input", f"{field}: truncated or corrupt image ({detail})")
