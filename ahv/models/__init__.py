"""Models: the registry of model files named in ahv.toml (`registry`), the one downloader
used by `ahv models fetch` (`fetch`), and the cache of ONNX Runtime sessions (`sessions`).

Importing this package loads neither onnxruntime nor aiohttp; import the submodules."""

from __future__ import annotations

from ahv.models.registry import ModelRegistry, ModelStatus

__all__ = ["ModelRegistry", "ModelStatus"]
