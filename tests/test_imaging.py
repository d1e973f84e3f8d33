"""ahv.imaging (decode/encode) and ahv.imageops (classical upscale) on real-photo fixtures."""

from __future__ import annotations

import io
from collections.abc import Callable

import cv2
import numpy as np
import pytest
from PIL import Image

from ahv.errors import AhvError
from ahv.imageops import METHOD, plan_upscale, resize_lanczos, sharpen
from ahv.imaging import DecodedImage, decode_image, encode_image, probe_image
from tests import media

LIMITS = {"max_pixels": 40_000_000, "max_side": 16_384}


def decode(data: bytes, **kwargs: object) -> DecodedImage:
    return decode_image(data, **{**LIMITS, **kwargs})  # type: ignore[arg-type]


def bgr_of(image: Image.Image) -> np.ndarray:
    return cv2.cvtColor(np.asarray(image.convert("RGB")), cv2.COLOR_RGB2BGR)


def assert_clean(decoded: DecodedImage, shape: tuple[int, ...], has_alpha: bool) -> None:
    assert decoded.pixels.shape == shape
    assert decoded.pixels.dtype == np.uint8
    assert decoded.pixels.flags.c_contiguous
    assert decoded.has_alpha is has_alpha


def mean_abs_diff(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a.astype(np.int16) - b.astype(np.int16)).mean())


# --- decode: ordinary photos and modes -----------------------------------------------------


def test_png_photo_is_exact_bgr() -> None:
    decoded = decode(media.astronaut_png())
    assert_clean(decoded, (512, 512, 3), has_alpha=False)
    assert decoded.source_format == "png"
    assert decoded.orientation == 1
    assert np.array_equal(decoded.pixels, bgr_of(media.astronaut_rgb()))


def test_jpeg_photo() -> None:
    decoded = decode(media.astronaut_jpeg())
    assert_clean(decoded, (512, 512, 3), has_alpha=False)
    assert decoded.source_format == "jpeg"
    assert mean_abs_diff(decoded.pixels, bgr_of(media.astronaut_rgb())) < 4


@pytest.mark.parametrize("orientation", range(1, 9))
def test_exif_orientation_restores_upright_photo(orientation: int) -> None:
    decoded = decode(media.exif_rotated_jpeg(orientation))
    width, height = media.EXIF_UPRIGHT_SIZE
    assert_clean(decoded, (height, width, 3), has_alpha=False)
    assert decoded.orientation == orientation
    m = media.EXIF_MARKER
    b, g, r = decoded.pixels[4 : m - 4, 4 : m - 4].reshape(-1, 3).mean(axis=0)
    assert r > 200 and g < 60 and b < 60, "red marker must end up in the top-left corner"
    assert mean_abs_diff(decoded.pixels, bgr_of(media.exif_upright())) < 5


def test_gray_png_becomes_three_equal_channels() -> None:
    decoded = decode(media.gray_png())
    assert_clean(decoded, (512, 512, 3), has_alpha=False)
    px = decoded.pixels
    assert np.array_equal(px[..., 0], px[..., 1]) and np.array_equal(px[..., 1], px[..., 2])


def test_gray_alpha_png_keeps_alpha() -> None:
    decoded = decode(media.gray_alpha_png())
    assert_clean(decoded, (512, 512, 4), has_alpha=True)
    assert np.array_equal(decoded.pixels[..., 3], np.asarray(media.alpha_ramp()))


def test_rgba_png_keeps_alpha_and_colour_order() -> None:
    data = media.rgba_png()
    decoded = decode(data)
    assert_clean(decoded, (256, 256, 4), has_alpha=True)
    reference = np.asarray(Image.open(io.BytesIO(data)))
    assert np.array_equal(decoded.pixels, cv2.cvtColor(reference, cv2.COLOR_RGBA2BGRA))
    assert set(np.unique(decoded.pixels[..., 3])) == {0, 128, 255}


@pytest.mark.parametrize("transparent", [False, True])
def test_palette_png(transparent: bool) -> None:
    decoded = decode(media.palette_png(transparent))
    channels = 4 if transparent else 3
    assert_clean(decoded, (512, 512, channels), has_alpha=transparent)
    if transparent:
        assert (decoded.pixels[..., 3] == 0).any() and (decoded.pixels[..., 3] == 255).any()
    assert mean_abs_diff(decoded.pixels[..., :3], bgr_of(media.astronaut_rgb())) < 12


