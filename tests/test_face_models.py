"""ahv's face pipeline (SCRFD, alignment, ArcFace, inswapper, paste-back) against insightface 2.1
as the reference, on tiny random-weight models with the real signatures
(scripts/make_test_models.py) and two real photos: insightface's t1.jpg (6 people) and
skimage's astronaut."""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import numpy.typing as npt
import onnx
import onnxruntime as ort
import pytest
from insightface.app.common import Face as RefFace
from onnx import TensorProto, helper, numpy_helper

from ahv.errors import AhvError
from ahv.models.face import (
    ArcFace,
    Face,
    InSwapper,
    ScrfdDetector,
    largest_face,
    load_emap,
    order_faces,
    paste_back,
    similarity_matrix,
    warp_crop,
)
from ahv.models.face.align import similarity_matrix64
from ahv.models.face.paste import paste_window
from ahv.models.face.scrfd import nms
from scripts.make_test_models import make_test_models
from tests.media import astronaut_path

Image = npt.NDArray[np.uint8]
CPU = ["CPUExecutionProvider"]
# skimage 0.26 deprecates SimilarityTransform.estimate with a FutureWarning, which insightface's
# estimate_norm (used by its ArcFace and INSwapper) calls on every face.
skimage_estimate_warning = pytest.mark.filterwarnings("ignore::FutureWarning")


def _session(path: Path) -> ort.InferenceSession:
    return ort.InferenceSession(str(path), providers=CPU)


def _insightface_dir() -> Path:
    spec = importlib.util.find_spec("insightface")
    assert spec is not None and spec.submodule_search_locations
    return Path(next(iter(spec.submodule_search_locations)))


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return make_test_models(tmp_path_factory.mktemp("face-models"))


@pytest.fixture(scope="module")
def photos() -> dict[str, Image]:
    t1 = cv2.imread(str(_insightface_dir() / "data" / "images" / "t1.jpg"))
    astronaut = cv2.imread(str(astronaut_path()))
    assert t1 is not None and astronaut is not None
    return {"t1": t1, "astronaut": astronaut}


@pytest.fixture(scope="module")
def ours(models: dict[str, Path]) -> dict[str, Any]:
    return {
        "det": ScrfdDetector(_session(models["det_10g"])),
        "arc": ArcFace(_session(models["w600k_r50"])),
        "swap": InSwapper(_session(models["inswapper_128"]), load_emap(models["inswapper_128"])),
    }


@pytest.fixture(scope="module")
def ref(models: dict[str, Path]) -> dict[str, Any]:
    """insightface's own objects, built straight from the model files on CPU."""
    from insightface.model_zoo.arcface_onnx import ArcFaceONNX
    from insightface.model_zoo.inswapper import INSwapper
    from insightface.model_zoo.model_zoo import get_model

    det = get_model(str(models["det_10g"]), providers=CPU)
    det.prepare(ctx_id=-1, input_size=(640, 640))
    arc = ArcFaceONNX(str(models["w600k_r50"]), session=_session(models["w600k_r50"]))
    swap = INSwapper(str(models["inswapper_128"]), session=_session(models["inswapper_128"]))
    return {"det": det, "arc": arc, "swap": swap}


def _ref_faces(ref: dict[str, Any], image: Image) -> list[Any]:
    """insightface Face objects in its own (score) order, like FaceAnalysis.get."""
    boxes, kpss = ref["det"].detect(image)
    return [RefFace(bbox=b[:4], kps=k, det_score=b[4]) for b, k in zip(boxes, kpss, strict=True)]


def _as_face(face: Any) -> Face:
    return Face(box=face.bbox, score=float(face.det_score), landmarks=face.kps)


def _counting(monkeypatch: pytest.MonkeyPatch, session: ort.InferenceSession) -> list[int]:
    """Patch session.run to record the batch size of each call."""
    calls: list[int] = []
    real: Callable[..., Any] = session.run

    def run(names: Any, feeds: dict[str, Any], *args: Any) -> Any:
        calls.append(next(iter(feeds.values())).shape[0])
        return real(names, feeds, *args)

    monkeypatch.setattr(session, "run", run)
    return calls


# --- types ------------------------------------------------------------------------------


def _face(x1: float, y1: float, x2: float, y2: float, score: float = 0.9) -> Face:
    box = np.array([x1, y1, x2, y2], dtype=np.float32)
    return Face(box=box, score=score, landmarks=np.zeros((5, 2), dtype=np.float32))


def test_order_faces_left_to_right_then_top_then_score() -> None:
    a, b = _face(100, 0, 120, 20), _face(0, 50, 20, 70)
    c_low, c_high = _face(0, 0, 20, 20, 0.6), _face(0, 0, 20, 20, 0.9)
    assert order_faces([a, c_low, b, c_high]) == [c_high, c_low, b, a]
    assert largest_face([a, _face(0, 0, 50, 50), b]).box[2] == 50
    with pytest.raises(ValueError):
        largest_face([])


