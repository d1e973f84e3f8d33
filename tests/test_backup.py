"""`ahv backup PATH`: a consistent copy of the live database, taken while jobs pour in."""

from __future__ import annotations

import asyncio
import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import Any

import aiohttp

from tests.conftest import KEY_A
from tests.process import ROOT
from tests.test_crash import ahv_process

__all__ = ["ahv_process"]


async def _backup(config: Path, *args: str) -> tuple[int, str, str]:
    process = await asyncio.create_subprocess_exec(
        *(sys.executable, "-m", "ahv", "backup", *args, "--config", str(config)),
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    out, err = await process.communicate()
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


def _leftovers(copy: Path) -> list[str]:
    """A `.part` file or a `-wal`/`-shm` beside the copy: it would not be self-contained."""
    names = [path.name for path in copy.parent.iterdir()]
    return [name for name in names if name.startswith((f"{copy.name}.part", f"{copy.name}-"))]


async def test_backup_while_jobs_are_submitted_holds_every_acknowledged_job(
    ahv_process: Any, tmp_path: Path
) -> None:
    server = ahv_process(backends=[{"name": "cpu", "slots": 2, "tasks": ["sleep"]}])
    url = await asyncio.to_thread(server.start)
    acknowledged: list[str] = []
    enough = asyncio.Event()
    stop = asyncio.Event()

    async def submitter(session: aiohttp.ClientSession) -> None:
        while not stop.is_set():
            async with session.post(
                f"{url}/v1/jobs",
                json={"task": "sleep", "payload": {"seconds": 0}},
                headers={"X-API-Key": KEY_A},
            ) as response:
                assert response.status == 202, await response.text()
                acknowledged.append((await response.json())["job_id"])
                if len(acknowledged) >= 100:
                    enough.set()

    copy = tmp_path / "backup.sqlite3"
    async with aiohttp.ClientSession() as session:
        clients = [asyncio.create_task(submitter(session)) for _ in range(16)]
        await asyncio.wait_for(enough.wait(), 30)
        before = list(acknowledged)  # acknowledged before the backup started
        code, out, err = await _backup(server.config_path, str(copy))
        during = len(acknowledged) - len(before)
        stop.set()
        await asyncio.gather(*clients)
    assert code == 0, err
    assert during > 0  # submissions went on while the copy was made
    with sqlite3.connect(copy) as conn:
        assert conn.execute("PRAGMA integrity_check").fetchone() == ("ok",)
        assert conn.execute("PRAGMA journal_mode").fetchone() == ("delete",)
        ids = {row[0] for row in conn.execute("SELECT id FROM jobs")}
    assert set(before) <= ids
    assert len(ids) <= len(acknowledged)
    assert f"{len(ids)} jobs" in out and str(copy) in out
    assert _leftovers(copy) == []

    # An existing file is not overwritten without --force.
    code, _, err = await _backup(server.config_path, str(copy))
    assert code == 2 and "--force" in err
    code, out, err = await _backup(server.config_path, str(copy), "--force")
    assert code == 0, err
    with sqlite3.connect(copy) as conn:
        assert conn.execute("SELECT COUNT(*) FROM jobs").fetchone()[0] == len(acknowledged)


async def test_backup_errors_exit_2_with_the_reason(tmp_path: Path) -> None:
    config = tmp_path / "ahv.toml"
    config.write_text(f'[server]\ndata_dir = "{tmp_path / "nothing-here"}"\n')
    code, _, err = await _backup(config, str(tmp_path / "copy.sqlite3"))
    assert code == 2 and "no database at" in err and "Traceback" not in err
    (tmp_path / "nothing-here").mkdir()
    (tmp_path / "nothing-here" / "ahv.sqlite3").write_bytes(b"not a database, not at all")
    code, _, err = await _backup(config, str(tmp_path / "copy.sqlite3"))
    assert code == 2 and "backup" in err and "Traceback" not in err
    code, _, err = await _backup(config, str(tmp_path / "missing-dir" / "copy.sqlite3"))
    assert code == 2 and "does not exist" in err
    # The database itself (or its -wal), even with --force, even spelt another way: the
    # copy would be renamed over the file the server has open.
    live = tmp_path / "nothing-here" / "ahv.sqlite3"
    live.unlink()
    with sqlite3.connect(live) as conn:
        conn.execute("CREATE TABLE jobs (id TEXT)")
        conn.execute("INSERT INTO jobs VALUES ('j1')")
    conn.close()
    before = (live.stat().st_ino, live.read_bytes())
    for path in (str(live), str(tmp_path / "nothing-here" / ".." / "nothing-here" / "ahv.sqlite3")):
        code, _, err = await _backup(config, path, "--force")
        assert code == 2 and "live database" in err
    code, _, err = await _backup(config, f"{live}-wal", "--force")
    assert code == 2 and "live database" in err
    assert (live.stat().st_ino, live.read_bytes()) == before
    assert not (tmp_path / "copy.sqlite3").exists()


def _data_dir(data: Path) -> dict[str, tuple[int, int]]:
    """Name -> (owner, inode) of what is in a data dir (result files aside)."""
    return {p.name: (p.stat().st_uid, p.stat().st_ino) for p in data.iterdir() if p.is_file()}


async def test_backup_of_a_stopped_server_leaves_its_data_dir_as_it_was(
    ahv_process: Any, tmp_path: Path
) -> None:
    # A read-only open of a WAL database makes its -wal and -shm when they are missing: the
    # backup of a stopped server left them behind (owned by root when root ran it). Now the
    # data dir is as it was, after a clean stop and after a kill -9 (whose -wal holds
    # acknowledged jobs: they are in the copy, and the -wal stays for the next start).
    server = ahv_process(backends=[{"name": "cpu", "slots": 1, "tasks": ["sleep"]}])
    data = tmp_path / "data"
    for stop in ("terminate", "kill9"):
        url = await asyncio.to_thread(server.start)
        async with aiohttp.ClientSession() as session:
            for _ in range(5):
                async with session.post(
                    f"{url}/v1/jobs",
                    json={"task": "sleep", "payload": {"seconds": 0}},
                    headers={"X-API-Key": KEY_A},
                ) as response:
                    assert response.status == 202
        if stop == "terminate":
            server.terminate()
            assert await asyncio.to_thread(server.wait_exit, 20) == 0
            assert not {"ahv.sqlite3-wal", "ahv.sqlite3-shm"} & set(_data_dir(data))
        else:
            await asyncio.to_thread(server.kill9)
            assert "ahv.sqlite3-wal" in _data_dir(data)
        before = _data_dir(data)
        copy = tmp_path / f"after-{stop}.sqlite3"
        code, out, err = await _backup(server.config_path, str(copy))
        assert code == 0, err
        assert _data_dir(data) == before, stop
        expected = 5 if stop == "terminate" else 10
        assert f"{expected} jobs" in out
        with sqlite3.connect(copy) as conn:
            assert conn.execute("SELECT COUNT(*) FROM jobs").fetchone()[0] == expected
        conn.close()
        server.stop()
