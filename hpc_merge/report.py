"""The merge report: what a merge kept and lost, per task, against its base and its sources.

Evaluates every model on every task, then writes ``report.json`` (the rows, plus per task how much
of the best source's accuracy the merged model kept), ``report.md`` (a table) and ``report.png``
(grouped bars per task) into the run dir, and logs the table and the image to the tracker.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from hpc_merge import console
from hpc_merge.atomic import write_json, write_text
from hpc_merge.evaluate import evaluate_model, load_model, load_tasks, load_tokenizer
from hpc_merge.run.files import REPORT_JSON, REPORT_MD, REPORT_PNG

ROLES = ("base", "source", "merged")


def _fmt(x: float, pct: bool) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "–"
    return f"{100 * x:.1f}%" if pct else f"{x:.3f}"


def _pivot(rows: list[dict]) -> tuple[list[tuple[str, str]], list[str], dict[tuple[str, str], dict]]:
    models: list[tuple[str, str]] = []
    tasks: list[str] = []
    cells = {}
    for r in rows:
        if (r["model"], r["role"]) not in models:
            models.append((r["model"], r["role"]))
        if r["task"] not in tasks:
            tasks.append(r["task"])
        cells[(r["model"], r["task"])] = r
    return models, tasks, cells


def format_table(rows: list[dict]) -> str:
    """A Markdown table: one line per model, per task ``accuracy (mean answer log-likelihood)``."""
    models, tasks, cells = _pivot(rows)
    head = ["model", "role", *tasks]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for model, role in models:
        vals = []
        for t in tasks:
            c = cells.get((model, t))
            vals.append(f"{_fmt(c['accuracy'], True)} ({_fmt(c['loglik'], False)})" if c else "")
        lines.append("| " + " | ".join([model, role, *vals]) + " |")
    kept = retention(rows)
    if any("gain_kept" in k for k in kept.values()):  # (merged - base) / (best source - base)
        lines.append("| " + " | ".join(["gain kept", "merged", *(_fmt(kept[t].get("gain_kept"), True)
                                                                  if t in kept else "" for t in tasks)]) + " |")
    return "\n".join(lines)


def gain_kept(merged: float, base: float, expert: float) -> float:
    """Share of the expert's gain over the base that the merge keeps: (merged - base) / (expert - base).

    Why not merged / expert: a base that already scores 0.9 "keeps 90 %" of an expert at 1.0 while
    keeping none of what the expert learned. NaN when the expert has no gain to keep.
    """
    gain = expert - base
    return (merged - base) / gain if gain > 0 else math.nan


def retention(rows: list[dict]) -> dict[str, dict[str, Any]]:
    """Per task: the best source, its accuracy, the merged model's, the share kept (merged/best)
    and, when a base row exists, the base's accuracy and the share of the gain kept.

    On the zoo the best source on a skill is that skill's expert, so this is the quality bar.
    """
    out = {}
    for task in dict.fromkeys(r["task"] for r in rows):
        sources = [r for r in rows if r["task"] == task and r["role"] == "source"]
        merged = [r for r in rows if r["task"] == task and r["role"] == "merged"]
        if not sources or not merged:
            continue
        best = max(sources, key=lambda r: r["accuracy"])
        m = merged[0]["accuracy"]
        ratio = m / best["accuracy"] if best["accuracy"] > 0 else math.nan
        out[task] = {"best_source": best["model"], "source_accuracy": best["accuracy"],
                     "merged_accuracy": m, "kept": ratio}
        base = [r for r in rows if r["task"] == task and r["role"] == "base"]
        if base:
            share = gain_kept(m, base[0]["accuracy"], best["accuracy"])
            out[task] |= {"base_accuracy": base[0]["accuracy"], "gain_kept": share if math.isfinite(share) else None}
    return out


def plot_report(rows: list[dict], path: Path) -> Path:
    """Grouped bars per task (base, sources, merged), accuracy on the y axis, saved as PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    models, tasks, cells = _pivot(rows)
    colours = {"base": "#9e9e9e", "merged": "#d62728"}
    source_cmap = plt.get_cmap("tab10")
    width = 0.8 / max(1, len(models))
    fig, ax = plt.subplots(figsize=(max(6.0, 1.6 * len(tasks) + 2), 4.0), dpi=100)
    n_source = 0
    for i, (model, role) in enumerate(models):
        if role == "source":
            colour = source_cmap(n_source % 10)
            n_source += 1
        else:
            colour = colours.get(role, "#333333")
        xs = [j + (i - (len(models) - 1) / 2) * width for j in range(len(tasks))]
        ys = [cells[(model, t)]["accuracy"] if (model, t) in cells else 0.0 for t in tasks]
        ax.bar(xs, ys, width=width, label=f"{model} ({role})", color=colour,
               edgecolor="black" if role == "merged" else None)
    ax.set_xticks(range(len(tasks)))
    ax.set_xticklabels(tasks)
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("exact-match accuracy")
    ax.set_title("merge report: base, sources and merged model per task")
    ax.legend(fontsize="small", loc="upper left", bbox_to_anchor=(1.0, 1.0))
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp)
    plt.close(fig)
    tmp.replace(path)
    return path


