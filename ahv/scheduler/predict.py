"""Learns how long each task takes, to give `predict_time`, `eta_utc` and queue ETAs."""

from __future__ import annotations

from collections import deque


class Predictor:
    def __init__(self, defaults_s: dict[str, float], keep: int) -> None:
        self._defaults_s = defaults_s
        self._keep = keep
        self._recent: dict[str, deque[float]] = {}

    def seed(self, durations: dict[str, list[float]]) -> None:
        for task, values in durations.items():
            for value in values:
                self.record(task, value)

    def record(self, task: str, duration_s: float) -> None:
        self._recent.setdefault(task, deque(maxlen=self._keep)).append(duration_s)

    def predict_s(self, task: str) -> float:
        recent = self._recent.get(task)
        if not recent:
            return self._defaults_s.get(task, 5.0)
        return sum(recent) / len(recent)

    def mean_durations(self) -> dict[str, float]:
        return {task: round(sum(v) / len(v), 3) for task, v in self._recent.items() if v}

    def wait_s(self, task: str, queue_position: int, slots: int) -> float:
        """Expected time from now until a job at `queue_position` is finished; assumes the
        jobs ahead take about as long as this one and share the task's slots."""
        rounds = queue_position // max(1, slots) + 1
        return rounds * self.predict_s(task)