# --- detection --------------------------------------------------------------------------


@pytest.mark.parametrize("photo", ["t1", "astronaut"])
def test_detector_matches_insightface(
    photo: str, photos: dict[str, Image], ours: dict[str, Any], ref: dict[str, Any]
) -> None:
    mine = ours["det"].detect(photos[photo])
    theirs = order_faces([_as_face(f) for f in _ref_faces(ref, photos[photo])])
    assert len(mine) == len(theirs) > 0
    if photo == "t1":
        assert len(mine) == 6  # the tiny detector is tuned to find 6 "faces" here
    assert mine == order_faces(mine)
    for a, b in zip(mine, theirs, strict=True):
        np.testing.assert_allclose(a.box, b.box, atol=1e-3)
        np.testing.assert_allclose(a.landmarks, b.landmarks, atol=1e-3)
        assert abs(a.score - b.score) < 1e-3
        assert a.box.dtype == np.float32 and a.landmarks.shape == (5, 2)


def test_nms_matches_insightface(ref: dict[str, Any]) -> None:
    # Dense, heavily overlapping small boxes, where the (w+1)(h+1) areas and the stable order
    # of equal scores decide what is kept.
    rng = np.random.default_rng(3)
    xy = rng.uniform(0, 60, (400, 2))
    wh = rng.uniform(3, 30, (400, 2))
    scores = rng.choice([0.6, 0.7, 0.8, 0.9], 400)
    dets = np.hstack([xy, xy + wh, scores[:, None]]).astype(np.float32)
    assert nms(dets, 0.4) == [int(i) for i in ref["det"].nms(dets)]


def _variant(src: Path, dst: Path, edit: Callable[[onnx.ModelProto], None]) -> Path:
    model = onnx.load(str(src))
    edit(model)
    onnx.save(model, str(dst))
    return dst


def test_detector_fixed_input_size_and_3d_outputs(
    models: dict[str, Path], photos: dict[str, Image], tmp_path: Path
) -> None:
    from insightface.model_zoo.scrfd import SCRFD

    def fixed_3d(model: onnx.ModelProto) -> None:
        # A 320×320 export with a batch axis on every output, like some SCRFD variants.
        dims = model.graph.input[0].type.tensor_type.shape.dim
        for dim, value in zip(dims, (1, 3, 320, 320), strict=True):
            dim.dim_value = value
        axes = numpy_helper.from_array(np.array([0], dtype=np.int64), "batch_axis")
        model.graph.initializer.append(axes)
        for out in model.graph.output:
            for node in model.graph.node:
                node.output[:] = [o + "_2d" if o == out.name else o for o in node.output]
            model.graph.node.append(
                helper.make_node("Unsqueeze", [out.name + "_2d", "batch_axis"], [out.name])
            )
            width = out.type.tensor_type.shape.dim[-1].dim_value
            out.CopyFrom(
                helper.make_tensor_value_info(out.name, TensorProto.FLOAT, [1, None, width])
            )

    path = _variant(models["det_10g"], tmp_path / "det_320.onnx", fixed_3d)
    detector = ScrfdDetector(_session(path), input_size=(640, 640))
    assert detector.input_size == (320, 320)
    reference = SCRFD(str(path), session=_session(path))
    reference.prepare(ctx_id=-1, input_size=(640, 640))  # ignored: the model is fixed
    boxes, kpss = reference.detect(photos["t1"])
    mine = detector.detect(photos["t1"])
    theirs = order_faces([Face(b[:4], float(b[4]), k) for b, k in zip(boxes, kpss, strict=True)])
    assert len(mine) == len(theirs) > 0
    for a, b in zip(mine, theirs, strict=True):
        np.testing.assert_allclose(a.box, b.box, atol=1e-3)
        np.testing.assert_allclose(a.landmarks, b.landmarks, atol=1e-3)


def test_detector_without_keypoints_is_refused(models: dict[str, Path], tmp_path: Path) -> None:
    def drop_kps(model: onnx.ModelProto) -> None:
        keep = [o for o in model.graph.output if not o.name.startswith("kps")]
        del model.graph.output[:]
        model.graph.output.extend(keep)

    path = _variant(models["det_10g"], tmp_path / "det_nokps.onnx", drop_kps)
    with pytest.raises(AhvError) as err:
        ScrfdDetector(_session(path))
    assert err.value.code == "model_unavailable"
    assert "no landmarks" in err.value.message


# --- alignment --------------------------------------------------------------------------