def test_gray16_png_is_scaled_not_clipped() -> None:
    values = media.gray16_values()
    decoded = decode(media.gray16_png())
    assert_clean(decoded, (512, 512, 3), has_alpha=False)
    assert abs(decoded.pixels.mean() - values.mean() / 257) <= 2
    expected = np.rint(values / 257).astype(np.int16)
    assert np.abs(decoded.pixels[..., 0].astype(np.int16) - expected).max() <= 1


def test_rgb16_png_keeps_channels_apart() -> None:
    values = media.rgb16_values()
    decoded = decode(media.rgb16_png())
    assert_clean(decoded, (512, 512, 3), has_alpha=False)
    for bgr_index, rgb_index in ((0, 2), (1, 1), (2, 0)):
        got = decoded.pixels[..., bgr_index].mean()
        assert abs(got - values[..., rgb_index].mean() / 257) <= 2


def test_cmyk_jpeg_matches_pillow_reference() -> None:
    data = media.cmyk_jpeg()
    decoded = decode(data)
    assert_clean(decoded, (128, 128, 3), has_alpha=False)
    assert decoded.source_format == "jpeg"
    with Image.open(io.BytesIO(data)) as image:
        assert image.mode == "CMYK"
        reference = bgr_of(image)
    assert mean_abs_diff(decoded.pixels, reference) < 2
    # Not inverted: still close to the original photo's colours.
    original = bgr_of(media.astronaut_rgb().resize((128, 128)))
    assert mean_abs_diff(decoded.pixels, original) < 10


def _mode_image(mode: str) -> Image.Image:
    base = media.astronaut_rgb().resize((64, 48))
    if mode.startswith("I;16"):
        # Built from raw bytes: Pillow's convert() into I;16B clips to 0..255.
        array = np.asarray(base.convert("L"), dtype=np.uint16) * 257
        dtype = ">u2" if mode == "I;16B" else "<u2"
        return Image.frombytes(mode, base.size, array.astype(dtype).tobytes())
    if mode == "I":
        return Image.fromarray(np.asarray(base.convert("L"), dtype=np.int32) * 257)
    if mode == "F":
        return Image.fromarray(np.asarray(base.convert("L"), dtype=np.float32) / 255)
    return base.convert(mode)


@pytest.mark.parametrize(
    ("mode", "channels"),
    [
        ("1", 3),
        ("L", 3),
        ("LA", 4),
        ("P", 3),
        ("PA", 4),
        ("RGB", 3),
        ("RGBA", 4),
        ("CMYK", 3),
        ("YCbCr", 3),
        ("I;16", 3),
        ("I;16B", 3),
        ("I", 3),
        ("F", 3),
    ],
)
def test_every_mode_normalises_to_bgr_or_bgra(mode: str, channels: int) -> None:
    source = _mode_image(mode)
    buffer = io.BytesIO()
    source.save(buffer, "TIFF")
    with Image.open(io.BytesIO(buffer.getvalue())) as reopened:
        assert reopened.mode == mode
    decoded = decode(buffer.getvalue())
    assert_clean(decoded, (48, 64, channels), has_alpha=channels == 4)
    assert decoded.source_format == "tiff"
    if mode not in ("1", "P", "PA"):
        gray = np.asarray(media.astronaut_rgb().resize((64, 48)).convert("L"), dtype=np.float32)
        got = cv2.cvtColor(np.ascontiguousarray(decoded.pixels[..., :3]), cv2.COLOR_BGR2GRAY)
        assert abs(float(got.mean()) - float(gray.mean())) <= 3, "levels must survive"


def test_single_frame_gif_is_accepted() -> None:
    decoded = decode(media.single_frame_gif())
    assert decoded.source_format == "gif"
    assert decoded.pixels.shape[:2] == (64, 64)
    assert probe_image(media.single_frame_gif()) == (64, 64, "gif")


def test_mpo_camera_jpeg_uses_primary_image() -> None:
    # Some cameras write MPO (a JPEG plus extra images); it is a still, not an animation.
    photo = media.astronaut_rgb()
    buffer = io.BytesIO()
    photo.save(buffer, "MPO", save_all=True, append_images=[photo.rotate(90)])
    decoded = decode(buffer.getvalue())
    assert decoded.source_format == "jpeg"
    assert mean_abs_diff(decoded.pixels, bgr_of(photo)) < 4


