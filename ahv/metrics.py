"""Prometheus metrics (`GET /metrics`), in a registry of this app's own: two servers in one
process (the tests) never share counters, and nothing lands in prometheus_client's global
default registry.

Counters and histograms are fed by job changes (ahv/watch.py) and webhook attempts as they
happen; gauges (queue depth, slots) are read from the scheduler and store at scrape time;
batch sizes come from the batched sessions' own tallies (ahv/models/batching.py).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Gauge,
    Histogram,
    Info,
    generate_latest,
)
from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

from ahv.jobs import JobRow

CONTENT_TYPE = CONTENT_TYPE_LATEST

# AI jobs take from a fraction of a second (a detection) to many minutes (a video).
DURATION_BUCKETS_S = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800, 3600)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64)
WEBHOOK_RESULTS = ("delivered", "failed_attempt", "gave_up")

BatchSizes = Callable[[], Mapping[str, Counter[int]]]


class _Collector(Collector):
    """The counters, kept as plain integers (they are bumped on the event loop, on the submit
    path among others, where prometheus_client's labelled, locked counters cost several µs),
    and `ahv_batch_size{model}` from the batched sessions' tallies."""

    def __init__(self, metrics: Metrics, batch_sizes: BatchSizes) -> None:
        self._metrics = metrics
        self._batch_sizes = batch_sizes

    def collect(self) -> Iterator[Metric]:
        m = self._metrics
        submitted = CounterMetricFamily(
            "ahv_jobs_submitted", "Jobs accepted, per task", labels=["task"]
        )
        for task, count in sorted(m.submitted.items()):
            submitted.add_metric([task], count)
        yield submitted
        finished = CounterMetricFamily(
            "ahv_jobs_finished", "Jobs that reached a final status", labels=["task", "status"]
        )
        for (task, status), count in sorted(m.finished.items()):
            finished.add_metric([task, status], count)
        yield finished
        attempts = CounterMetricFamily(
            "ahv_webhook_attempts",
            "job.finished delivery attempts: delivered, failed_attempt (retried later), gave_up",
            labels=["result"],
        )
        for result, count in m.webhook_attempts.items():
            attempts.add_metric([result], count)
        yield attempts
        yield CounterMetricFamily(
            "ahv_webhook_deliveries_failed",
            "job.finished deliveries given up after their last attempt",
            value=m.webhook_attempts["gave_up"],
        )
        yield self._batch_size_family()

    def _batch_size_family(self) -> Metric:
        family = HistogramMetricFamily(
            "ahv_batch_size",
            "Items per batched model run (cross-job batching), per model",
            labels=["model"],
        )
        for model, tally in sorted(self._batch_sizes().items()):
            buckets: list[tuple[str, float]] = []
            for bound in BATCH_BUCKETS:
                buckets.append((str(bound), float(sum(n for s, n in tally.items() if s <= bound))))
            buckets.append(("+Inf", float(sum(tally.values()))))
            total = float(sum(size * n for size, n in tally.items()))
            family.add_metric([model], buckets, sum_value=total)
        return family


class Metrics:
    def __init__(self, *, version: str, tasks: Sequence[str], batch_sizes: BatchSizes) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        # Series that exist from the start, so rates and alerts work before the first event.
        self.submitted: dict[str, int] = dict.fromkeys(tasks, 0)
        self.finished: dict[tuple[str, str], int] = {}
        self.webhook_attempts: dict[str, int] = dict.fromkeys(WEBHOOK_RESULTS, 0)
        self.wait = Histogram(
            "ahv_job_wait_seconds",
            "Seconds from queued (or due for a retry) to started",
            ["task"],
            buckets=DURATION_BUCKETS_S,
            registry=r,
        )
        self.run = Histogram(
            "ahv_job_run_seconds",
            "Seconds from started to finished",
            ["task"],
            buckets=DURATION_BUCKETS_S,
            registry=r,
        )
        self.queue_depth = Gauge("ahv_queue_depth", "Jobs queued", registry=r)
        self.queue_depth_by_task = Gauge(
            "ahv_queue_depth_by_task", "Jobs queued, per task", ["task"], registry=r
        )
        self.running = Gauge("ahv_jobs_running", "Jobs running", registry=r)
        self.slots = Gauge("ahv_backend_slots", "Slots of each backend", ["backend"], registry=r)
        self.slots_busy = Gauge(
            "ahv_backend_slots_busy", "Slots of each backend running a job", ["backend"], registry=r
        )
        Info("ahv", "The ahv server", registry=r).info({"version": version})
        r.register(_Collector(self, batch_sizes))
        self._tasks = list(tasks)

    # -- fed as things happen (on the event loop) --------------------------------------------

    def job_submitted(self, job: JobRow) -> None:
        self.submitted[job.task] = self.submitted.get(job.task, 0) + 1

    def job_started(self, job: JobRow) -> None:
        if job.started_us is not None:
            since_us = max(job.queued_us, job.run_after_us)
            self.wait.labels(task=job.task).observe(max(0, job.started_us - since_us) / 1e6)

    def job_finished(self, job: JobRow) -> None:
        key = (job.task, job.status)
        self.finished[key] = self.finished.get(key, 0) + 1
        if job.started_us is not None and job.finished_us is not None:
            self.run.labels(task=job.task).observe(max(0, job.finished_us - job.started_us) / 1e6)

    def webhook_attempt(self, result: str) -> None:
        self.webhook_attempts[result] = self.webhook_attempts.get(result, 0) + 1

    # -- read at scrape time ------------------------------------------------------------------

    def render(
        self,
        *,
        queue_depth: int,
        queued_by_task: Mapping[str, int],
        running: int,
        backends: Sequence[tuple[str, int, int]],
    ) -> bytes:
        """The text exposition, after setting the gauges; `backends` is (name, slots, busy)."""
        self.queue_depth.set(queue_depth)
        for task in sorted({*self._tasks, *queued_by_task}):
            self.queue_depth_by_task.labels(task=task).set(queued_by_task.get(task, 0))
        self.running.set(running)
        for name, slots, busy in backends:
            self.slots.labels(backend=name).set(slots)
            self.slots_busy.labels(backend=name).set(busy)
        return generate_latest(self.registry)
