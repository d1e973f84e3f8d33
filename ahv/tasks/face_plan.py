"""Which source face goes onto which target face: the payload's indexes, checked.

Faces are numbered per image in ahv's documented order (left to right by box centre, then
top to bottom; see ahv.models.face.types.order_faces). What can be checked without the
images is checked at submit (HTTP 422); the rest once the faces are found.
"""

from __future__ import annotations

from typing import Annotated, Literal, NamedTuple

import msgspec

from ahv.config import Config
from ahv.errors import AhvError

FaceIndexes = Annotated[list[int], msgspec.Meta(max_length=64)]


class FaceSwapPayload(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    target_url: str
    source_url: str | None = None
    source_urls: Annotated[list[str], msgspec.Meta(min_length=1, max_length=16)] | None = None
    swap_faces_index: FaceIndexes | None = None
    target_faces_index: FaceIndexes | None = None
    max_side: Annotated[int, msgspec.Meta(ge=64)] = 1080
    upscale: Literal[0, 1] = 1
    sharpen: Annotated[float, msgspec.Meta(ge=0, le=5)] = 0.0
    max_faces: Annotated[int, msgspec.Meta(ge=0)] = 0

    def sources(self) -> list[tuple[str, str]]:
        """(field name, url) of each source image, in order."""
        if self.source_urls is not None:
            return [(f"source_urls[{i}]", url) for i, url in enumerate(self.source_urls)]
        assert self.source_url is not None
        return [("source_url", self.source_url)]


class Swap(NamedTuple):
    source: int  # which source image
    source_face: int  # which face of it
    target_face: int  # onto which face of the target


def index_error(message: str, *, at_submit: bool) -> AhvError:
    return AhvError("face_index_out_of_range", message, status=422 if at_submit else 400)


def validate_payload(task: str, payload: FaceSwapPayload, config: Config) -> None:
    """Submit-time checks: the shape of the request, not its images."""
    multi = task == "faceswap_multi"
    if payload.source_url is not None and payload.source_urls is not None:
        raise AhvError(
            "invalid_payload", "payload: give source_url or source_urls, not both", status=422
        )
    if multi and payload.source_urls is None:
        raise AhvError("invalid_payload", "payload.source_urls: required", status=422)
    if not multi and payload.source_url is None and payload.source_urls is None:
        raise AhvError("invalid_payload", "payload.source_url: required", status=422)
    if payload.max_side > config.limits.max_side:
        raise AhvError(
            "invalid_payload",
            f"payload.max_side: {payload.max_side} is over the limit {config.limits.max_side}",
            status=422,
        )
    for name in ("swap_faces_index", "target_faces_index"):
        values = getattr(payload, name) or []
        for i, value in enumerate(values):
            if value < 0:
                raise index_error(f"payload.{name}[{i}]: {value} is negative", at_submit=True)
    swap, target = payload.swap_faces_index, payload.target_faces_index
    if multi or (payload.source_urls is not None and len(payload.source_urls) > 1):
        count = len(payload.sources())
        for name, values in (("swap_faces_index", swap), ("target_faces_index", target)):
            if values is not None and len(values) != count:
                raise index_error(
                    f"payload.{name}: {len(values)} indexes for {count} source images",
                    at_submit=True,
                )
    elif swap is not None and target is not None and len(swap) > 1 and len(swap) != len(target):
        raise index_error(
            f"payload: swap_faces_index has {len(swap)} indexes, target_faces_index "
            f"{len(target)}; give one source face, or one per target face",
            at_submit=True,
        )
    if target is not None and len(set(target)) != len(target):
        raise index_error(
            "payload.target_faces_index: a target face is listed twice", at_submit=True
        )


def plan_swaps(
    payload: FaceSwapPayload,
    target_areas: list[float],
    source_areas: list[list[float]],
    *,
    multi: bool,
) -> list[Swap]:
    """The swaps to make, from the faces found (their box areas, in documented order).
    `max_faces` (when not 0) caps the number of swaps in every mode."""
    swap, target = payload.swap_faces_index, payload.target_faces_index
    largest = [max(range(len(a)), key=a.__getitem__) if a else 0 for a in source_areas]
    if multi or len(source_areas) > 1:
        pairs = [
            Swap(i, swap[i] if swap else largest[i], target[i] if target else i)
            for i in range(len(source_areas))
        ]
    else:
        targets = target if target is not None else _all_targets(target_areas, payload.max_faces)
        if swap is not None and len(swap) > 1:
            if len(swap) > len(targets):
                raise index_error(
                    f"payload.swap_faces_index: {len(swap)} source faces for {len(targets)} "
                    "target faces",
                    at_submit=False,
                )
            pairs = [Swap(0, s, t) for s, t in zip(swap, targets, strict=False)]
        else:
            face = swap[0] if swap else largest[0]
            pairs = [Swap(0, face, t) for t in targets]
    pairs = pairs[: payload.max_faces] if payload.max_faces else pairs
    _check_ranges(pairs, payload, target_areas, source_areas)
    return pairs


def _all_targets(target_areas: list[float], max_faces: int) -> list[int]:
    indexes = list(range(len(target_areas)))
    if max_faces and len(indexes) > max_faces:
        # The largest faces are the ones that matter; keep them, in documented order.
        indexes = sorted(sorted(indexes, key=lambda i: -target_areas[i])[:max_faces])
    return indexes


def _check_ranges(
    pairs: list[Swap],
    payload: FaceSwapPayload,
    target_areas: list[float],
    source_areas: list[list[float]],
) -> None:
    fields = payload.sources()
    for n, pair in enumerate(pairs):
        found = len(source_areas[pair.source])
        if pair.source_face >= found:
            raise index_error(
                f"payload.swap_faces_index[{n}]: face {pair.source_face} requested, {found} "
                f"faces detected in {fields[pair.source][0]} (valid 0–{found - 1})",
                at_submit=False,
            )
        if pair.target_face >= len(target_areas):
            where = (
                f"payload.target_faces_index[{n}]"
                if payload.target_faces_index is not None
                else f"{fields[pair.source][0]} (no target_faces_index: it goes to face {n})"
            )
            raise index_error(
                f"{where}: face {pair.target_face} requested, "
                f"{len(target_areas)} faces detected in target_url "
                f"(valid 0–{len(target_areas) - 1})",
                at_submit=False,
            )
