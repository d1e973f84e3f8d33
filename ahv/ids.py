"""Random 128-bit ids (job ids, event ids) as 32 hex digits, like uuid4().hex.

os.urandom is a system call that costs ~15 µs on some VMs, and POST /v1/jobs needs one id
per job, so random bytes are read 4 KiB at a time and handed out 16 at a time.
"""

from __future__ import annotations

import os
import threading


class _RandomPool:
    def __init__(self, chunk_bytes: int = 4096) -> None:
        self._chunk_bytes = chunk_bytes
        self._buffer = b""
        self._offset = 0
        self._lock = threading.Lock()

    def take(self, size: int) -> bytes:
        with self._lock:
            if self._offset + size > len(self._buffer):
                self._buffer = os.urandom(self._chunk_bytes)
                self._offset = 0
            start = self._offset
            self._offset += size
            return self._buffer[start : self._offset]


# One pool per process: it is a cache of the OS's randomness, not application state. After
# a fork, the child must not hand out the parent's buffered bytes again.
_POOL = _RandomPool()
os.register_at_fork(after_in_child=lambda: _POOL.__init__())  # type: ignore[misc]


def new_id() -> str:
    return _POOL.take(16).hex()
