"""The zipapp's requirement list and the smoke check's own image reader. (The zipapp itself is
built and run end to end by .ci/run: scripts/build_zipapp.py, then scripts/zipapp_smoke.py.)"""

from __future__ import annotations

import io
import tomllib
from pathlib import Path

from PIL import Image

from scripts.build_zipapp import runtime_requirements
from scripts.zipapp_smoke import image_size, png_rgb

PYPROJECT = Path(__file__).resolve().parent.parent / "pyproject.toml"


def declared() -> list[str]:
    deps: list[str] = tomllib.loads(PYPROJECT.read_text())["project"]["dependencies"]
    return deps


def test_cpu_flavour_swaps_onnxruntime_gpu_for_onnxruntime() -> None:
    deps = declared()
    (gpu_line,) = [d for d in deps if d.startswith("onnxruntime-gpu")]
    cpu = runtime_requirements(PYPROJECT, "cpu")
    assert not [d for d in cpu if "onnxruntime-gpu" in d]
    assert "onnxruntime" + gpu_line.removeprefix("onnxruntime-gpu") in cpu  # same versions
    # Everything else as declared, in order; nothing from the dev extras.
    assert [d for d in cpu if not d.startswith("onnxruntime")] == [
        d for d in deps if not d.startswith("onnxruntime")
    ]
    assert not [d for d in cpu if d.split(">")[0] in ("pytest", "insightface", "ruff", "mypy")]


def test_gpu_flavour_keeps_onnxruntime_gpu() -> None:
    deps = declared()
    assert runtime_requirements(PYPROJECT, "gpu") == deps
    with_libs = runtime_requirements(PYPROJECT, "gpu", cuda_libs=True)
    (line,) = [d for d in with_libs if d.startswith("onnxruntime")]
    assert line.startswith("onnxruntime-gpu[cuda,cudnn]")


def test_smoke_image_reader() -> None:
    png = png_rgb(96, 64)
    assert image_size(png) == ("png", 96, 64)
    with Image.open(io.BytesIO(png)) as decoded:
        assert decoded.size == (96, 64) and decoded.mode == "RGB"
        buffer = io.BytesIO()
        decoded.save(buffer, "JPEG", exif=b"Exif\0\0" + b"\0" * 64)
    assert image_size(buffer.getvalue()) == ("jpeg", 96, 64)
