"""A point's metrics from its ``result.json``, and the sweep's key metric (what "best" means).

Job kinds report differently (a merge: smoke-test perplexity and evaluation rows; an evolution:
its best candidate's fitness), so each result is flattened into one ``{name: number}`` mapping
and the key metric is chosen by job kind unless the user names one.
"""

from __future__ import annotations

import math
from typing import Any

#: Metrics where lower is better; every other metric is better higher.
LOWER_IS_BETTER = frozenset({"perplexity", "loss", "total_s", "merge_time_s", "output_bytes"})


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value) if math.isfinite(float(value)) else None


def flat_metrics(result: dict[str, Any] | None) -> dict[str, float]:
    """Numeric metrics of a finished run: ``perplexity``, ``accuracy`` (mean of the merged model's
    evaluation rows), ``best.fitness`` / ``best.test_fitness`` (evolution), ``total_s`` ..."""
    if not result:
        return {}
    out: dict[str, float] = {}
    metrics = result.get("metrics") or {}
    for key, value in metrics.items():
        if (num := _number(value)) is not None:
            out[key] = num
    rows = [r for r in metrics.get("report") or [] if isinstance(r, dict) and r.get("role") == "merged"]
    accs = [a for r in rows if (a := _number(r.get("accuracy"))) is not None]
    if accs:
        out["accuracy"] = sum(accs) / len(accs)
    best = result.get("best") or {}
    for key in ("fitness", "test_fitness"):
        if (num := _number(best.get(key))) is not None:
            out[f"best.{key}"] = num
    if (num := _number(result.get("evaluations"))) is not None:
        out["evaluations"] = num
    if (num := _number((result.get("timings") or {}).get("total_s"))) is not None:
        out["total_s"] = num
    return out


def default_metric(kinds: set[str], evaluated: bool) -> str:
    """The key metric when none is named: evolution -> held-out fitness of the best candidate;
    merge/moe -> mean evaluation accuracy when the points are evaluated, else smoke-test perplexity."""
    if "evolve" in kinds:
        return "best.test_fitness"
    return "accuracy" if evaluated else "perplexity"


def better_is_lower(metric: str, mode: str | None = None) -> bool:
    """``mode`` (``min``/``max``) if given, else by the metric's name."""
    if mode:
        return mode == "min"
    return metric.rsplit(".", 1)[-1] in LOWER_IS_BETTER


def rank_key(value: float | None, lower: bool) -> tuple[int, float]:
    """Sort key putting the best value first and points without a value last."""
    if value is None:
        return (1, 0.0)
    return (0, value if lower else -value)
