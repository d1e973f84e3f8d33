"""Image fixtures as bytes, all cut from one real photo (skimage's astronaut, 512x512 RGB).

Each generator builds one of the awkward inputs from the research notes (C01–C11) in memory,
so any test module can feed them to the decoder or serve them from a fixture server.
"""

from __future__ import annotations

import functools
import importlib.util
import io
import struct
import zlib
from pathlib import Path

import cv2
import numpy as np
import numpy.typing as npt
from PIL import Image

# Upright crop used by the EXIF fixtures: portrait, so orientations 5-8 swap the stored dims.
EXIF_UPRIGHT_SIZE = (300, 400)
EXIF_MARKER = 48  # side of the red square in the upright top-left corner
_ORIENTATION_TAG = 0x0112


def astronaut_path() -> Path:
    # find_spec locates the package without importing skimage.data (which may try the network).
    spec = importlib.util.find_spec("skimage")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("scikit-image is not installed")
    return Path(next(iter(spec.submodule_search_locations))) / "data" / "astronaut.png"


def t1_path() -> Path:
    """insightface's group photo (1280x886 JPEG, six faces)."""
    spec = importlib.util.find_spec("insightface")
    if spec is None or spec.origin is None:
        raise RuntimeError("insightface is not installed")
    return Path(spec.origin).parent / "data" / "images" / "t1.jpg"


@functools.cache
def _astronaut_file() -> bytes:
    return astronaut_path().read_bytes()


def astronaut_rgb() -> Image.Image:
    """A fresh RGB copy of the photo (callers may modify it)."""
    with Image.open(io.BytesIO(_astronaut_file())) as image:
        return image.convert("RGB")


def _save(image: Image.Image, fmt: str, **params: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **params)
    return buffer.getvalue()


def astronaut_png() -> bytes:
    return _save(astronaut_rgb(), "PNG")


def astronaut_jpeg(quality: int = 90) -> bytes:
    return _save(astronaut_rgb(), "JPEG", quality=quality)


def exif_upright() -> Image.Image:
    """The upright picture every exif_rotated_jpeg() must decode back to (before JPEG loss)."""
    width, height = EXIF_UPRIGHT_SIZE
    upright = astronaut_rgb().crop((100, 40, 100 + width, 40 + height))
    upright.paste((255, 0, 0), (0, 0, EXIF_MARKER, EXIF_MARKER))
    return upright


def _store_for_orientation(upright: npt.NDArray[np.uint8], orientation: int) -> np.ndarray:
    # Written from the EXIF definitions (where row 0 / column 0 of the stored image lie in the
    # upright picture), deliberately not from Pillow's transpose table the decoder uses.
    if orientation == 1:
        return upright
    if orientation == 2:  # row 0 top, column 0 right
        return upright[:, ::-1]
    if orientation == 3:  # row 0 bottom, column 0 right
        return upright[::-1, ::-1]
    if orientation == 4:  # row 0 bottom, column 0 left
        return upright[::-1, :]
    if orientation == 5:  # row 0 left, column 0 top
        return upright.transpose(1, 0, 2)
    if orientation == 6:  # row 0 right, column 0 top
        return np.rot90(upright, 1)
    if orientation == 7:  # row 0 right, column 0 bottom
        return upright[::-1, ::-1].transpose(1, 0, 2)
    if orientation == 8:  # row 0 left, column 0 bottom
        return np.rot90(upright, -1)
    raise ValueError(f"orientation must be 1..8, got {orientation}")


def exif_rotated_jpeg(orientation: int) -> bytes:
    return exif_jpeg(np.asarray(exif_upright()), orientation)


def exif_jpeg(upright_rgb: npt.NDArray[np.uint8], orientation: int) -> bytes:
    """A JPEG whose pixels are stored so that applying `orientation` gives `upright_rgb` back."""
    stored = _store_for_orientation(upright_rgb, orientation)
    exif = Image.Exif()
    exif[_ORIENTATION_TAG] = orientation
    image = Image.fromarray(np.ascontiguousarray(stored))
    return _save(image, "JPEG", quality=95, exif=exif.tobytes())


def gray_png() -> bytes:
    return _save(astronaut_rgb().convert("L"), "PNG")


def alpha_ramp(size: tuple[int, int] = (512, 512)) -> Image.Image:
    """Left-to-right alpha gradient 0..255, as an L image."""
    width, height = size
    ramp = np.tile(np.linspace(0, 255, width).round().astype(np.uint8), (height, 1))
    return Image.fromarray(ramp)