# --- decode: refusals ----------------------------------------------------------------------


@pytest.mark.parametrize("make", [media.animated_gif, media.animated_webp])
def test_animated_images_are_refused(make: Callable[[], bytes]) -> None:
    for call in (
        lambda d: decode(d, field="target_url"),
        lambda d: probe_image(d, field="target_url"),
    ):
        with pytest.raises(AhvError) as info:
            call(make())
        assert info.value.code == "unsupported_media_type"
        assert info.value.message == "target_url: animated images are not supported"


def test_empty_file() -> None:
    with pytest.raises(AhvError) as info:
        decode(b"", field="source_url")
    assert (info.value.code, info.value.message) == ("corrupt_input", "source_url: empty file")
    with pytest.raises(AhvError, match="empty file"):
        probe_image(b"")


def test_text_file_is_unsupported() -> None:
    with pytest.raises(AhvError) as info:
        decode(media.text_file(), field="source_url")
    assert info.value.code == "unsupported_media_type"
    assert info.value.message.startswith("source_url: ")


@pytest.mark.parametrize("make", [media.truncated_jpeg, media.corrupt_png])
def test_truncated_or_corrupt_is_refused(make: Callable[[], bytes]) -> None:
    with pytest.raises(AhvError) as info:
        decode(make(), field="source_url")
    assert info.value.code == "corrupt_input"
    assert info.value.message.startswith("source_url: truncated or corrupt image (")
    assert "Traceback" not in info.value.message


def test_huge_header_is_refused_before_decoding() -> None:
    data = media.huge_header_png(20_000, 20_000)
    assert len(data) < 2_000
    # Far above Pillow's own bomb limit, yet the header is readable (no DecompressionBombError).
    assert probe_image(data) == (20_000, 20_000, "png")
    with pytest.raises(AhvError) as info:
        decode(data, field="source_url")
    err = info.value
    assert (err.code, err.status) == ("image_too_large", 413)
    assert err.message.startswith("source_url: image is 20000x20000 (400000000 pixels)")
    assert "40000000" in err.message and "16384" in err.message


def test_long_strip_is_refused_by_side_limit() -> None:
    with pytest.raises(AhvError) as info:
        decode(media.huge_header_png(1, 50_000))
    assert info.value.code == "image_too_large"
    assert "1x50000" in info.value.message


def test_png_whose_data_ends_early_is_refused() -> None:
    # Valid CRCs and a complete zlib stream, but only one row of pixels: Pillow alone would
    # return a mostly black image.
    with pytest.raises(AhvError) as info:
        decode(media.huge_header_png(3000, 2000), field="source_url")
    assert info.value.code == "corrupt_input"
    assert "ends early" in info.value.message


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "TIFF", "GIF"])
def test_only_our_limit_applies_not_pillows(monkeypatch: pytest.MonkeyPatch, fmt: str) -> None:
    # 64x48 = 3072 px sits between Pillow's warning (2000) and error (4000) thresholds here;
    # neither may fire (warnings are errors in this suite) once our own check has passed.
    buffer = io.BytesIO()
    media.astronaut_rgb().resize((64, 48)).save(buffer, fmt)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 2000)
    assert probe_image(buffer.getvalue())[:2] == (64, 48)
    assert decode(buffer.getvalue()).pixels.shape == (48, 64, 3)


# --- encode --------------------------------------------------------------------------------


def test_png_encode_round_trips_alpha() -> None:
    decoded = decode(media.rgba_png())
    encoded = encode_image(decoded.pixels, has_alpha=True)
    assert (encoded.extension, encoded.content_type) == ("png", "image/png")
    again = decode(encoded.data)
    assert again.has_alpha and np.array_equal(again.pixels, decoded.pixels)


def test_jpeg_encode_is_upright_without_orientation_tag() -> None:
    decoded = decode(media.exif_rotated_jpeg(6))
    encoded = encode_image(decoded.pixels, has_alpha=False, jpeg_quality=90)
    assert (encoded.extension, encoded.content_type) == ("jpg", "image/jpeg")
    with Image.open(io.BytesIO(encoded.data)) as image:
        assert image.format == "JPEG"
        assert image.getexif().get(0x0112) in (None, 1)
    again = decode(encoded.data)
    assert again.orientation == 1
    assert again.pixels.shape == decoded.pixels.shape
    assert mean_abs_diff(again.pixels, decoded.pixels) < 4


