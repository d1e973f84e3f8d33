"""Preamble of a `--flavour gpu --cuda-libs` zipapp, run by shiv before `ahv`'s entry point.

onnxruntime-gpu does not find the CUDA and cuDNN libraries of NVIDIA's pip wheels by itself on
Linux (they are not on the loader's path); `onnxruntime.preload_dlls()` loads them from the
`nvidia/` packages next to it, so that the CUDA provider's own libraries resolve to them.
Skipped when the wheels are absent, so it costs nothing elsewhere.
"""

import importlib.util

if importlib.util.find_spec("nvidia") is not None:
    import onnxruntime

    onnxruntime.preload_dlls(directory="")
