"""A sweep's points best first, as a table, a CSV and a plot (``hpc-merge sweep-report``: :mod:`hpc_merge.cli.sweep_report`).

The report is rebuilt from the run dirs every time (through :func:`sweepfile.refresh`), so it is
right whether the sweep was waited for or not, and can be asked for while the array still runs.
The plot shows the key metric against the swept parameter(s) when one or two of them are numbers:
one -> a line (one per value of any other swept parameter), two -> a heat map.
"""

from __future__ import annotations

import csv
import io
import os
from pathlib import Path
from typing import Any

from hpc_merge.sweep import sweepfile
from hpc_merge.sweep.table import counts, fmt_value, metric_of, plain, ranked, rows

CSV_FILE = "report.csv"
PNG_FILE = "report.png"


def numeric_params(data: dict[str, Any]) -> list[str]:
    """Swept parameters whose every value is a number (booleans are not)."""
    out = []
    for key in data.get("params") or []:
        values = [(p.get("params") or {}).get(key) for p in data["points"]]
        if values and all(isinstance(v, int | float) and not isinstance(v, bool) for v in values):
            out.append(key)
    return out


def write_csv(path: Path, data: dict[str, Any], points: list[dict[str, Any]]) -> Path:
    """One row per point (best first): index, swept values, state, every metric, run dir, overrides."""
    metric, _ = metric_of(data)
    names = sorted({k for p in points for k in (p.get("metrics") or {})} - {metric} - {None})
    params = list(data.get("params") or [])
    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(["rank", "index", *params, "state", *([metric] if metric else []), *names, "run_dir",
                     "overrides", "note"])
    for rank, p in enumerate(points, 1):
        m = p.get("metrics") or {}
        writer.writerow([rank, p["index"], *((p.get("params") or {}).get(k) for k in params), p.get("state"),
                         *([m.get(metric)] if metric else []), *(m.get(k) for k in names), p["run_dir"],
                         " ".join(p.get("overrides") or []), p.get("skipped") or p.get("error") or ""])
    from hpc_merge.atomic import write_text

    write_text(path, buf.getvalue())
    return path


def plot(path: Path, data: dict[str, Any]) -> str | None:
    """Draw the metric against the numeric swept parameter(s); returns why not when it cannot."""
    metric, lower = metric_of(data)
    nums = numeric_params(data)
    others = [k for k in data.get("params") or [] if k not in nums]
    if not metric:
        return "no key metric"
    if len(nums) not in (1, 2):
        return f"{len(nums)} numeric swept parameters (a plot needs one or two)"
    if len(nums) == 2 and others:
        return f"two numeric swept parameters and also {', '.join(others)}"
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    def value(p: dict[str, Any]) -> float:
        v = (p.get("metrics") or {}).get(metric)
        return float("nan") if v is None else float(v)

    better = "lower" if lower else "higher"
    fig, ax = plt.subplots(figsize=(6.4, 4.4))
    if len(nums) == 1:
        key = nums[0]
        lines: dict[str, list[tuple[float, float]]] = {}
        for p in data["points"]:
            label = " ".join(f"{k}={(p.get('params') or {}).get(k)}" for k in others)
            lines.setdefault(label, []).append((float(p["params"][key]), value(p)))
        for label, pts in sorted(lines.items()):
            pts.sort()
            ax.plot([x for x, _ in pts], [y for _, y in pts], marker="o", label=label or None)
        if any(lines):
            ax.legend(fontsize=8)
        ax.set_xlabel(key)
        ax.set_ylabel(f"{metric} ({better} is better)")
    else:
        xk, yk = nums
        xs = sorted({float(p["params"][xk]) for p in data["points"]})
        ys = sorted({float(p["params"][yk]) for p in data["points"]})
        grid = [[float("nan")] * len(xs) for _ in ys]
        for p in data["points"]:
            grid[ys.index(float(p["params"][yk]))][xs.index(float(p["params"][xk]))] = value(p)
        im = ax.imshow(grid, origin="lower", aspect="auto", cmap="viridis_r" if lower else "viridis")
        ax.set_xticks(range(len(xs)), [f"{x:g}" for x in xs])
        ax.set_yticks(range(len(ys)), [f"{y:g}" for y in ys])
        for i, row in enumerate(grid):
            for j, v in enumerate(row):
                ax.text(j, i, "-" if v != v else f"{v:.3g}", ha="center", va="center", fontsize=8,
                        bbox={"boxstyle": "round,pad=0.2", "facecolor": "white", "alpha": 0.7, "linewidth": 0})
        ax.set_xlabel(xk)
        ax.set_ylabel(yk)
        fig.colorbar(im, ax=ax, label=f"{metric} ({better} is better)")
    ax.set_title(f"sweep {data.get('sweep_id', '')}", fontsize=9)
    fig.tight_layout()
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    tmp.replace(path)
    return None


def write_report(sweep_dir: str | Path, data: dict[str, Any] | None = None, metric: str | None = None,
                 mode: str | None = None) -> str:
    """Refresh the sweep (unless ``data`` is given), write the CSV and the plot; returns the text."""
    sweep_dir = Path(sweep_dir)
    if data is None:
        from hpc_merge.run.reader import Reader

        reader = Reader(sweepfile.run_dirs(sweepfile.read_sweep(sweep_dir)))
        data = sweepfile.refresh(sweep_dir, reader, write=os.access(sweep_dir / sweepfile.SWEEP_FILE, os.W_OK))
    if metric or mode:
        data = {**data, "metric": metric or data.get("metric"), "mode": mode or data.get("mode")}
    points = ranked(data)
    header, body = rows(data, points, extra_metrics=True)
    csv_path = write_csv(sweep_dir / CSV_FILE, data, points)
    png = sweep_dir / PNG_FILE
    why_not = plot(png, data)
    name, lower = metric_of(data)
    order = f"best first by {name} ({'lower' if lower else 'higher'} is better)" if name else "in sweep order"
    lines = [f"sweep {data.get('sweep_id')}: {len(points)} points ({counts(data)}), {order}",
             plain(header, body), f"csv:  {csv_path}", f"plot: {png}" if why_not is None else f"plot: none ({why_not})"]
    notes = [f"  #{p['index']}: {p['skipped']}" for p in points if p.get("skipped")]
    if notes:
        lines += ["skipped (ran before):", *notes]
    best = points[0] if points and name and (points[0].get("metrics") or {}).get(name) is not None else None
    if best is not None:
        lines.append(f"best: #{best['index']} {best.get('label', '')}: {name}={fmt_value(best['metrics'][name])}"
                     f"  {best['run_dir']}")
    return "\n".join(lines)