@skimage_estimate_warning
def test_similarity_matrix_matches_estimate_norm(
    photos: dict[str, Image], ours: dict[str, Any]
) -> None:
    from insightface.utils import face_align

    rng = np.random.default_rng(7)
    points = [f.landmarks for f in ours["det"].detect(photos["t1"])]
    points += [(p + rng.normal(0, 4, p.shape)).astype(np.float32) for p in points]
    for landmarks in points:
        for size in (112, 128):
            matrix = similarity_matrix(landmarks, size)
            assert matrix.shape == (2, 3) and matrix.dtype == np.float32
            expected = face_align.estimate_norm(landmarks, size)
            np.testing.assert_allclose(matrix, expected, atol=1e-4)
            np.testing.assert_allclose(similarity_matrix64(landmarks, size), expected, atol=1e-9)
        crop = warp_crop(photos["t1"], similarity_matrix64(landmarks, 112), 112)
        np.testing.assert_array_equal(crop, face_align.norm_crop(photos["t1"], landmarks, 112))


# --- embeddings -------------------------------------------------------------------------


@skimage_estimate_warning
def test_arcface_matches_insightface_in_one_run(
    photos: dict[str, Image],
    ours: dict[str, Any],
    ref: dict[str, Any],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    faces = ours["det"].detect(photos["t1"])
    calls = _counting(monkeypatch, ours["arc"].session)
    embeddings = ours["arc"].embed(photos["t1"], faces)
    assert calls == [len(faces)]  # one batched run for all 6 faces
    assert embeddings.shape == (len(faces), 512) and embeddings.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(embeddings, axis=1), 1.0, atol=1e-5)
    for face, row in zip(faces, embeddings, strict=True):
        theirs = RefFace(bbox=face.box, kps=face.landmarks, det_score=face.score)
        ref["arc"].get(photos["t1"], theirs)
        np.testing.assert_allclose(row, theirs.normed_embedding, atol=1e-4)
    assert ours["arc"].embed(photos["t1"], []).shape == (0, 512)


