"""The prose of the docs page: what each task does and what each payload field means.

The tables themselves are generated from the task registry (see `docs_render`); this module
only gives them words. A task or a field without an entry here still gets its row, with a
plain fallback. `vi` keeps the product sheet's original Vietnamese wording where it has one.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Text:
    en: str
    vi: str | None = None


@dataclass(frozen=True)
class TaskDoc:
    title: str
    summary: Text
    details: tuple[str, ...] = ()
    # (label, payload) pairs for the curl examples; fields the task's payload Struct does not
    # have are dropped and missing required ones filled in, so an example never lies.
    examples: tuple[tuple[str, dict[str, Any]], ...] = ()
    result: str = ""
    fields: dict[str, Text] = field(default_factory=dict)
    # The short line of the sheet's "Direct Blocking Endpoints" table (default: the summary).
    endpoint: Text | None = None


_FACE_FIELDS = {
    "target_url": Text("Required. The target image: faces in it are replaced.", "Ảnh đích."),
    "source_url": Text(
        "Image holding the face to put in (one source).", "Ảnh chứa mặt gốc (1 mặt)."
    ),
    "source_urls": Text(
        "Images holding the faces to put in (several sources, up to 16).",
        "Mảng ảnh chứa mặt (Nhiều mặt).",
    ),
    "swap_faces_index": Text(
        "Which face of each source to take (faces are numbered left to right).",
        "Index mặt trong nguồn cần lấy.",
    ),
    "target_faces_index": Text(
        "Which faces of the target to replace.", "Index mặt trong đích cần thay."
    ),
    "max_side": Text(
        "The target is shrunk so that its longest side fits (default 1080).",
        "Resize cạnh lớn nhất (Def: 1080).",
    ),
    "upscale": Text(
        "1: enlarge the result ×2 after the swap (default 1).",
        "Bật Upscale sau khi swap (Def: 1).",
    ),
    "sharpen": Text("Sharpening strength, e.g. 0.12.", "Độ sắc nét (e.g. 0.12)."),
    "max_faces": Text(
        "Most faces processed, the largest first (default 0 = all).",
        "Giới hạn số mặt xử lý (Def: 0 - All).",
    ),
}

_FACE_DETAILS = (
    "Faces are numbered per image left to right by the centre of their box (ties: top to "
    "bottom). result.meta.faces lists them (index, box in output pixels, score) for the target "
    "and for each source, and result.meta.swapped lists what went where, so a client can pick "
    "indexes for a second run.",
    "No face in an input fails the job with no_face_detected (naming the input); an index "
    "beyond the faces found fails with face_index_out_of_range; negative indexes, lists of the "
    "wrong length or a target face listed twice are refused at submit (422). A configured "
    "content filter that refuses an input ends the job rejected (nsfw_blocked).",
)

_SEVERAL_IMAGES = (
    "One or more images: result.url and result.filename are the first; result.files lists "
    "every image ({url, filename, meta: width, height, mime, bytes, index}). result.meta: "
    "width, height and mime of the first, images (how many), provider, model, backend."
)

_BLOCKING = (
    "The direct endpoint takes the same payload as the job, goes through the same queue at high "
    "priority and holds the connection until the job ends; hanging up cancels the job."
)

TASK_DOCS: dict[str, TaskDoc] = {
    "faceswap": TaskDoc(
        endpoint=Text("FaceSwap on an image (single or multi-face)", "Xử lý FaceSwap Ảnh"),
        title="FaceSwap (image) — Mode 1: Single Face",
        summary=Text(
            "One source face onto a target image. Without indexes, the largest source face goes "
            "onto every target face (the max_faces largest when set).",
            "Xử lý FaceSwap Ảnh",
        ),
        details=(
            *_FACE_DETAILS,
            "POST /faceswap serves both modes: a body with source_urls runs faceswap_multi.",
        ),
        examples=(
            (
                "Mode 1: Single Face",
                {
                    "source_url": "https://example.com/face.jpg",
                    "target_url": "https://example.com/body.jpg",
                    "upscale": 1,
                    "max_side": 1280,
                },
            ),
        ),
        result="An image (JPEG, PNG when the target has alpha); meta: width, height, faces, "
        "swapped, backend.",
        fields=_FACE_FIELDS,
    ),
    "faceswap_multi": TaskDoc(
        endpoint=Text("FaceSwap on an image (single or multi-face)", "Xử lý FaceSwap Ảnh"),
        title="FaceSwap (image) — Mode 2: Multi-Face",
        summary=Text(
            "Several source faces onto chosen faces of one target: source image i gives its "
            "face swap_faces_index[i] (default: its largest) to target face "
            "target_faces_index[i] (default: i).",
            "Xử lý FaceSwap Ảnh (nhiều mặt)",
        ),
        details=_FACE_DETAILS,
        examples=(
            (
                "Mode 2: Multi-Face",
                {
                    "source_urls": ["https://ex.com/face1.jpg", "https://ex.com/face2.jpg"],
                    "target_url": "https://example.com/group.jpg",
                    "swap_faces_index": [0, 1],
                    "target_faces_index": [2, 0],
                    "sharpen": 0.5,
                },
            ),
        ),
        result="An image; meta: width, height, faces, swapped, backend.",
        fields=_FACE_FIELDS,
    ),
    "faceswap_video": TaskDoc(
        endpoint=Text("FaceSwap on a video", "Xử lý FaceSwap Video"),
        title="FaceSwap Video",
        summary=Text(
            "The face swap on every frame of a video; audio kept, variable frame rate kept in "
            "sync, rotation applied.",
            "Xử lý FaceSwap Video.",
        ),
        details=(
            "With one source and no target_faces_index, every face of every frame is replaced. "
            "Otherwise the chosen target faces are numbered on the first frame where faces "
            "appear and followed by identity through the video; other faces pass through "
            "unchanged.",
            "progress advances with the frames; cancel stops within a batch of frames and "
            "leaves no file. Too long or too large videos fail with video_too_long or "
            "image_too_large, unreadable ones with corrupt_input or unsupported_media_type.",
        ),
        examples=(
            (
                "Swap one face through a clip",
                {
                    "source_url": "https://example.com/face.jpg",
                    "target_url": "https://example.com/clip.mp4",
                    "max_side": 720,
                    "start_s": 0,
                    "end_s": 10,
                },
            ),
        ),
        result="An MP4 (H.264, yuv420p, 8-bit SDR: HDR input is converted to BT.709 and tagged "
        "so; audio copied or AAC); meta: width, height, fps, frames, "
        "duration_s, has_audio, frames_without_faces, backend.",
        fields={
            **_FACE_FIELDS,
            "target_url": Text("Required. The target video.", "Video đích."),
            "upscale": Text("1: enlarge each frame ×2 after the swap (default 0 for videos)."),
            "start_s": Text("Start of the part of the video to process, in seconds."),
            "end_s": Text("End of the part to process, in seconds (default: the end)."),
        },
    ),
    "upscale": TaskDoc(
        endpoint=Text("Upscale & Restore"),
        title="Upscale & Beauty",
        summary=Text(
            "Super-resolution (a Real-ESRGAN-family model, or Lanczos without one) and face "
            "restore (Upscale & Restore).",
        ),
        details=(
            "Enlarges by scale, or so that the longest side is max_side (both: scale, then cap); "
            "default ×2. Alpha is kept (PNG out), else JPEG. result.meta.method names the model, "
            "or lanczos.",
            "face_restore runs a GFPGAN/CodeFormer-family model on every face found, blended "
            "by fidelity (a CodeFormer model also gets w = 1 − fidelity); "
            "result.meta.faces_restored lists them and result.meta.restorer names the model.",
        ),
        examples=(
            ("Upscale ×2", {"image_url": "https://example.com/photo.jpg", "scale": 2}),
            (
                "Upscale with face restore",
                {
                    "image_url": "https://example.com/portrait.jpg",
                    "max_side": 2048,
                    "face_restore": True,
                    "fidelity": 0.7,
                },
            ),
        ),
        result="An image; meta: width, height, method, backend (and faces_restored, restorer).",
        fields={
            "image_url": Text("Required. The image to enlarge."),
            "scale": Text("Enlargement factor, 2 or 4 (default 2 when max_side is not given)."),
            "max_side": Text("Longest side of the output, in pixels (a cap after scale)."),
            "sharpen": Text("Unsharp-mask strength, 0 to 5 (default 0: none)."),
            "face_restore": Text(
                "Restore faces, the “beauty” pass (needs images.restorer, else model_unavailable)."
            ),
            "fidelity": Text("0 = faces unchanged … 1 = fully restored (default 0.7)."),
        },
    ),
    "ahv_image": TaskDoc(
        endpoint=Text("Image generation (Text2Img, Img2Img)", "Gen Ảnh (Text2Img, Img2Img)"),
        title="AHV Image",
        summary=Text(
            "Image generation by a cloud provider: text-to-image, or image-to-image when input "
            "images (image_urls) are given.",
            "Gen Ảnh (Text2Img, Img2Img)",
        ),
        details=(
            "The job waits on the provider while it works (cancel stops at the next poll); the "
            "generated image is stored here and served from result.url. A prompt the provider "
            "refuses ends the job rejected; other provider failures are provider_error.",
        ),
        examples=(
            ("Text to image", {"prompt": "a lighthouse on a cliff at sunset, photorealistic"}),
            (
                "Image to image",
                {
                    "prompt": "the same scene as a watercolour painting",
                    "image_urls": ["https://example.com/photo.jpg"],
                    "aspect_ratio": "3:2",
                },
            ),
        ),
        result="An image (result.url; result.files lists it with its own meta); meta: width, "
        "height, mime, provider, model, mode, backend.",
    ),
    "ahv_video": TaskDoc(
        endpoint=Text("Video Gen (Veo 3.1 T2V/I2V)"),
        title="AHV Video",
        summary=Text(
            "Video generation with Veo 3.1: text-to-video (T2V), or image-to-video (I2V) from "
            "a first frame."
        ),
        details=(
            "Video generation takes minutes; use POST /v1/jobs with a webhook_url rather than "
            "the blocking endpoint. The provider is polled, and cancel stops at the next poll.",
        ),
        examples=(
            ("Text to video", {"prompt": "a drone shot over a misty pine forest at dawn"}),
            (
                "Image to video",
                {
                    "prompt": "the camera slowly pushes in",
                    "image_url": "https://example.com/first-frame.jpg",
                },
            ),
        ),
        result="An MP4 (result.url; result.files lists it with its own meta); meta: width, "
        "height, duration_s, fps, has_audio, provider, model, mode, backend.",
    ),
    "gg_image": TaskDoc(
        endpoint=Text("GG Image Gen (Imagen 4)"),
        title="GG Image",
        summary=Text("Image generation with Imagen 4 (GG Image Gen)."),
        examples=(
            ("Generate", {"prompt": "a red fox in fresh snow, telephoto"}),
            (
                "Several images",
                {
                    "prompt": "a red fox in fresh snow, telephoto",
                    "number_of_images": 4,
                    "aspect_ratio": "16:9",
                },
            ),
        ),
        result=_SEVERAL_IMAGES,
    ),
    "cx_image": TaskDoc(
        endpoint=Text("CX Image Gen (GPT-5.4 Image)"),
        title="CX Image",
        summary=Text(
            "Image generation and edits with a GPT image model (CX Image Gen, GPT-5.4 Image)."
        ),
        examples=(
            ("Generate", {"prompt": "an isometric illustration of a tiny bakery"}),
            (
                "Several images",
                {
                    "prompt": "an isometric illustration of a tiny bakery",
                    "n": 3,
                    "size": "1536x1024",
                    "quality": "high",
                },
            ),
            (
                "Edit an image",
                {
                    "prompt": "make the sky stormy",
                    "image_urls": ["https://example.com/photo.jpg"],
                    "mask_url": "https://example.com/sky-mask.png",
                },
            ),
        ),
        result=_SEVERAL_IMAGES + " meta.mode: generation or edit.",
    ),
    "remove_object": TaskDoc(
        endpoint=Text("Remove an object (mask or prompt)", "Xóa vật thể (Mask/Prompt)"),
        title="Remove Object",
        summary=Text(
            "Inpaint an object away, chosen by a mask or by a prompt naming it.",
            "Xóa vật thể (Mask/Prompt).",
        ),
        details=(
            "Give exactly one of mask_url and prompt. A prompt is matched against scan_objects' "
            "detections; none found fails with no_object_detected, naming what was found; an "
            "empty mask fails with invalid_mask.",
            "The inpainter is a LaMa-family model, or OpenCV's Telea inpainting without one "
            "(meta.method: lama or cv2_inpaint_telea). Only masked pixels change; alpha is kept.",
        ),
        examples=(
            (
                "By prompt",
                {"image_url": "https://example.com/street.jpg", "prompt": "car", "dilate_px": 20},
            ),
            (
                "By mask",
                {
                    "image_url": "https://example.com/street.jpg",
                    "mask_url": "https://example.com/mask.png",
                },
            ),
        ),
        result="An image of the input's size; meta: width, height, method, mask_fraction, "
        "dilate_px, mask_resized or objects, backend.",
        fields={
            "image_url": Text("Required. The image to edit."),
            "mask_url": Text(
                "A mask image: white = remove (> 127, or 1 in a 0/1 mask); a mask of another "
                "size is resized if it has the image's aspect ratio, else invalid_mask."
            ),
            "prompt": Text(
                'Class names of the objects to remove: "cat", "cat, dog" or ["cat", "dog"].'
            ),
            "dilate_px": Text(
                "Pixels the mask is grown by (default objects.mask_dilate_px for a prompt, 0 for "
                "a mask)."
            ),
        },
    ),
    "scan_objects": TaskDoc(
        endpoint=Text("Detect objects (JSON)", "Detect vật thể (JSON)"),
        title="Scan Objects",
        summary=Text("Detect objects; the answer is JSON boxes.", "Detect vật thể (JSON)."),
        details=(
            "A YOLOv8/v11 detector; boxes are in the upright image's pixels, best score first. "
            "No file is written unless draw is true.",
        ),
        examples=(
            (
                "Detect people and dogs",
                {
                    "image_url": "https://example.com/park.jpg",
                    "classes": ["person", "dog"],
                    "min_score": 0.4,
                },
            ),
        ),
        result="result.meta: {width, height, objects: [{label, score, box: [x1, y1, x2, y2]}], "
        "count, detector, backend}; with draw, result.url is a JPEG with the boxes.",
        fields={
            "image_url": Text("Required. The image to scan."),
            "classes": Text("Keep only these class names (case-insensitive); default: all."),
            "min_score": Text("Least score a detection needs, 0 to 1 (default objects.min_score)."),
            "draw": Text("Also save a JPEG with the boxes drawn (result.url)."),
        },
    ),
    "remove_background": TaskDoc(
        endpoint=Text("Remove the background", "Tách nền"),
        title="Remove Background",
        summary=Text("Cut the subject out, with an alpha matte.", "Tách nền."),
        details=(
            "A matting model (U2Net, ISNet, BiRefNet or MODNet family) gives the matte; without "
            "one configured the job fails with model_unavailable.",
        ),
        examples=(
            ("Transparent cut-out", {"image_url": "https://example.com/product.jpg"}),
            (
                "On a white background",
                {"image_url": "https://example.com/product.jpg", "bg_color": "#ffffff"},
            ),
        ),
        result="An RGBA PNG (or a JPEG over bg_color); meta: width, height, foreground_fraction, "
        "model, backend.",
        fields={
            "image_url": Text("Required. The image to cut out."),
            "bg_color": Text(
                'Flat background colour, "#rrggbb" or "r,g,b"; default: transparent (PNG).'
            ),
        },
    ),
}

# Meanings of field names shared by many tasks (the cloud providers' tasks above all), used
# when a task's own entry has none.
COMMON_FIELDS: dict[str, Text] = {
    "prompt": Text("What to generate (or, for edits, what to change)."),
    "negative_prompt": Text("What the output should not show."),
    "image_url": Text("An input image (image-to-image, edits, a first frame)."),
    "image_urls": Text("Input images (references or edits)."),
    "mask_url": Text("A mask image: white marks the area to change."),
    "aspect_ratio": Text('Aspect ratio of the output, e.g. "16:9", "1:1", "9:16".'),
    "size": Text('Output size, e.g. "1024x1024".'),
    "width": Text("Output width in pixels."),
    "height": Text("Output height in pixels."),
    "resolution": Text('Output resolution, e.g. "720p" or "1080p".'),
    "n": Text("How many outputs to generate."),
    "num_images": Text("How many images to generate."),
    "count": Text("How many outputs to generate."),
    "seed": Text("Random seed, for repeatable results."),
    "model": Text("The provider's model to use (default: the one in ahv.toml)."),
    "quality": Text("Output quality the provider should aim for."),
    "style": Text("A style preset of the provider."),
    "duration_s": Text("Length of the video, in seconds."),
    "duration": Text("Length of the video, in seconds."),
    "fps": Text("Frames per second of the video."),
    "generate_audio": Text("Also generate an audio track."),
    "output_format": Text('File format of the output, e.g. "png" or "jpeg".'),
    "background": Text('Background of the output, e.g. "transparent".'),
    "steps": Text("Sampling steps."),
    "guidance_scale": Text("How closely the output follows the prompt."),
    "strength": Text("How much an input image may change (image-to-image)."),
    "enhance_prompt": Text("Let the provider rewrite the prompt for better results."),
    "person_generation": Text("Whether people may appear in the output (provider setting)."),
    "safety_filter_level": Text("The provider's content-filter level."),
}


def field_text(task: str, name: str, *, common: bool = True) -> Text | None:
    """The words for a payload field: the task's own; with `common`, else the usual meaning
    of the field's name."""
    doc = TASK_DOCS.get(task)
    if doc is not None and name in doc.fields:
        return doc.fields[name]
    if not common:
        return None
    if name in COMMON_FIELDS:
        return COMMON_FIELDS[name]
    if name.endswith("_url"):
        return Text("URL of an input (http or https), fetched by the server.")
    if name.endswith("_urls"):
        return Text("URLs of inputs (http or https), fetched by the server.")
    return None
