"""Which source face goes onto which target face: the payload's index rules."""

from __future__ import annotations

from typing import Any

import msgspec
import pytest

from ahv.config import Config
from ahv.errors import AhvError
from ahv.tasks.face_plan import FaceSwapPayload, Swap, plan_swaps, validate_payload

CONFIG = Config()
TARGET_AREAS = [100.0, 400.0, 50.0, 900.0]  # four target faces; face 3 is the largest


def payload(**fields: Any) -> FaceSwapPayload:
    return msgspec.convert({"target_url": "http://x/t.jpg", **fields}, FaceSwapPayload)


def test_single_defaults_put_the_largest_source_face_on_every_target() -> None:
    p = payload(source_url="http://x/s.jpg")
    assert (p.max_side, p.upscale, p.max_faces, p.sharpen) == (1080, 1, 0, 0.0)
    swaps = plan_swaps(p, TARGET_AREAS, [[10.0, 90.0, 20.0]], multi=False)
    assert swaps == [Swap(0, 1, t) for t in range(4)]


def test_max_faces_keeps_the_largest_targets_in_documented_order() -> None:
    p = payload(source_url="http://x/s.jpg", max_faces=2)
    assert [s.target_face for s in plan_swaps(p, TARGET_AREAS, [[1.0]], multi=False)] == [1, 3]


def test_single_with_indexes() -> None:
    p = payload(source_url="http://x/s.jpg", swap_faces_index=[2], target_faces_index=[3, 0])
    assert plan_swaps(p, TARGET_AREAS, [[1.0, 1.0, 1.0]], multi=False) == [
        Swap(0, 2, 3),
        Swap(0, 2, 0),
    ]
    pairs = payload(source_url="s", swap_faces_index=[1, 0], target_faces_index=[0, 1])
    assert plan_swaps(pairs, TARGET_AREAS, [[1.0, 1.0]], multi=False) == [
        Swap(0, 1, 0),
        Swap(0, 0, 1),
    ]


def test_multi_as_the_product_sheet_example() -> None:
    p = payload(
        source_urls=["http://x/1.jpg", "http://x/2.jpg"],
        swap_faces_index=[0, 1],
        target_faces_index=[2, 0],
    )
    validate_payload("faceswap_multi", p, CONFIG)
    swaps = plan_swaps(p, TARGET_AREAS, [[5.0], [5.0, 6.0]], multi=True)
    assert swaps == [Swap(0, 0, 2), Swap(1, 1, 0)]
    # Without indexes: the largest face of source i onto target face i.
    bare = payload(source_urls=["a", "b"])
    assert plan_swaps(bare, TARGET_AREAS, [[1.0, 3.0], [2.0]], multi=True) == [
        Swap(0, 1, 0),
        Swap(1, 0, 1),
    ]


@pytest.mark.parametrize(
    ("task", "fields", "words"),
    [
        ("faceswap", {"source_url": "s", "swap_faces_index": [-1]}, ["swap_faces_index[0]"]),
        ("faceswap", {"source_url": "s", "target_faces_index": [0, 0]}, ["twice"]),
        ("faceswap", {"source_url": "s", "swap_faces_index": [0, 1], "target_faces_index": [0]},
         ["2 indexes", "1"]),
        ("faceswap_multi", {"source_urls": ["a", "b"], "target_faces_index": [0]},
         ["1 indexes for 2 source images"]),
    ],
)  # fmt: skip
def test_index_problems_known_at_submit(
    task: str, fields: dict[str, Any], words: list[str]
) -> None:
    with pytest.raises(AhvError) as caught:
        validate_payload(task, payload(**fields), CONFIG)
    assert caught.value.code == "face_index_out_of_range" and caught.value.status == 422
    for word in words:
        assert word in caught.value.message


@pytest.mark.parametrize(
    ("task", "fields", "word"),
    [
        ("faceswap", {}, "source_url"),
        ("faceswap_multi", {"source_url": "s"}, "source_urls"),
        ("faceswap", {"source_url": "s", "source_urls": ["s"]}, "not both"),
        ("faceswap", {"source_url": "s", "max_side": 99999}, "max_side"),
    ],
)
def test_payload_shape_problems(task: str, fields: dict[str, Any], word: str) -> None:
    with pytest.raises(AhvError) as caught:
        validate_payload(task, payload(**fields), CONFIG)
    assert caught.value.code == "invalid_payload" and word in caught.value.message


def test_indexes_beyond_the_faces_found_name_the_input_and_the_range() -> None:
    p = payload(source_urls=["a", "b"], swap_faces_index=[0, 3])
    with pytest.raises(AhvError) as caught:
        plan_swaps(p, TARGET_AREAS, [[1.0], [1.0, 2.0]], multi=True)
    assert caught.value.code == "face_index_out_of_range"
    assert "source_urls[1]" in caught.value.message and "valid 0–1" in caught.value.message
    p = payload(source_url="s", target_faces_index=[7])
    with pytest.raises(AhvError) as caught:
        plan_swaps(p, TARGET_AREAS, [[1.0]], multi=False)
    assert "4 faces detected in target_url" in caught.value.message


def test_multi_with_one_source_swaps_one_face() -> None:
    p = payload(source_urls=["a"])
    assert plan_swaps(p, TARGET_AREAS, [[1.0]], multi=True) == [Swap(0, 0, 0)]


def test_max_faces_caps_every_mode_and_extra_source_faces_are_refused() -> None:
    p = payload(source_url="s", target_faces_index=[0, 1, 2], max_faces=1)
    assert plan_swaps(p, TARGET_AREAS, [[1.0]], multi=False) == [Swap(0, 0, 0)]
    p = payload(source_url="s", swap_faces_index=[0, 1, 2, 3, 4])
    with pytest.raises(AhvError) as caught:
        plan_swaps(p, TARGET_AREAS, [[1.0] * 5], multi=False)
    assert "5 source faces for 4 target faces" in caught.value.message
    bare = payload(source_urls=["a", "b"])
    with pytest.raises(AhvError) as caught:
        plan_swaps(bare, [1.0], [[1.0], [1.0]], multi=True)
    assert "source_urls[1] (no target_faces_index" in caught.value.message
