"""Per-generation reporting: status file (the monitor), W&B, ``history.json``, ``fitness.png``."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

from hpc_merge.atomic import write_json
from hpc_merge.evolve.dfs import DfsSpace
from hpc_merge.evolve.space import SearchSpace
from hpc_merge.evolve.state import EvolutionState
from hpc_merge.run.files import FITNESS_PNG
from hpc_merge.run.status import update_status


def gene_values(space: SearchSpace | DfsSpace, x: list[float]) -> list[float]:
    """Parameter values of a genotype, in gene order (the candidates table's columns)."""
    if isinstance(space, DfsSpace):
        return space.values(x)
    return [round(g.lo + min(max(v, 0.0), 1.0) * (g.hi - g.lo), space.decimals) for g, v in zip(space.genes, x, strict=True)]


def candidate_table(space: SearchSpace, rows: list[dict[str, Any]], tasks: list[str]) -> tuple[list[str], list[list[Any]]]:
    """Columns and rows of the candidates table (one row per candidate)."""
    cols = ["generation", "index", "key", "status", "fitness", *[f"task/{t}" for t in tasks], *space.labels(), "reason"]
    out = [[r["generation"], r["index"], r["key"], r["status"], r["fitness"],
            *[r["scores"].get(t) for t in tasks], *gene_values(space, r["x"]), r["reason"] or ""] for r in rows]
    return cols, out


def plot_fitness(history: list[dict[str, Any]], path: Path, title: str = "evolution") -> Path:
    """Best-so-far, per-generation best and mean ± std against evaluations; written atomically."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ev = [h["evaluations"] for h in history]
    fig, ax = plt.subplots(figsize=(6, 3.6), dpi=100)
    mean = [h["mean_fitness"] for h in history]
    std = [h["std_fitness"] or 0.0 for h in history]
    if any(m is not None for m in mean):
        pts = [(e, m, s) for e, m, s in zip(ev, mean, std, strict=True) if m is not None]
        ax.fill_between([p[0] for p in pts], [p[1] - p[2] for p in pts], [p[1] + p[2] for p in pts], alpha=0.2,
                        label="mean ± std")
        ax.plot([p[0] for p in pts], [p[1] for p in pts], lw=1)
    ax.plot(ev, [h["best_fitness"] for h in history], "o", ms=3, label="generation best")
    ax.step(ev, [h["best_so_far"] for h in history], where="post", lw=2, label="best so far")
    ax.set_xlabel("evaluations")
    ax.set_ylabel("fitness (validation)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    fd, tmp = tempfile.mkstemp(prefix=".fitness.", suffix=".png", dir=path.parent)
    os.close(fd)
    fig.savefig(tmp)
    plt.close(fig)
    os.chmod(tmp, 0o644)
    os.replace(tmp, path)
    return path


def report_generation(run_dir: Path, tracker: Any, space: SearchSpace, state: EvolutionState,
                      rows: list[dict[str, Any]], max_evaluations: int, step_offset: int = 0) -> None:
    """Everything a finished generation reports (the state itself is already saved).

    ``step_offset``: W&B steps of an earlier search in the same run (ps+dfs: the PS phase's)."""
    h = state.history[-1]
    update_status(run_dir, phase="evolve", generation=h["generation"], evaluations=h["evaluations"],
                  max_evaluations=max_evaluations, best_fitness=h["best_so_far"], generation_best=h["best_fitness"],
                  mean_fitness=h["mean_fitness"], std_fitness=h["std_fitness"], sigma=h["sigma"], failed=h["failed"],
                  tasks_done=h["evaluations"], tasks_total=max_evaluations)
    metrics = {f"evolve/{k}": h[k] for k in ("best_fitness", "mean_fitness", "std_fitness", "best_so_far",
                                              "sigma", "evaluations", "failed", "wall_s") if h[k] is not None}
    metrics.update({f"evolve/task/{t}": v for t, v in h["best_scores"].items()})
    tracker.log(metrics, step=step_offset + h["generation"])
    tasks = sorted({t for c in state.candidates for t in c["scores"]})
    cols, table = candidate_table(space, rows, tasks)
    tracker.table("evolve/candidates", cols, table)
    write_json(run_dir / "history.json", state.history)
    write_json(run_dir / "candidates.json", [{k: v for k, v in c.items() if k != "x"} | {"x": c["x"]}
                                             for c in state.candidates])
    png = plot_fitness(state.history, run_dir / FITNESS_PNG, title=space.name)
    tracker.image("evolve/fitness", png)