def gray_alpha_png() -> bytes:
    gray = astronaut_rgb().convert("L")
    return _save(Image.merge("LA", (gray, alpha_ramp(gray.size))), "PNG")


def rgba_png() -> bytes:
    """256x256: the photo inside an opaque disc on a fully transparent (black) background,
    with a 50%-alpha horizontal band across the middle."""
    rgb = np.asarray(astronaut_rgb().resize((256, 256), Image.Resampling.LANCZOS)).copy()
    yy, xx = np.mgrid[0:256, 0:256]
    alpha = np.where((xx - 128) ** 2 + (yy - 100) ** 2 <= 80**2, 255, 0).astype(np.uint8)
    alpha[180:220, :] = 128
    rgb[alpha == 0] = 0
    return _save(Image.fromarray(np.dstack([rgb, alpha])), "PNG")


def palette_png(transparent: bool) -> bytes:
    image = astronaut_rgb().quantize(colors=64)
    if transparent:
        return _save(image, "PNG", transparency=0)
    return _save(image, "PNG")


def gray16_values() -> npt.NDArray[np.uint16]:
    """16-bit gray plane that uses the low byte too (photo in the high byte, ramp in the low)."""
    gray = np.asarray(astronaut_rgb().convert("L"), dtype=np.uint16)
    ramp = np.tile(np.arange(512, dtype=np.uint16) % 256, (512, 1))
    return ((gray << 8) | ramp).astype(np.uint16)


def gray16_png() -> bytes:
    return _encode_cv2(".png", gray16_values())


def rgb16_values() -> npt.NDArray[np.uint16]:
    """48-bit RGB (channel order R, G, B) with clearly different channel levels."""
    rgb = np.asarray(astronaut_rgb(), dtype=np.uint16) * 257
    rgb[..., 0] = rgb[..., 0] // 4 + 40000  # bright red channel, above 32767 (wrap-around bait)
    rgb[..., 2] = rgb[..., 2] // 8  # dark blue channel
    return rgb


def rgb16_png() -> bytes:
    return _encode_cv2(".png", np.ascontiguousarray(rgb16_values()[..., ::-1]))  # cv2 is BGR


def cmyk_jpeg() -> bytes:
    return _save(astronaut_rgb().resize((128, 128)).convert("CMYK"), "JPEG", quality=95)


def _frames(count: int, size: int = 64) -> list[Image.Image]:
    photo = astronaut_rgb()
    return [photo.crop((i * 40, 0, i * 40 + size, size)) for i in range(count)]


def animated_gif() -> bytes:
    first, *rest = _frames(3)
    return _save(first, "GIF", save_all=True, append_images=rest, duration=100, loop=0)


def animated_webp() -> bytes:
    first, *rest = _frames(3)
    return _save(first, "WEBP", save_all=True, append_images=rest, duration=100, loop=0)


def single_frame_gif() -> bytes:
    return _save(_frames(1)[0], "GIF")


def truncated_jpeg() -> bytes:
    data = astronaut_jpeg()
    return data[: len(data) // 2]


def corrupt_png() -> bytes:
    """The photo PNG with one byte in the middle of the first IDAT chunk flipped (CRC now wrong)."""
    data = bytearray(astronaut_png())
    start = data.index(b"IDAT") - 4
    (length,) = struct.unpack(">I", data[start : start + 4])
    data[start + 8 + length // 2] ^= 0xFF
    return bytes(data)


def _chunk(kind: bytes, payload: bytes) -> bytes:
    return (
        struct.pack(">I", len(payload))
        + kind
        + payload
        + struct.pack(">I", zlib.crc32(kind + payload) & 0xFFFFFFFF)
    )


def huge_header_png(width: int, height: int) -> bytes:
    """A valid-looking 8-bit gray PNG header claiming width x height; only one row of data
    follows, so the file stays tiny and nothing of that size is ever allocated."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    row = zlib.compress(bytes(width + 1), 9)
    return (
        b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", row) + _chunk(b"IEND", b"")
    )


def text_file() -> bytes:
    return b"this is a text file, not an image\n"


def _encode_cv2(ext: str, pixels: np.ndarray) -> bytes:
    ok, buffer = cv2.imencode(ext, pixels)
    if not ok:
        raise RuntimeError(f"cv2 could not encode {ext}")
    return buffer.tobytes()
