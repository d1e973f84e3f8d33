"""The Gemini API's JSON, as msgspec Structs (requests encoded, answers decoded; unknown
answer fields are ignored). Sources, per call:

- Imagen: `POST /v1beta/models/{model}:predict`, https://ai.google.dev/gemini-api/docs/imagen
  (instances[].prompt; parameters sampleCount, aspectRatio, sampleImageSize, personGeneration,
  includeRaiReason; predictions[].bytesBase64Encoded/mimeType, raiFilteredReason). The guide
  lists the SDK's option names (numberOfImages, imageSize); the JSON names are those of the
  SDK's request mapping (googleapis/python-genai, models.py `_GenerateImagesConfig_to_mldev`:
  number_of_images -> parameters.sampleCount, image_size -> parameters.sampleImageSize).
- Gemini image output: `POST /v1beta/models/{model}:generateContent`,
  https://ai.google.dev/gemini-api/docs/image-generation and
  https://ai.google.dev/api/generate-content (contents[].parts[] text / inline_data;
  generationConfig.responseModalities, imageConfig.aspectRatio; candidates[].content.parts[]
  .inlineData, finishReason, promptFeedback.blockReason).
- Veo: `POST /v1beta/models/{model}:predictLongRunning`, then `GET /v1beta/{operation name}`,
  https://ai.google.dev/gemini-api/docs/video (instances[].prompt, instances[].image
  {bytesBase64Encoded, mimeType}; parameters aspectRatio, durationSeconds, resolution,
  negativePrompt; response.generateVideoResponse.generatedSamples[].video.uri,
  raiMediaFilteredCount, raiMediaFilteredReasons).
"""

from __future__ import annotations

from typing import Any

import msgspec


class _Out(msgspec.Struct, rename="camel", omit_defaults=True, kw_only=True):
    """A request object: camelCase names, unset fields left out."""


class _In(msgspec.Struct, rename="camel", kw_only=True):
    """An answer object: camelCase names, unknown fields ignored."""


# -- Imagen ------------------------------------------------------------------------------------


class ImagenInstance(_Out):
    prompt: str


class ImagenParameters(_Out):
    # No negativePrompt: Imagen 4 on the Gemini API has none (see google.imagen_prompt).
    sample_count: int
    aspect_ratio: str | None = None
    sample_image_size: str | None = None
    person_generation: str | None = None
    # Filtered images come back as a prediction saying why, instead of silently missing.
    include_rai_reason: bool | None = None


class ImagenRequest(_Out):
    instances: list[ImagenInstance]
    parameters: ImagenParameters


class ImagenPrediction(_In):
    bytes_base64_encoded: str | None = None
    mime_type: str | None = None
    rai_filtered_reason: str | None = None


class ImagenResponse(_In):
    predictions: list[ImagenPrediction] = []


# -- generateContent with image output ---------------------------------------------------------


class InlineData(msgspec.Struct, kw_only=True):
    # The REST examples of the image-generation guide spell request parts in snake_case.
    mime_type: str
    data: str


class RequestPart(msgspec.Struct, omit_defaults=True, kw_only=True):
    text: str | None = None
    inline_data: InlineData | None = None


class Content(msgspec.Struct, kw_only=True):
    role: str = "user"
    parts: list[RequestPart]


class ImageConfig(_Out):
    aspect_ratio: str | None = None


class GenerationConfig(_Out):
    response_modalities: list[str]
    image_config: ImageConfig | None = None


class GenerateContentRequest(_Out):
    contents: list[Content]
    generation_config: GenerationConfig


class Blob(_In):
    mime_type: str = ""
    data: str = ""


class ResponsePart(_In):
    text: str | None = None
    inline_data: Blob | None = None
    # A thinking model's reasoning, drafts included (https://ai.google.dev/api/caching#Part):
    # never part of the answer.
    thought: bool = False


class CandidateContent(_In):
    parts: list[ResponsePart] = []


class Candidate(_In):
    content: CandidateContent | None = None
    finish_reason: str | None = None
    finish_message: str | None = None


class PromptFeedback(_In):
    block_reason: str | None = None
    block_reason_message: str | None = None


class GenerateContentResponse(_In):
    candidates: list[Candidate] = []
    prompt_feedback: PromptFeedback | None = None


# -- Veo (long-running operation) --------------------------------------------------------------


class VeoImage(_Out):
    bytes_base64_encoded: str
    mime_type: str


class VeoInstance(_Out):
    prompt: str
    image: VeoImage | None = None


class VeoParameters(_Out):
    aspect_ratio: str | None = None
    duration_seconds: int | None = None
    resolution: str | None = None
    negative_prompt: str | None = None
    person_generation: str | None = None


class VeoRequest(_Out):
    instances: list[VeoInstance]
    parameters: VeoParameters


class VideoRef(_In):
    uri: str = ""


class VideoSample(_In):
    video: VideoRef | None = None


class GenerateVideoResponse(_In):
    generated_samples: list[VideoSample] = []
    rai_media_filtered_count: int = 0
    rai_media_filtered_reasons: list[str] = []


class OperationResponse(_In):
    generate_video_response: GenerateVideoResponse | None = None
    # Vertex AI puts the samples one level up; accepted too.
    generated_samples: list[VideoSample] = []


class OperationError(_In):
    code: int = 0
    message: str = ""


class Operation(_In):
    name: str = ""
    done: bool = False
    error: OperationError | None = None
    response: OperationResponse | None = None
    metadata: dict[str, Any] | None = None
