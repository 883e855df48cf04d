"""Benchmark 3: peak RSS of a merge against the largest single input shard.

Target (issue 9): ≤ 1.5 × the largest shard (out of core: not the whole model in RAM). The
product's ``job.options.out_shard_size`` (bytes; default 1B) bounds how much output mergekit
holds before writing, so it is swept here. Peak RSS counts weights read through mmap too (touched
file pages are resident), and the fixed cost of a Python process with torch and transformers
loaded, which is reported separately (the dry run's peak) so the two can be told apart.
"""

from __future__ import annotations

from bench import commands, inputs
from bench.context import Context
from bench.proc import PY, Cmd, run_once, warm_cache
from bench.table import Table

NAME = "memory"


def run(ctx: Context) -> list[Table]:
    """One run per setting (peak RSS barely varies run to run)."""
    shape = inputs.QUICK_M if ctx.quick else inputs.QWEN05
    models = inputs.ensure_models(shape, 3)
    work = ctx.scratch(NAME)
    logs = work / "logs"
    shard_mb = max((m / "model.safetensors").stat().st_size for m in models) / 2**20
    sizes = ["1B", "10M", "2M"] if ctx.quick else ["1B", "200M", "50M"]
    warm_cache(models)

    rows: list[tuple[str, str, float, float]] = []

    def measure(label: str, method: str, cmd: Cmd, wall: bool = True) -> None:
        s = run_once(cmd)
        ctx.log(f"    {label} [{method}]: peak {s.peak_rss_mb:.0f} MB, {s.wall_s:.1f} s")
        rows.append((label, method, s.peak_rss_mb, s.wall_s if wall else float("nan")))

    recipes = {m: inputs.write_recipe(inputs.recipe(m, models), work / f"{m}.yaml") for m in ("linear", "ties")}
    dry = run_once(Cmd([PY, "-m", "hpc_merge", f"mergekit_yaml={recipes['linear']}", "logger=none",
                        "job.dry_run=true"], env={"HPC_MERGE_LOGS": str(logs)}))
    for size in sizes:
        measure(f"hpc_merge job.options.out_shard_size={size}", "linear",
                commands.hpc_merge(recipes["linear"], work / "out", logs, f"job.options.out_shard_size={size}"))
    for size in (sizes[0], sizes[1]):
        measure(f"hpc_merge job.options.out_shard_size={size}", "ties",
                commands.hpc_merge(recipes["ties"], work / "out", logs, f"job.options.out_shard_size={size}"))
    measure("mergekit-yaml (defaults: 5B)", "linear", commands.mergekit_yaml(recipes["linear"], work / "out"))
    measure("floor (whole output in RAM, one save_file)", "linear", commands.floor(recipes["linear"], work / "out"))

    t = Table(f"Memory: peak RSS vs the largest input shard ({shard_mb:.0f} MiB; three {shape.label} models)",
              ["command", "method", "peak RSS MiB", "× largest shard", "(peak − idle) × shard", "wall s"])
    idle = dry.peak_rss_mb
    for label, method, peak, wall in rows:
        t.add(label, method, peak, f"{peak / shard_mb:.2f} ×", f"{(peak - idle) / shard_mb:.2f} ×", wall)
    best = min(r[2] for r in rows if r[0].startswith("hpc_merge"))
    t.notes += [
        f"idle: `python -m hpc_merge ... job.dry_run=true` peaks at {idle:.0f} MiB (Python, torch, transformers, "
        "Hydra, mergekit imported; no weights) — a fixed cost that is not proportional to the model.",
        f"target ≤ 1.5 × the largest shard: best hpc_merge setting {best / shard_mb:.2f} × — "
        f"{'met' if best <= 1.5 * shard_mb else 'NOT met'}.",
        "one run per row (peak RSS is stable run to run); RSS includes input pages read through mmap.",
    ]
    if ctx.quick:
        t.notes.append("--quick: the inputs are tiny, so the fixed import cost dominates every ratio here; "
                       "read the full-size table.")
    return [t]