def merge_report(run_dir: str | Path, models: list[tuple[str, str, Any]], tasks: list, tracker: Any = None,
                 split: str = "test", limit: int | None = None, batch_size: int = 32, size: str = "full",
                 tokenizer: Any = None) -> list[dict]:
    """Evaluate each ``(name, role, path or in-memory model)`` on every task and write the report.

    ``role`` is ``base``, ``source`` or ``merged``; ``tasks`` are :class:`~hpc_merge.evaluate.Task`
    objects or specs (``size`` picks the zoo's split sizes for ``zoo`` specs). ``tokenizer`` is only
    needed for in-memory models. Returns the rows written to ``report.json``.
    """
    run_dir = Path(run_dir)
    if tasks and isinstance(tasks[0], str):
        tasks = load_tasks(list(tasks), size=size)
    rows: list[dict] = []
    bad = [(name, role) for name, role, _ in models if role not in ROLES]
    if bad:
        raise ValueError(f"model {bad[0][0]!r}: role must be one of {ROLES}, not {bad[0][1]!r}")
    with console.task("evaluating", total=len(models) * len(tasks), unit="eval") as bar:
        for name, role, model in models:
            bar.update(info=f"{name}: loading")
            tok = tokenizer
            if isinstance(model, str | Path):  # loaded once for all its tasks (one bar step per task)
                model, tok = load_model(model), load_tokenizer(model)
            for task in tasks:
                bar.update(info=f"{name} on {task.name}")
                s = evaluate_model(model, [task], tokenizer=tok, split=split, limit=limit,
                                   batch_size=batch_size)[task.name]
                rows.append({"model": name, "role": role, "task": task.name, "accuracy": s["accuracy"],
                             "loglik": s["loglik"], "n": s["n"]})
                bar.update(advance=1)
            del model
    kept = retention(rows)
    for r in rows:  # beside accuracy in every copy of the rows (report.json, result.json, W&B)
        if r["role"] == "merged" and "gain_kept" in kept.get(r["task"], {}):
            r["gain_kept"] = kept[r["task"]]["gain_kept"]
    write_json(run_dir / REPORT_JSON, {"split": split, "rows": rows, "retention": kept})
    table = format_table(rows)
    kept_lines = [f"- {t}: merged {_fmt(k['merged_accuracy'], True)} vs best source {k['best_source']} "
                  f"{_fmt(k['source_accuracy'], True)} (kept {_fmt(k['kept'], True)}"
                  + (f"; base {_fmt(k['base_accuracy'], True)}, gain kept {_fmt(k['gain_kept'], True)}"
                     if "gain_kept" in k else "") + ")" for t, k in kept.items()]
    write_text(run_dir / REPORT_MD, "# Merge report\n\nSplit: `" + split + "`; cells: exact-match accuracy "
               "(mean log-likelihood per answer token).\n\n" + table + "\n"
               + ("\n## Kept from the best source\n\n" + "\n".join(kept_lines) + "\n" if kept_lines else ""))
    png = plot_report(rows, run_dir / REPORT_PNG)
    if tracker is not None:
        columns = ["model", "role", "task", "accuracy", "loglik", "n", "gain_kept"]
        tracker.table("merge_report", columns, [[r.get(c) for c in columns] for r in rows])
        tracker.image("merge_report_plot", png)
        tracker.summary({f"merged/{t}/accuracy": r["accuracy"] for t, r in
                         ((r["task"], r) for r in rows if r["role"] == "merged")}
                        | {f"merged/{t}/gain_kept": k["gain_kept"] for t, k in kept.items()
                           if k.get("gain_kept") is not None})
    return rows
