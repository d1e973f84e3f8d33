"""scripts/make_test_models.py writes every family's tiny model, and each one loads."""

from __future__ import annotations

from pathlib import Path

import onnxruntime as ort

from scripts.make_test_models import make_all_test_models


def test_every_tiny_model_loads_with_its_signature(tmp_path: Path) -> None:
    paths = {p.stem: p for p in make_all_test_models(tmp_path)}
    assert {"det_10g", "w600k_r50", "inswapper_128", "yolo", "lama", "tiny_matting"} <= set(paths)
    inputs = {}
    for name, path in paths.items():
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        inputs[name] = [i.name for i in session.get_inputs()]
    assert inputs["inswapper_128"] == ["target", "source"]
    assert inputs["det_10g"] == ["input.1"] and inputs["yolo"] == ["images"]
