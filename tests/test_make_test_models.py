"""scripts/make_test_models.py writes every family's tiny model, and each one loads with exactly
the signature the table below gives: input and output names, in order, with their shapes
(a string is a dynamic axis) and element types."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import onnxruntime as ort

from scripts.make_test_models import make_all_test_models

F, D = "tensor(float)", "tensor(double)"
U2NET_MAP = [1, 1, 320, 320]
MAP_1024 = [1, 1, 1024, 1024]
RESTORE = [1, 3, 512, 512]
# name: (inputs, outputs), each a list of (tensor name, shape, element type).
Signature = tuple[list[tuple[str, list[Any], str]], list[tuple[str, list[Any], str]]]
SIGNATURES: dict[str, Signature] = {
    "det_10g": (
        [("input.1", ["N", 3, "H", "W"], F)],
        [
            (f"{head}{stride}", [None, width], F)
            for head, width in (("score", 1), ("bbox", 4), ("kps", 10))
            for stride in (8, 16, 32)
        ],
    ),
    "w600k_r50": ([("input.1", ["N", 3, 112, 112], F)], [("683", ["N", 512], F)]),
    "inswapper_128": (
        [("target", ["N", 3, 128, 128], F), ("source", ["N", 512], F)],
        [("output", ["N", 3, 128, 128], F)],
    ),
    "tiny_matting": ([("input.1", [1, 3, 320, 320], F)], [("d0", U2NET_MAP, F)]),
    "u2net_tiny": (
        [("input.1", [1, 3, 320, 320], F)],
        [(str(1959 + k), U2NET_MAP, F) for k in range(7)],
    ),
    "isnet_tiny": (
        [("input_image", [1, 3, 1024, 1024], F)],
        [("output_image", MAP_1024, F), *((f"side{k}", MAP_1024, F) for k in range(2, 7))],
    ),
    "birefnet_tiny": ([("input_image", [1, 3, 1024, 1024], F)], [("output_image", MAP_1024, F)]),
    "birefnet_dynamic_tiny": (
        [("input_image", [1, 3, "height", "width"], F)],
        [("output", [1, 1, "height", "width"], F)],
    ),
    "modnet_tiny": (
        [("input", ["batch_size", 3, "height", "width"], F)],
        [("output", ["batch_size", 1, "height", "width"], F)],
    ),
    "tiny_sr_x2": ([("input", ["N", 3, "H", "W"], F)], [("output", ["N", 3, "H2", "W2"], F)]),
    "tiny_sr_x4": ([("input", ["N", 3, "H", "W"], F)], [("output", ["N", 3, "H2", "W2"], F)]),
    "tiny_restorer": ([("input", RESTORE, F)], [("output", RESTORE, F)]),
    "tiny_codeformer": (
        [("input", RESTORE, F), ("weight", [1], D)],
        [("output", RESTORE, F)],
    ),
    "yolo": ([("images", [1, 3, 640, 640], F)], [("output0", [1, 7, 8400], F)]),
    "lama": (
        [("image", [1, 3, "H", "W"], F), ("mask", [1, 1, "H", "W"], F)],
        [("output", [1, 3, "H", "W"], F)],
    ),
    "lama_512": (
        [("image", [1, 3, 512, 512], F), ("mask", [1, 1, 512, 512], F)],
        [("output", [1, 3, 512, 512], F)],
    ),
}


def test_every_tiny_model_has_its_signature(tmp_path: Path) -> None:
    paths = {p.stem: p for p in make_all_test_models(tmp_path)}
    assert set(paths) == set(SIGNATURES)
    for name, path in paths.items():
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        inputs = [(i.name, list(i.shape), i.type) for i in session.get_inputs()]
        outputs = [(o.name, list(o.shape), o.type) for o in session.get_outputs()]
        assert (inputs, outputs) == SIGNATURES[name], name


def test_the_models_are_reproducible(tmp_path: Path) -> None:
    first = {p.name: p.read_bytes() for p in make_all_test_models(tmp_path / "a")}
    second = {p.name: p.read_bytes() for p in make_all_test_models(tmp_path / "b")}
    assert first == second
