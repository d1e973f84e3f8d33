"""Disk guard: while the data dir's disk has less free space than `limits.min_free_disk_mb`,
new jobs are refused with 503 `disk_full`; jobs already taken in run and finish as usual."""

from __future__ import annotations

import logging
import shutil
import time
from pathlib import Path

from ahv.errors import AhvError

log = logging.getLogger(__name__)

# statvfs is cheap, but not free at thousands of submissions a second; a second-old figure
# is good enough for a bound that is meant to sit well above "full".
CACHE_S = 1.0
RETRY_AFTER_S = 30.0


class DiskGuard:
    def __init__(self, path: Path) -> None:
        self._path = path
        self._free_mb: float | None = None
        self._read_at = -CACHE_S
        self._refusing = False

    def free_mb(self) -> float | None:
        """Free space on the data dir's disk in MB (cached for CACHE_S); None if unknown."""
        now = time.monotonic()
        if now - self._read_at >= CACHE_S:
            self._read_at = now
            try:
                self._free_mb = shutil.disk_usage(self._path).free / 1e6
            except OSError as exc:
                log.warning("disk guard: cannot read free space of %s: %s", self._path, exc)
                self._free_mb = None
        return self._free_mb

    def check(self, min_free_mb: int) -> None:
        """Raise 503 `disk_full` when the free space is under `min_free_mb` (0 = off)."""
        free = self.free_mb() if min_free_mb else None
        refusing = free is not None and free < min_free_mb
        if refusing != self._refusing:  # one log line per change, not one per request
            self._refusing = refusing
            if refusing:
                log.warning(
                    "disk guard: %.0f MB free in %s, under limits.min_free_disk_mb = %d; "
                    "refusing new jobs",
                    free,
                    self._path,
                    min_free_mb,
                    extra={"free_mb": round(free or 0), "min_free_disk_mb": min_free_mb},
                )
            else:
                log.info("disk guard: enough free space again; accepting new jobs")
        if refusing:
            raise AhvError(
                "disk_full",
                f"the server's disk has {free:.0f} MB free, under its limit of {min_free_mb} MB "
                "(limits.min_free_disk_mb); new jobs are refused until space is freed",
                status=503,
                retry_after_s=RETRY_AFTER_S,
            )
