#!/usr/bin/env python3
"""Build `dist/ahv.pyz`: ahv and all its runtime dependencies in one file (a shiv zipapp).

    python scripts/build_zipapp.py [--flavour cpu|gpu] [--cuda-libs] [--out dist/ahv.pyz]

Run it with the Python the zipapp will run on (same minor version and platform: the native
wheels inside are that interpreter's), with shiv installed (it is in `.[dev]`), e.g.
`.venv/bin/python scripts/build_zipapp.py`. The result runs with nothing but that Python:
`python3 dist/ahv.pyz serve --config ahv.toml`.

- The requirements are pyproject.toml's `project.dependencies`; the `cpu` flavour swaps
  `onnxruntime-gpu` for `onnxruntime` with the same version specifier, the `gpu` flavour keeps
  `onnxruntime-gpu` (and with `--cuda-libs` adds its `[cuda,cudnn]` extras: NVIDIA's CUDA and
  cuDNN wheels, so the box needs only the driver, and scripts/zipapp_cuda_preamble.py, which
  preloads them at start). The two onnxruntime packages never meet in
  one environment: everything is installed into a fresh folder under a temporary build
  directory, never into the interpreter running this script.
- ahv itself is installed from a copy of the source tree (pyproject.toml, README.md, ahv/) as
  a wheel, so its package data (every non-Python file under ahv/) is what pip would install.
- Model files are not bundled: operators fetch them with `ahv models fetch NAME`.
- At its first start the zipapp extracts its site-packages to `$SHIV_ROOT` (default
  `~/.shiv`, or the `--root` given here), once per build; later starts reuse it.
"""

from __future__ import annotations

import argparse
import importlib.util
import re
import shutil
import subprocess
import sys
import tempfile
import time
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
GPU_RUNTIME = "onnxruntime-gpu"
CPU_RUNTIME = "onnxruntime"
_NAME = re.compile(r"^\s*([A-Za-z0-9][A-Za-z0-9._-]*)(\[[^\]]*\])?(.*)$")


def runtime_requirements(pyproject: Path, flavour: str, cuda_libs: bool = False) -> list[str]:
    """pyproject's runtime dependencies with the ONNX Runtime package the flavour asks for."""
    deps: list[str] = tomllib.loads(pyproject.read_text())["project"]["dependencies"]
    out: list[str] = []
    for dep in deps:
        match = _NAME.match(dep)
        if match is None:
            raise SystemExit(f"cannot read the requirement {dep!r} in {pyproject}")
        name, _extras, rest = match.groups()
        if name.lower().replace("_", "-") == GPU_RUNTIME:
            if flavour == "cpu":
                dep = CPU_RUNTIME + rest
            elif cuda_libs:
                dep = f"{GPU_RUNTIME}[cuda,cudnn]{rest}"
        out.append(dep)
    return out


def copy_source(dest: Path) -> None:
    """The files a wheel of ahv is built from, without caches or a build/ left by an earlier
    in-tree build (stale modules there would end up in the wheel)."""
    dest.mkdir(parents=True)
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(ROOT / name, dest / name)
    shutil.copytree(
        ROOT / "ahv", dest / "ahv", ignore=shutil.ignore_patterns("__pycache__", "*.py[co]")
    )


def check_package_data(src: Path, site: Path) -> None:
    """Every non-Python file of the source package made it in (pyproject's package-data)."""
    missing = [
        str(path.relative_to(src))
        for path in sorted(src.rglob("*"))
        if path.is_file() and path.suffix != ".py" and not (site / path.relative_to(src)).is_file()
    ]
    if missing:
        raise SystemExit(f"package data missing from the build: {', '.join(missing)}")


def pip(*args: str) -> None:
    # --no-compile: no .pyc in the archive (smaller); the first start compiles what it imports
    # into the extracted folder. --no-warn-conflicts: pip would compare the target with the
    # packages of the interpreter running it (the dev venv), which do not go in.
    command = [
        sys.executable,
        "-m",
        "pip",
        "install",
        "--no-compile",
        "--no-warn-conflicts",
        "--quiet",
        *args,
    ]
    print("+", " ".join(command), flush=True)
    subprocess.run(command, check=True)


def build(
    out: Path,
    flavour: str,
    *,
    cuda_libs: bool = False,
    root: str | None = None,
    python: str = "/usr/bin/env python3",
) -> Path:
    if importlib.util.find_spec("shiv") is None:
        raise SystemExit("shiv is not installed for this Python: pip install shiv (in '.[dev]')")
    requirements = runtime_requirements(ROOT / "pyproject.toml", flavour, cuda_libs)
    with tempfile.TemporaryDirectory(prefix="ahv-zipapp-") as tmp:
        build_dir = Path(tmp)
        site = build_dir / "site-packages"
        req_file = build_dir / "requirements.txt"
        req_file.write_text("\n".join(requirements) + "\n")
        print(f"requirements ({flavour}): {', '.join(requirements)}", flush=True)
        # --target implies --ignore-installed: the running interpreter's packages are neither
        # used nor touched.
        pip("--target", str(site), "-r", str(req_file))
        # Console scripts of the dependencies point at this interpreter: of no use inside.
        shutil.rmtree(site / "bin", ignore_errors=True)
        copy_source(build_dir / "src")
        pip("--target", str(site), "--no-deps", str(build_dir / "src"))
        check_package_data(build_dir / "src" / "ahv", site / "ahv")
        out.parent.mkdir(parents=True, exist_ok=True)
        command = [
            sys.executable,
            "-m",
            "shiv",
            "--site-packages",
            str(site),
            "--entry-point",
            "ahv.cli:main",
            "--python",
            python,
            "--output-file",
            str(out),
            "--compressed",
        ]
        if root:
            command += ["--root", root]
        if cuda_libs:
            command += ["--preamble", str(ROOT / "scripts" / "zipapp_cuda_preamble.py")]
        print("+", " ".join(command), flush=True)
        subprocess.run(command, check=True)
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--flavour", choices=("cpu", "gpu"), default="cpu")
    parser.add_argument(
        "--cuda-libs",
        action="store_true",
        help="gpu flavour: bundle NVIDIA's CUDA and cuDNN wheels (onnxruntime-gpu[cuda,cudnn])",
    )
    parser.add_argument("--out", type=Path, default=ROOT / "dist" / "ahv.pyz")
    parser.add_argument(
        "--root",
        help="where the zipapp extracts itself by default (SHIV_ROOT overrides it at run time)",
    )
    parser.add_argument(
        "--python", default="/usr/bin/env python3", help="the zipapp's #! interpreter"
    )
    args = parser.parse_args()
    if args.cuda_libs and args.flavour != "gpu":
        parser.error("--cuda-libs goes with --flavour gpu")
    began = time.monotonic()
    out = build(
        args.out, args.flavour, cuda_libs=args.cuda_libs, root=args.root, python=args.python
    )
    size_mb = out.stat().st_size / 1e6
    print(f"built {out} ({args.flavour}): {size_mb:.1f} MB in {time.monotonic() - began:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