def test_jpeg_encode_drops_alpha_channel() -> None:
    decoded = decode(media.rgba_png())
    encoded = encode_image(decoded.pixels, has_alpha=False)
    assert encoded.extension == "jpg"
    assert decode(encoded.data).pixels.shape == (256, 256, 3)


# --- classical upscale ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("size", "scale", "max_side", "expected"),
    [
        ((100, 50), 2.0, None, (200, 100)),
        ((100, 50), 1.5, None, (150, 75)),
        ((101, 33), 1.5, None, (152, 50)),  # 151.5 and 49.5 round half up
        ((100, 50), None, 300, (300, 150)),
        ((50, 100), None, 300, (150, 300)),
        ((1000, 999), None, 10, (10, 10)),
        ((1000, 1), None, 10, (10, 1)),  # never 0 px
        ((100, 50), 4.0, 300, (300, 150)),  # scale, then cap the longest side
        ((100, 50), 2.0, 1000, (200, 100)),  # cap not reached
        ((100, 50), None, None, (200, 100)),  # default x2
    ],
)
def test_plan_upscale_rules(
    size: tuple[int, int], scale: float | None, max_side: int | None, expected: tuple[int, int]
) -> None:
    width, height = size
    got = plan_upscale(width, height, scale=scale, max_side=max_side, max_output_pixels=10**8)
    assert got == expected


def test_plan_upscale_refuses_oversized_output() -> None:
    with pytest.raises(AhvError) as info:
        plan_upscale(6000, 4000, scale=4, max_side=None, max_output_pixels=100_000_000)
    err = info.value
    assert (err.code, err.status) == ("image_too_large", 413)
    assert err.message.startswith(
        "payload.scale: the output would be 24000x16000 (384000000 pixels)"
    )
    assert "100000000" in err.message


def test_plan_upscale_rejects_bad_scale() -> None:
    with pytest.raises(AhvError) as info:
        plan_upscale(10, 10, scale=0, max_side=None, max_output_pixels=100)
    assert info.value.code == "invalid_payload"


@pytest.mark.parametrize("channels", [3, 4])
@pytest.mark.parametrize("target", [(300, 200), (64, 40), (128, 100)])
def test_resize_sizes(channels: int, target: tuple[int, int]) -> None:
    pixels = decode(media.rgba_png()).pixels if channels == 4 else decode(media.gray_png()).pixels
    pixels = np.asarray(cv2.resize(pixels, (128, 96), interpolation=cv2.INTER_AREA), np.uint8)
    out = resize_lanczos(pixels, *target)
    assert out.shape == (target[1], target[0], channels)
    assert out.dtype == np.uint8 and out.flags.c_contiguous
    assert METHOD == "lanczos"


def test_resize_alpha_has_no_dark_fringe() -> None:
    # White opaque square on transparent black: edge pixels must stay white, not grey.
    pixels = np.zeros((32, 32, 4), np.uint8)
    pixels[8:24, 8:24] = 255
    out = resize_lanczos(pixels, 96, 96)
    assert set(np.unique(out[..., 3])) > {0, 255}, "alpha is resized too"
    visible = out[..., 3] >= 16
    assert out[..., :3][visible].min() >= 240
    assert (out[..., 3][:12, :12] == 0).all()


def test_sharpen_zero_is_identity_and_one_adds_contrast() -> None:
    pixels = np.asarray(cv2.resize(decode(media.astronaut_png()).pixels, (256, 256)), np.uint8)
    same = sharpen(pixels, 0)
    assert np.array_equal(same, pixels) and same is not pixels
    sharp = sharpen(pixels, 1.0)
    assert sharp.dtype == np.uint8 and sharp.shape == pixels.shape

    def laplacian_var(img: np.ndarray) -> float:
        return float(cv2.Laplacian(cv2.cvtColor(img, cv2.COLOR_BGR2GRAY), cv2.CV_64F).var())

    assert laplacian_var(sharp) > 1.3 * laplacian_var(pixels)


def test_sharpen_leaves_alpha_alone() -> None:
    pixels = decode(media.rgba_png()).pixels
    sharp = sharpen(pixels, 1.5)
    assert np.array_equal(sharp[..., 3], pixels[..., 3])
    assert not np.array_equal(sharp[..., :3], pixels[..., :3])
