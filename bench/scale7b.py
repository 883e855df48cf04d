"""Benchmark 7: a 3 × 7B merge larger than this machine's memory — hpc_merge vs the floor vs mergekit-yaml.

``python bench/run.py --only scale7b`` builds three Qwen2.5-7B-shaped bf16 models (base + two
``bf16ft`` fine-tunes, 15.2 GB each, 4 Hub-style shards with an index) once into the bench cache,
then merges them with TIES, dare_ties and linear through ``python -m hpc_merge`` and
``mergekit-yaml``, beside the I/O floor (``bench/floor.py`` linear, one output shard at a time).
Together the inputs (46 GB) exceed the 24 GiB of RAM, so no page cache holds them: every
command reads from disk. Targets (issue 15): hpc_merge peak RSS ≤ 2 GiB, wall ≤ 1.3 × the floor.

Before building or merging it checks the free disk space (inputs not yet built + one output +
10 % margin) and stops with a table row saying why if there is not enough; each output is deleted
after its run. mergekit-yaml runs with a 30-minute limit (``BENCH_MK_LIMIT_S``): if it is killed
the row records that and its peak so far is not available; ``BENCH_SKIP_MERGEKIT=1`` leaves it out. ``--quick`` runs the same flow on a
24M model with the same layout (untied, 4 shards) to check the script, not to measure.
"""

from __future__ import annotations

import os
import shutil
import time

from bench import commands, inputs
from bench.context import Context
from bench.methods import method_recipe
from bench.proc import Sample, run_once
from bench.table import Table

NAME = "scale7b"
METHODS = ("ties", "dare_ties", "linear")


def _missing_bytes(shape: inputs.Shape) -> int:
    """Bytes the not-yet-built inputs will take."""
    missing = 0
    for name in inputs.NAMES[:3]:
        folder = inputs.model_dir(shape, name, "bf16ft")
        if not (folder / "model.safetensors.index.json").exists():
            missing += int(shape.params() * 2)
    return missing


def _timed(cmd, limit_s: float | None) -> tuple[Sample | None, str]:
    """Run ``cmd``; None and the reason when it fails or runs past ``limit_s``."""
    import subprocess

    if limit_s is not None:
        cmd.argv = ["timeout", "-s", "KILL", str(int(limit_s)), *cmd.argv]
    try:
        return run_once(cmd), ""
    except RuntimeError as exc:
        text = str(exc)
        killed = "command failed (137)" in text or "command failed (-9)" in text
        return None, ("killed after the time limit" if killed else text.strip().splitlines()[-1][:200])
    except subprocess.SubprocessError as exc:
        return None, str(exc)[:200]


def run(ctx: Context) -> list[Table]:
    """Disk check, build (cached), then floor / hpc_merge / mergekit-yaml per method, outputs removed between runs."""
    shape = inputs.QUICK_SHARDED if ctx.quick else inputs.QWEN7B
    work = ctx.scratch(NAME)
    t = Table(f"Out of core: three {shape.label} bf16 models ({shape.gbytes():.1f} GB each, "
              f"{int(shape.shard_gb)} GB shards), bf16ft fine-tunes",
              ["method", "command", "wall s", "× floor", "peak RSS MiB", "cpu s", "note"])
    need = _missing_bytes(shape) + int(shape.params() * 2 * 1.1)
    free = shutil.disk_usage(work).free
    ctx.log(f"  free disk {free / 1e9:.0f} GB, need {need / 1e9:.0f} GB (inputs to build + one output + 10 %)")
    if free < need:
        t.notes.append(f"NOT RUN: {free / 1e9:.0f} GB free on the bench cache's disk, {need / 1e9:.0f} GB needed.")
        return [t]
    t0 = time.time()
    models = inputs.ensure_models(shape, 3, "bf16ft")
    ctx.log(f"  inputs ready in {time.time() - t0:.0f} s: {[str(m) for m in models]}")
    limit = float(os.environ.get("BENCH_MK_LIMIT_S", "1800"))
    out = work / "out"
    floor_recipe = inputs.write_recipe(method_recipe("linear", models), work / "floor.yaml")
    floor, why = _timed(commands.floor(floor_recipe, out), None)
    if floor is None:
        t.notes.append(f"floor failed: {why}")
        return [t]
    t.add("linear", "floor", floor.wall_s, "1.00 ×", floor.peak_rss_mb, floor.cpu_s, "")
    ctx.log(f"    floor {floor.wall_s:.0f} s, peak {floor.peak_rss_mb:.0f} MiB, load {os.getloadavg()[0]:.1f}")
    verdicts = []
    for method in METHODS:
        recipe = inputs.write_recipe(method_recipe(method, models), work / f"{method}.yaml")
        runs = [("hpc_merge", commands.hpc_merge(recipe, out, work / "logs"), None),
                ("mergekit-yaml", commands.mergekit_yaml(recipe, out), limit)]
        if os.environ.get("BENCH_SKIP_MERGEKIT") == "1":  # hpc_merge and the floor only (mergekit-yaml: 30 min)
            runs = runs[:1]
        for label, cmd, cap in runs:
            sample, why = _timed(cmd, cap)
            shutil.rmtree(out, ignore_errors=True)  # also after a killed run
            if sample is None:
                t.add(method, label, "-", "-", "-", "-", why)
                ctx.log(f"    {method} {label}: {why}")
                continue
            t.add(method, label, sample.wall_s, f"{sample.wall_s / floor.wall_s:.2f} ×", sample.peak_rss_mb,
                  sample.cpu_s, f"load {os.getloadavg()[0]:.1f}")
            ctx.log(f"    {method} {label}: {sample.wall_s:.0f} s, peak {sample.peak_rss_mb:.0f} MiB")
            if label == "hpc_merge":
                verdicts.append(f"{method}: peak {sample.peak_rss_mb / 1024:.2f} GiB "
                                f"({'met' if sample.peak_rss_mb <= 2048 else 'NOT met'}), "
                                f"{sample.wall_s / floor.wall_s:.2f} × floor "
                                f"({'met' if sample.wall_s <= 1.3 * floor.wall_s else 'NOT met'})")
    t.notes += [
        "targets: peak RSS ≤ 2 GiB, wall ≤ 1.3 × floor — " + "; ".join(verdicts),
        f"inputs {3 * shape.gbytes():.0f} GB in total against {os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES') / 2**30:.0f} "
        "GiB of RAM: reads come from disk; one run per cell, outputs deleted between runs; the floor writes "
        "one output shard at a time (its RSS is one shard plus its mapped inputs).",
    ]
    if ctx.quick:
        t.notes.append("--quick: a 24M model with the 7B layout, to check the script; the numbers mean nothing.")
    return [t]
