"""The short variants of the proof scripts (scripts/chaos.py, load.py, soak.py), so that CI
runs them on every change; the full-length runs are on demand (docs/RELIABILITY.md).

Each script returns a report whose `failures` lists every hold that did not hold; these
tests also check that the run really did what it claims (kills landed on running jobs, which ran
again; the queue filled and the 429s say so)."""

from __future__ import annotations

from pathlib import Path

import pytest

from scripts import chaos, load, soak


@pytest.mark.timeout(300)  # ~15-30 s; restarts are slow on a loaded machine
async def test_chaos_three_kills_sixty_jobs(tmp_path: Path) -> None:
    options = chaos.Options(
        kills=3, jobs=60, min_gap_s=0.5, max_gap_s=2.0, timeout_s=180, workdir=tmp_path
    )
    report = await chaos.run(options)
    print("\n".join(report.lines()))
    assert report.failures == []
    assert (report.kills, report.jobs) == (3, 60)
    assert report.lost == report.non_final == report.wrong_status == report.undelivered == 0
    # Exact outcomes: every bad input failed, every other job succeeded. worker_lost would
    # need 10 attempts cut by kills (queue.max_attempts), more than 3 kills can cut.
    bad = report.expected["failed"]
    assert bad == 6 and report.worker_lost == 0
    assert report.statuses == {"succeeded": 60 - bad, "failed": bad + report.worker_lost}
    # Kills landed on running jobs, and crash recovery ran those jobs again.
    assert report.kills_on_running > 0 and report.cut
    assert report.reexecuted_jobs >= len(report.cut) > 0
    # The receiver really was flaky, and everything still arrived.
    assert report.deliveries["ok"] >= 60
    assert report.deliveries["500"] + report.deliveries["timeout"] > 0


async def test_load_five_seconds_over_capacity(tmp_path: Path) -> None:
    options = load.Options(rate=200, duration_s=5, max_depth=50, workdir=tmp_path)
    report = await load.run(options)
    print("\n".join(report.lines()))
    assert report.failures == []
    statuses = report.statuses
    assert statuses["429"] > statuses["202"] > 0  # far over capacity: most are refused
    assert sum(statuses.values()) == 1000
    # Refused because the queue was full (the only limit set), and it was seen full.
    assert report.codes == {"queue_full": statuses["429"]}
    assert max(report.depths) == 50 and report.rows == statuses["202"]


async def test_soak_two_hundred_jobs(tmp_path: Path) -> None:
    report = await soak.run(soak.Options(jobs=200, warmup=50, workdir=tmp_path))
    print("\n".join(report.lines()))
    assert report.failures == []
    assert report.outcomes == {"succeeded": 180, "failed/unsupported_media_type": 20}
    assert report.rss_end_mb - report.rss_warm_mb < 50
    assert report.leftovers == []
