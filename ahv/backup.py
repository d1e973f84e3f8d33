"""`ahv backup PATH`: a consistent copy of the queue database, taken while the server runs.

SQLite's online backup reads the live file through a read-only connection inside one read
transaction (in WAL mode readers and the writer do not block each other), so the copy holds
exactly the jobs committed when it began, whatever is being submitted meanwhile. It is
written to PATH.part and renamed into place, so PATH is never a half-written file. A backup
runs beside a server: it does not wait for the server's lock on its data dir. When no server
holds that lock, the backup holds it (shared) while it copies, so that no server starts
meanwhile, and afterwards removes the `-wal` and `-shm` files its read-only open of the WAL
database made: a stopped server's data dir is left as it was (not with files owned by
whoever ran the backup, root perhaps). Result files are not part of it (copy the `files/`
directory with rsync or the like; see docs/deploy.md).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import sqlite3
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

DB_NAME = "ahv.sqlite3"
# The server's lock beside the database (ahv/store.py takes it, exclusive, at start).
LOCK_NAME = DB_NAME + ".lock"


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
    beside = [source_path.with_name(DB_NAME + suffix) for suffix in ("-wal", "-shm")]
    with _lock_if_no_server(source_path.with_name(LOCK_NAME)) as no_server:
        there = {path for path in beside if path.exists()}
        try:
            jobs = _copy(source_path, partial)
            partial.replace(target)
        except sqlite3.Error as exc:
            raise BackupError(f"backup of {source_path} failed: {exc}") from exc
        except OSError as exc:
            raise BackupError(f"cannot write {target}: {exc.strerror or exc}") from exc
        finally:
            partial.unlink(missing_ok=True)
            if no_server:
                # Made by this read-only open (so the -wal is empty), and no server can have
                # opened them since: the lock is held. A -wal left by a crash stays: the
                # server's next start takes its jobs from it.
                for path in beside:
                    if path not in there:
                        path.unlink(missing_ok=True)
    return BackupResult(target, jobs, target.stat().st_size)


@contextlib.contextmanager
def _lock_if_no_server(lock_path: Path) -> Iterator[bool]:
    """True while this holds the server's lock, shared: no server has the database open, nor
    can one start until the copy is done. False when a server holds it (the copy is made
    beside it) or when there is no lock file: none is created, a root-owned one would keep
    the server from starting."""
    try:
        fd = os.open(lock_path, os.O_RDONLY)
    except OSError:
        fd = -1
    if fd < 0:
        yield False
        return
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
            held = True
        except OSError:
            held = False
        yield held
    finally:
        os.close(fd)  # releases the flock


def _copy(source_path: Path, partial: Path) -> int:
    # mode=ro: never changes the live database (no schema work, no checkpoint). It does make
    # the -wal and -shm of a WAL database when they are missing (a stopped server's data dir):
    # backup_database removes those.
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
