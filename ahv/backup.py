"""`ahv backup PATH`: a consistent copy of the queue database, taken while the server runs.

SQLite's online backup reads the live file through a read-only connection inside one read
transaction (in WAL mode readers and the writer do not block each other), so the copy holds
exactly the jobs committed when it began, whatever is being submitted meanwhile. It is
written to PATH.part and renamed into place, so PATH is never a half-written file. The
server's lock on its data dir is not taken: a backup runs beside the server. Result files are
not part of it (copy the `files/` directory with rsync or the like; see docs/deploy.md).
"""

from __future__ import annotations

import contextlib
import sqlite3
from dataclasses import dataclass
from pathlib import Path

DB_NAME = "ahv.sqlite3"


class BackupError(Exception):
    """The backup was not made; the message says why."""


@dataclass(frozen=True)
class BackupResult:
    path: Path
    jobs: int
    size_bytes: int


def backup_database(
    data_dir: str | Path, target: str | Path, *, force: bool = False
) -> BackupResult:
    source_path = Path(data_dir) / DB_NAME
    target = Path(target)
    if not source_path.is_file():
        raise BackupError(
            f"no database at {source_path.absolute()} (server.data_dir = {data_dir!s}; a "
            "relative data_dir is taken from the current directory, as `ahv serve` takes it)"
        )
    if target.is_dir():
        raise BackupError(f"{target} is a directory; give the path of the copy to write")
    live = {source_path.resolve()} | {
        source_path.with_name(DB_NAME + suffix).resolve() for suffix in ("-wal", "-shm")
    }
    if target.resolve() in live:
        # With --force, the copy would be renamed over the database the server has open.
        raise BackupError(f"{target} is the live database itself; write the copy elsewhere")
    if target.exists() and not force:
        raise BackupError(f"{target} exists; pass --force to overwrite it")
    if not target.parent.is_dir():
        raise BackupError(f"directory {target.parent} does not exist")
    partial = target.with_name(target.name + ".part")
    partial.unlink(missing_ok=True)
    try:
        jobs = _copy(source_path, partial)
        partial.replace(target)
    except sqlite3.Error as exc:
        raise BackupError(f"backup of {source_path} failed: {exc}") from exc
    except OSError as exc:
        raise BackupError(f"cannot write {target}: {exc.strerror or exc}") from exc
    finally:
        partial.unlink(missing_ok=True)
    return BackupResult(target, jobs, target.stat().st_size)


def _copy(source_path: Path, partial: Path) -> int:
    # mode=ro: never creates or changes the live database (no schema work, no checkpoint).
    source = sqlite3.connect(f"{source_path.resolve().as_uri()}?mode=ro", uri=True)
    try:
        source.execute("PRAGMA busy_timeout=10000")
        with contextlib.closing(sqlite3.connect(partial)) as copy:
            # pages=-1: the whole database in one step, i.e. one read transaction, so the
            # copy is one consistent snapshot (a stepped copy restarts on every commit).
            source.backup(copy, pages=-1)
            # A single self-contained file: no -wal beside it to forget.
            copy.execute("PRAGMA journal_mode=DELETE")
            problem = copy.execute("PRAGMA quick_check").fetchone()[0]
            if problem != "ok":
                raise BackupError(f"the copy fails its check: {problem}")
            jobs: int = copy.execute("SELECT COUNT(*) FROM jobs").fetchone()[0]
            return jobs
    finally:
        source.close()
