"""Fitness: a weighted sum of task metrics from the built-in evaluator (zoo, JSONL or lm-eval tasks).

The search optimises the ``validation`` split by default and the job reports the winner on the
held-out ``test`` split, so the number that proves a recipe good was never seen by the search.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Any

from hpc_merge.errors import ConfigError

METRICS = ("accuracy", "loglik")


@dataclass(frozen=True)
class FitnessSpec:
    """Which tasks, how they are weighted, which metric and split; picklable for workers."""

    tasks: tuple[str, ...] = ("zoo",)
    weights: dict[str, float] = field(default_factory=dict)  # task -> weight; missing = equal share
    metrics: tuple[tuple[str, float], ...] = (("accuracy", 1.0),)  # (metric, weight), first = headline
    split: str = "validation"
    test_split: str = "test"
    limit: int | None = None
    size: str = "full"
    batch_size: int = 32

    @classmethod
    def from_config(cls, fit: dict[str, Any], field_prefix: str = "evolve.fitness") -> FitnessSpec:
        """Build from the ``evolve.fitness`` section, checking what can be checked without a model."""
        tasks = fit.get("tasks") or ["zoo"]
        if isinstance(tasks, str):
            tasks = [tasks]
        metric = fit.get("metric", "accuracy")
        pairs = [(metric, 1.0)] if isinstance(metric, str) else list((metric or {}).items())
        for name, w in pairs:
            if name not in METRICS or not isinstance(w, int | float) or not math.isfinite(w):
                raise ConfigError(f"{field_prefix}.metric", f"bad metric {name!r}: {w!r}",
                                  f"use one of {', '.join(METRICS)}, or a mapping {{accuracy: 1.0, loglik: 1.0}}")
        if not pairs:
            raise ConfigError(f"{field_prefix}.metric", "no metric", "use accuracy")
        weights = {str(k): float(v) for k, v in (fit.get("weights") or {}).items()}
        bad = [k for k, v in weights.items() if not math.isfinite(v) or v < 0]
        if bad:
            raise ConfigError(f"{field_prefix}.weights.{bad[0]}", "weights must be finite and >= 0", "fix the weight")
        limit = fit.get("limit")
        return cls(tasks=tuple(str(t) for t in tasks), weights=weights,
                   metrics=tuple((str(n), float(w)) for n, w in pairs),
                   split=str(fit.get("split", "validation")), test_split=str(fit.get("test_split", "test")),
                   limit=int(limit) if limit else None, size=str(fit.get("size", "full")),
                   batch_size=int(fit.get("batch_size", 32)))

    def for_split(self, split: str, limit: int | None = None) -> FitnessSpec:
        """The same fitness on another split (the held-out test report)."""
        return replace(self, split=split, limit=limit)

    def task_weights(self, task_names: list[str]) -> dict[str, float]:
        """Weight of every task: the configured ones, equal shares summing to 1 by default."""
        unknown = sorted(set(self.weights) - set(task_names))
        if unknown:
            raise ConfigError(f"evolve.fitness.weights.{unknown[0]}", "not one of the loaded tasks",
                              f"use some of {', '.join(sorted(task_names))}")
        if self.weights:
            return {t: self.weights.get(t, 0.0) for t in sorted(task_names)}
        return {t: 1.0 / len(task_names) for t in sorted(task_names)}

    @property
    def metric(self) -> str:
        """The headline metric (per-task scores in tables, W&B and result.json)."""
        return self.metrics[0][0]

    def score(self, metrics: dict[str, dict[str, float]]) -> float:
        """Sum over tasks (task weights) of the weighted metrics; NaN when one is missing or not finite.

        Accuracy on a small validation split moves in coarse steps; adding the answers' mean
        log-likelihood (``metric: {accuracy: 1, loglik: 1}``) gives the search a smooth signal
        that tracks the held-out split far better.
        """
        total = 0.0
        for task, w in self.task_weights(list(metrics)).items():
            for name, mw in self.metrics:
                value = metrics[task].get(name)
                if value is None or not math.isfinite(float(value)):
                    return math.nan
                total += w * mw * float(value)
        return total


def flat_scores(metrics: dict[str, dict[str, float]], metric: str) -> dict[str, float]:
    """``{task: value}`` of one metric (what tables and W&B show per task)."""
    return {t: float(m[metric]) for t, m in sorted(metrics.items()) if metric in m}
