"""Merge quality as gain kept: per task, the share of the expert's gain over the base a recipe keeps.

``(recipe - base) / (expert - base)`` (:func:`hpc_merge.report.gain_kept`): a recipe equal to the
base keeps 0 %, one equal to the expert 100 %. Accuracy alone hides this: where the base already
scores 0.9, a recipe that learned nothing "keeps 90 % of the expert". The expert of a task is the
source model that scores best on it (on the zoo, that skill's expert); the expert oracle is each
expert on its own task. Everything here is computed from outcomes the evaluator already produced.
"""

from __future__ import annotations

import math
from typing import Any

from hpc_merge.report import gain_kept


def _accuracy(outcome: dict[str, Any]) -> dict[str, float]:
    return {t: float(m["accuracy"]) for t, m in (outcome.get("metrics") or {}).items() if "accuracy" in m}


def gain_report(entries: dict[str, dict[str, Any]], refs: dict[str, dict[str, Any]], base: str | None,
                experts: list[str]) -> dict[str, Any]:
    """Rows (``base``, ``oracle``, then every entry) of per-task accuracy, mean accuracy and gain kept.

    ``entries`` and ``refs`` are evaluator outcomes (``refs``: the base and the source models as
    they are). Without a base, or for a task no expert improves, gain kept is None.
    """
    ref_acc = {r: _accuracy(o) for r, o in refs.items() if o.get("status") == "ok"}
    tasks = sorted({t for acc in ref_acc.values() for t in acc} | {t for o in entries.values() for t in _accuracy(o)})
    base_acc = ref_acc.get(base, {}) if base else {}
    expert_of = {}
    for t in tasks:
        scored = [(ref_acc[e][t], e) for e in experts if t in ref_acc.get(e, {})]
        if scored:
            expert_of[t] = max(scored, key=lambda p: (p[0], [-ord(c) for c in p[1]]))[1]
    oracle = {t: ref_acc[e][t] for t, e in expert_of.items()}

    def row(acc: dict[str, float]) -> dict[str, Any]:
        gk: dict[str, float | None] = {}
        for t in tasks:
            if t in acc and t in base_acc and t in oracle:
                v = gain_kept(acc[t], base_acc[t], oracle[t])
                gk[t] = v if math.isfinite(v) else None
        mean = sum(acc.values()) / len(acc) if acc else None
        return {"accuracy": acc, "mean_accuracy": mean, "gain_kept": gk if base_acc else None}

    rows: dict[str, dict[str, Any]] = {}
    if base_acc:
        rows["base"] = row(base_acc)
    if oracle:
        rows["oracle"] = row(oracle)
    for name, out in entries.items():
        rows[name] = row(_accuracy(out)) if out.get("status") == "ok" else {"status": out.get("status"),
                                                                             "reason": out.get("reason")}
    return {"tasks": tasks, "base": base, "experts": expert_of, "references": ref_acc, "rows": rows}


#: How rows are named in the printed table.
LABELS = {"base": "base", "oracle": "expert oracle (each expert on its own task)", "best": "evolved best",
          "ps_best": "PS best (a DFS source)", "baseline": "hand preset (merge=...)"}


def format_gain_table(report: dict[str, Any], split: str) -> str:
    """Markdown table: per task ``accuracy (gain kept)``, and mean accuracy."""
    tasks = report["tasks"]
    head = [f"recipe ({split} split)", *tasks, "mean accuracy"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name, r in report["rows"].items():
        if "accuracy" not in r:
            lines.append("| " + " | ".join([LABELS.get(name, name), *(["failed"] * len(tasks)), "–"]) + " |")
            continue
        cells = []
        for t in tasks:
            a = r["accuracy"].get(t)
            g = (r["gain_kept"] or {}).get(t)
            cells.append("–" if a is None else f"{a:.3f}" + (f" ({100 * g:.0f} %)" if g is not None else ""))
        mean = r["mean_accuracy"]
        lines.append("| " + " | ".join([LABELS.get(name, name), *cells, "–" if mean is None else f"{mean:.4f}"]) + " |")
    lines.append("cells: accuracy (gain kept = (recipe - base) / (expert - base)); experts: "
                 + ", ".join(f"{t}: {e.split(':')[-1]}" for t, e in report["experts"].items()))
    return "\n".join(lines)