def test_arcface_fixed_batch_runs_per_face(
    models: dict[str, Path],
    photos: dict[str, Image],
    ours: dict[str, Any],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def batch_one(model: onnx.ModelProto) -> None:
        for value in (model.graph.input[0], model.graph.output[0]):
            value.type.tensor_type.shape.dim[0].dim_value = 1

    path = _variant(models["w600k_r50"], tmp_path / "arc_b1.onnx", batch_one)
    fixed = ArcFace(_session(path))
    assert not fixed.batched
    faces = ours["det"].detect(photos["t1"])
    calls = _counting(monkeypatch, fixed.session)
    np.testing.assert_allclose(
        fixed.embed(photos["t1"], faces), ours["arc"].embed(photos["t1"], faces), atol=1e-5
    )
    assert calls == [1] * len(faces)


# --- inswapper --------------------------------------------------------------------------


def test_load_emap_is_the_last_initializer_and_cached(
    models: dict[str, Path], tmp_path: Path
) -> None:
    model = tmp_path / "inswapper_128.onnx"
    model.write_bytes(models["inswapper_128"].read_bytes())
    expected = numpy_helper.to_array(onnx.load(str(model)).graph.initializer[-1])
    emap = load_emap(model)
    assert emap.shape == (512, 512) and emap.dtype == np.float32
    np.testing.assert_array_equal(emap, expected)
    (cache,) = tmp_path.glob("inswapper_128.onnx.emap-*.npy")
    assert [p.name for p in tmp_path.iterdir() if p.suffix == ".tmp"] == []
    # The cache of this very file (same size and mtime) is used as is, so a marked one
    # comes back ...
    np.save(cache, np.eye(512, dtype=np.float32))
    assert load_emap(model)[0, 0] == 1.0
    # ... and a replaced model never meets it, even one copied with an older timestamp.
    stamp = model.stat().st_mtime_ns
    model.write_bytes(model.read_bytes())
    os.utime(model, ns=(stamp - 10**9, stamp - 10**9))
    np.testing.assert_array_equal(load_emap(model), expected)
    assert [p.name for p in tmp_path.glob("*.npy")] != [cache.name]  # the stale one is gone


@skimage_estimate_warning
def test_swap_matches_insightface(
    photos: dict[str, Image],
    ours: dict[str, Any],
    ref: dict[str, Any],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    t1, astronaut = photos["t1"], photos["astronaut"]
    # ahv: detect, embed the astronaut's largest face, swap all 6 faces in one batched run.
    source = largest_face(ours["det"].detect(astronaut))
    embedding = ours["arc"].embed(astronaut, [source])
    targets = ours["det"].detect(t1)
    calls = _counting(monkeypatch, ours["swap"].session)
    swapped = ours["swap"].swap(t1, targets, embedding)
    assert calls == [len(targets)] and len(targets) == 6
    assert swapped.shape == t1.shape and swapped.dtype == np.uint8
    assert swapped is not t1 and (swapped != t1).any()

    # insightface: the same, face by face, each pasted onto the previous result.
    ref_sources = _ref_faces(ref, astronaut)
    ref_source = max(ref_sources, key=lambda f: (f.bbox[2] - f.bbox[0]) * (f.bbox[3] - f.bbox[1]))
    ref["arc"].get(astronaut, ref_source)
    expected = t1.copy()
    for face in _ref_faces(ref, t1):
        expected = ref["swap"].get(expected, face, ref_source, paste_back=True)
    diff = np.abs(swapped.astype(np.int16) - expected.astype(np.int16))
    assert diff.mean() < 1.0, diff.mean()
    # With these models no face's crop reaches a neighbour's pasted region, so batching (all
    # crops cut from the original) changes nothing: only warpAffine's rounding differs.
    assert diff.max() <= 2 and (diff > 0).mean() < 1e-4, (diff.max(), (diff > 0).sum())

    # Nothing outside the faces' paste windows changed, here or in insightface's result.
    outside = np.ones(t1.shape[:2], dtype=bool)
    for face in targets:
        window = paste_window(similarity_matrix64(face.landmarks, 128), (128, 128), t1.shape[:2])
        assert window is not None
        x0, y0, x1, y1 = window
        outside[y0:y1, x0:x1] = False
    assert outside.any()
    np.testing.assert_array_equal(swapped[outside], t1[outside])
    np.testing.assert_array_equal(expected[outside], t1[outside])


@skimage_estimate_warning
def test_windowed_paste_back_equals_full_frame(
    photos: dict[str, Image], ours: dict[str, Any], ref: dict[str, Any]
) -> None:
    """One face at a time there is no order effect: the windowed paste must reproduce
    insightface's full-frame paste-back to within warpAffine's fixed-point rounding."""
    t1 = photos["t1"]
    source = largest_face(ours["det"].detect(photos["astronaut"]))
    embedding = ours["arc"].embed(photos["astronaut"], [source])
    ref_source = RefFace(embedding=embedding[0])
    for face in ours["det"].detect(t1):
        matrix = similarity_matrix64(face.landmarks, 128)
        crop = ours["swap"].swap_crops(
            [warp_crop(t1, matrix, 128)], ours["swap"].latents(embedding)
        )
        mine = paste_back(t1, crop[0], matrix)
        theirs_face = RefFace(bbox=face.box, kps=face.landmarks, det_score=face.score)
        theirs = ref["swap"].get(t1, theirs_face, ref_source, paste_back=True)
        diff = np.abs(mine.astype(np.int16) - theirs.astype(np.int16))
        assert diff.max() <= 2 and (diff > 0).mean() < 1e-4, (diff.max(), (diff > 0).sum())
        into = t1.copy()
        assert paste_back(t1, crop[0], matrix, into=into) is into
        np.testing.assert_array_equal(into, mine)


@skimage_estimate_warning
def test_swap_fixed_batch_runs_per_face(
    models: dict[str, Path],
    photos: dict[str, Image],
    ours: dict[str, Any],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def batch_one(model: onnx.ModelProto) -> None:
        for value in (*model.graph.input, *model.graph.output):
            value.type.tensor_type.shape.dim[0].dim_value = 1

    path = _variant(models["inswapper_128"], tmp_path / "swap_b1.onnx", batch_one)
    fixed = InSwapper(_session(path), load_emap(path))
    assert not fixed.batched
    faces = ours["det"].detect(photos["t1"])
    embeddings = ours["arc"].embed(photos["t1"], faces[::-1])  # a different source per face
    calls = _counting(monkeypatch, fixed.session)
    swapped = fixed.swap(photos["t1"], faces, embeddings)
    assert calls == [1] * len(faces)
    expected = ours["swap"].swap(photos["t1"], faces, embeddings)
    assert np.abs(swapped.astype(np.int16) - expected.astype(np.int16)).max() <= 1


def test_swap_edge_cases(photos: dict[str, Image], ours: dict[str, Any]) -> None:
    t1 = photos["t1"]
    embedding = np.ones((1, 512), dtype=np.float32)
    unchanged = ours["swap"].swap(t1, [], embedding)
    assert unchanged is not t1
    np.testing.assert_array_equal(unchanged, t1)
    faces = ours["det"].detect(t1)
    with pytest.raises(ValueError):
        ours["swap"].swap(t1, faces, np.ones((2, 512), dtype=np.float32))
    # A face whose crop lies entirely outside the frame changes nothing.
    far = Face(faces[0].box + 10_000, faces[0].score, faces[0].landmarks + 10_000)
    np.testing.assert_array_equal(ours["swap"].swap(t1, [far], embedding), t1)
