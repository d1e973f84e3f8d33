"""The model files named in ahv.toml `[models.files]`: where each lives and whether it is
there and intact.

A file's sha256 is computed in chunks and remembered per (path, size, mtime_ns), so a large
model is hashed once, and again only when the file changes. Nothing here downloads: only
`ahv models fetch` (ahv/models/fetch.py) does, from the command line.
"""

from __future__ import annotations

import hashlib
import os
import threading
from pathlib import Path
from typing import Literal

from ahv.config import ModelFileConfig, ModelsConfig
from ahv.errors import AhvError

ModelStatus = Literal["present", "missing", "corrupt", "unverified"]
# Statuses a job can run with: "unverified" has no sha256 configured to check against.
USABLE: frozenset[str] = frozenset({"present", "unverified"})
CHUNK = 1 << 20


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


class ModelRegistry:
    """Thread-safe: statuses are read from job threads, the event loop and the CLI."""

    def __init__(self, config: ModelsConfig) -> None:
        self.config = config
        self.dir = Path(config.dir)
        self._hashes: dict[tuple[str, int, int], str] = {}
        self._lock = threading.Lock()

    def names(self) -> list[str]:
        return sorted(self.config.files)

    def entry(self, name: str) -> ModelFileConfig:
        entry = self.config.files.get(name)
        if entry is None:
            raise AhvError(
                "model_unavailable",
                f"model {name!r} is not configured in ahv.toml [models.files]",
                status=503,
            )
        return entry

    def path(self, name: str) -> Path:
        return self.dir / self.entry(name).file

    def digest(self, path: Path) -> str | None:
        """The file's sha256, from the cache while its size and mtime are unchanged; None
        when it cannot be read."""
        try:
            stat = path.stat()
        except OSError:
            return None
        key = (str(path.resolve()), stat.st_size, stat.st_mtime_ns)
        with self._lock:
            known = self._hashes.get(key)
        if known is not None:
            return known
        try:
            digest = sha256_file(path)
        except OSError:
            return None
        with self._lock:
            # Forget older versions of the same file.
            for old in [k for k in self._hashes if k[0] == key[0]]:
                del self._hashes[old]
            self._hashes[key] = digest
        return digest

    def status(self, name: str) -> ModelStatus:
        entry = self.entry(name)
        path = self.dir / entry.file
        if not path.is_file():
            return "missing"
        if not entry.sha256:
            return "unverified"
        digest = self.digest(path)
        if digest is None:
            return "missing"
        return "present" if digest == entry.sha256 else "corrupt"

    def problem(self, name: str) -> str | None:
        """Why `name` cannot be used (the message of `require`), or None when it can."""
        try:
            self.require(name)
        except AhvError as exc:
            return exc.message
        return None

    def require(self, name: str) -> Path:
        """The model's path, if the file is there and (when a sha256 is configured) intact;
        else AhvError `model_unavailable` naming the file and the fix."""
        path = self.path(name)
        status = self.status(name)
        if status == "missing":
            raise AhvError(
                "model_unavailable",
                f"model {name!r}: file {path} is missing (run `ahv models fetch {name}`)",
                status=503,
            )
        if status == "corrupt":
            raise AhvError(
                "model_unavailable",
                f"model {name!r}: file {path} fails its sha256 check (sha256 mismatch: "
                f"expected {self.entry(name).sha256}, found {self.digest(path)}; "
                f"run `ahv models fetch {name}`)",
                status=503,
            )
        return path

    def size(self, name: str) -> int | None:
        try:
            return os.path.getsize(self.path(name))
        except OSError:
            return None
