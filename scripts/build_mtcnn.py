"""Converts the `mtcnn` package's weights into ONNX graphs: python scripts/build_mtcnn.py DIR."""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: python scripts/build_mtcnn.py MODELS_DIR", file=sys.stderr)
        return 2
    if str(ROOT) not in sys.path:  # runs from a checkout without ahv installed too
        sys.path.insert(0, str(ROOT))
    from ahv.models.face.mtcnn import build_mtcnn_models

    for path in build_mtcnn_models(Path(argv[0])).values():
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
