"""`GET /stats` `history`: the last hour per minute (queue depth, finished, failed), per key
for a client key and in total for an admin; and the bucket arithmetic on a given clock."""

from __future__ import annotations

import itertools
import time

from ahv.history import BUCKET_MS, StatsHistory
from tests.conftest import KEY_ADMIN, KEY_B, Api, StartServer

T0 = 1_700_000_040_000  # the start of a minute (epoch ms)


def test_buckets_per_minute_carry_the_depth_and_scope_by_key() -> None:
    history = StatsHistory()
    history.depth(T0 + 1_000, "a", 1, 1)
    history.depth(T0 + 2_000, "a", 3, 3)
    history.depth(T0 + 3_000, "b", 1, 4)
    history.depth(T0 + 4_000, "a", 0, 1)  # claimed: the depth falls, the minute's max stays
    history.finished(T0 + 5_000, "a", "succeeded")
    history.finished(T0 + 6_000, "a", "failed")
    history.finished(T0 + 7_000, "b", "rejected")
    history.finished(T0 + 8_000, "b", "canceled")
    # Three quiet minutes, then one more job of b's.
    later = T0 + 4 * BUCKET_MS + 10_000
    history.depth(later, "b", 2, 2)
    rows = history.view(later + 1_000, None)
    assert len(rows) == 60
    assert [r["t_ms"] for r in rows] == [later - 10_000 - (59 - i) * BUCKET_MS for i in range(60)]
    assert rows[-5] == {"t_ms": T0, "queue_depth": 4, "finished": 4, "failed": 2}
    # Quiet minutes keep the depth the last one ended with.
    assert [r["queue_depth"] for r in rows[-4:-1]] == [1, 1, 1]
    assert [r["finished"] for r in rows[-4:]] == [0, 0, 0, 0]
    assert rows[-1]["queue_depth"] == 2
    assert all(r == {"t_ms": r["t_ms"], "queue_depth": 0, "finished": 0, "failed": 0}
               for r in rows[:-5])  # fmt: skip
    mine = history.view(later + 1_000, "a")
    assert mine[-5] == {"t_ms": T0, "queue_depth": 3, "finished": 2, "failed": 1}
    assert [r["queue_depth"] for r in mine[-4:]] == [0, 0, 0, 0]
    theirs = history.view(later + 1_000, "b")
    assert theirs[-5] == {"t_ms": T0, "queue_depth": 1, "finished": 2, "failed": 1}
    assert theirs[-1]["queue_depth"] == 2
    # An hour on, the old minutes have left the window; the depth carried stays.
    rows = history.view(later + 90 * BUCKET_MS, None)
    assert len(rows) == 60 and sum(r["finished"] for r in rows) == 0
    assert {r["queue_depth"] for r in rows} == {2}


async def test_stats_history_counts_the_callers_jobs(start_server: StartServer) -> None:
    api: Api = await start_server(backends=[{"name": "cpu", "slots": 1, "tasks": ["sleep"]}])
    before_ms = time.time() * 1000
    blocker = await api.submit("sleep", {"seconds": 0.3})
    jobs = [
        await api.submit("sleep", {"seconds": 0}),
        await api.submit("sleep", {"seconds": 0, "fail_code": "corrupt_input"}),
        await api.submit("sleep", {"seconds": 0}, key=KEY_B),
    ]
    for job in [blocker, *jobs[:2]]:
        await api.wait(job["job_id"])
    await api.wait(jobs[2]["job_id"], key=KEY_B)
    after_ms = time.time() * 1000
    mine = (await api.call("GET", "/stats"))[1]["history"]
    everyone = (await api.call("GET", "/stats", key=KEY_ADMIN))[1]["history"]
    theirs = (await api.call("GET", "/stats", key=KEY_B))[1]["history"]
    for rows in (mine, everyone, theirs):
        assert len(rows) == 60
        assert all(b["t_ms"] - a["t_ms"] == BUCKET_MS for a, b in itertools.pairwise(rows))
        assert before_ms - BUCKET_MS < rows[-1]["t_ms"] <= after_ms
        assert set(rows[0]) == {"t_ms", "queue_depth", "finished", "failed"}
    assert sum(r["finished"] for r in mine) == 3 and sum(r["failed"] for r in mine) == 1
    assert sum(r["finished"] for r in theirs) == 1 and sum(r["failed"] for r in theirs) == 0
    assert sum(r["finished"] for r in everyone) == 4
    # While the blocker ran, client a had two jobs queued, and everyone three.
    assert max(r["queue_depth"] for r in mine) == 2
    assert max(r["queue_depth"] for r in theirs) == 1
    assert max(r["queue_depth"] for r in everyone) == 3
