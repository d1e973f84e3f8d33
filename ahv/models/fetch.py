"""`ahv models fetch NAME`: the only code that downloads model files, run from the command
line only (the server never downloads a model).

The file streams into `<file>.part` next to its final place while it is hashed; a sha256
mismatch deletes the part file, a match moves it into place with `os.replace`, so a reader
never sees a half-written model.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from pathlib import Path

import aiohttp

from ahv.errors import AhvError
from ahv.models.registry import ModelRegistry

Progress = Callable[[int, int | None], None]
CHUNK = 1 << 20


async def fetch_model(
    registry: ModelRegistry,
    name: str,
    *,
    progress: Progress | None = None,
    client_timeout: aiohttp.ClientTimeout | None = None,
) -> Path:
    """Download model `name` from its configured url; `progress(done, total)` is called as
    bytes arrive (total is None when the server sends no Content-Length)."""
    entry = registry.entry(name)
    if not entry.url:
        raise AhvError(
            "model_fetch_failed",
            f"model {name!r} has no url in ahv.toml [models.files.{name}]; "
            f"put the file at {registry.path(name)} yourself",
        )
    target = registry.path(name)
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(target.name + ".part")
    digest = hashlib.sha256()
    done = 0
    timeout = client_timeout or aiohttp.ClientTimeout(total=None, sock_connect=30, sock_read=60)
    try:
        async with (
            aiohttp.ClientSession(timeout=timeout) as http,
            http.get(entry.url) as response,
        ):
            if response.status != 200:
                raise AhvError(
                    "model_fetch_failed",
                    f"model {name!r}: GET {entry.url} answered HTTP {response.status}",
                )
            encoded = response.headers.get("Content-Encoding", "identity") != "identity"
            # Content-Length counts the encoded bytes; what we count are decoded ones.
            total = None if encoded else response.content_length
            with partial.open("wb") as out:
                if progress is not None:
                    progress(0, total)
                async for chunk in response.content.iter_chunked(CHUNK):
                    out.write(chunk)
                    digest.update(chunk)
                    done += len(chunk)
                    if progress is not None:
                        progress(done, total)
                out.flush()
                os.fsync(out.fileno())
        if total is not None and done != total:
            raise AhvError(
                "model_fetch_failed",
                f"model {name!r}: the download ended after {done} of {total} bytes",
            )
        found = digest.hexdigest()
        if entry.sha256 and found != entry.sha256:
            raise AhvError(
                "model_fetch_failed",
                f"model {name!r}: sha256 mismatch for {entry.url}: expected {entry.sha256}, "
                f"got {found}; the file was not kept",
            )
        os.replace(partial, target)
    except aiohttp.ClientError as exc:
        partial.unlink(missing_ok=True)
        raise AhvError(
            "model_fetch_failed", f"model {name!r}: GET {entry.url} failed: {exc}"
        ) from exc
    except TimeoutError as exc:
        partial.unlink(missing_ok=True)
        raise AhvError("model_fetch_failed", f"model {name!r}: GET {entry.url} timed out") from exc
    except BaseException:
        partial.unlink(missing_ok=True)
        raise
    return target


def text_progress(out: Callable[[str], object], width: int = 30) -> Progress:
    """A one-line progress bar ("[#####     ]  42%  12.3 / 29.1 MB") redrawn with \\r,
    each time the percentage (or, with no known total, the MB count) changes."""
    last = [""]

    def show(done: int, total: int | None) -> None:
        if total:
            fraction = min(1.0, done / total)
            bar = "#" * int(fraction * width)
            step = f"{int(fraction * 100)}"
            line = f"\r[{bar:<{width}}] {step:>3}%  {done / 1e6:.1f} / {total / 1e6:.1f} MB"
        else:
            step = f"{done // 1_000_000}"
            line = f"\r{step} MB"
        if step != last[0] or done == total:
            last[0] = step
            out(line)

    return show
