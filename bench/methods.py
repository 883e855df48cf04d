"""Benchmark 6: every mergekit method — hpc_merge vs the I/O floor vs mergekit-yaml, on both input kinds.

``python bench/run.py --only methods`` merges three 0.5B-shaped bf16 models (base + two
fine-tunes; ``--quick``: 24M) of each input kind (``dense`` and ``bf16ft``, see
``bench/inputs.py``) with each of mergekit's 20 methods, once through ``python -m hpc_merge``
and once through ``mergekit-yaml``, each beside a run of the I/O floor (``bench/floor.py`` linear:
read every tensor once, one weighted sum, one write). Targets (issue 15): TIES ≤ 1.5 × floor; the
other sparsifying methods ≤ 2 ×; the rest ≤ 1.5 ×; peak RSS bounded (see the notes).

``BENCH_METHODS=dare_ties,ties`` and ``BENCH_KINDS=bf16ft`` restrict the run (the full table is
80 merges: about an hour here when the machine is quiet). Results go to
``bench/results/methods-<kind>.json`` (merged into what an earlier run wrote, one entry per
method, each with ``ratio`` fields and the load average when it ran), because the machine is
shared with other agents and a long run is better taken in pieces.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

from bench import commands, inputs
from bench.context import Context
from bench.proc import Sample, run_once, warm_cache
from bench.table import Table

NAME = "methods"
RESULTS = Path(__file__).resolve().parent / "results"
SPARSIFYING = ("dare_ties", "dare_linear", "della", "della_linear", "breadcrumbs", "breadcrumbs_ties", "sce")
METHODS = ("linear", "task_arithmetic", "ties", *SPARSIFYING, "slerp", "nuslerp", "multislerp", "karcher",
           "model_stock", "arcee_fusion", "ram", "ramplus_tl", "nearswap", "passthrough")


def target(method: str) -> float:
    """The issue's wall-time target in × floor."""
    return 2.0 if method in SPARSIFYING else 1.5


def method_recipe(method: str, models: list[Path]) -> dict[str, Any]:
    """A typical recipe of ``method`` over base + two fine-tunes (two inputs where the method takes two)."""
    base, a, b = (str(m) for m in models)
    dtype = {"dtype": "bfloat16"}
    if method == "linear":
        return {"merge_method": method, **dtype, "models": [{"model": m, "parameters": {"weight": 1 / 3}}
                                                             for m in (base, a, b)]}
    if method == "passthrough":
        return {"merge_method": method, **dtype, "models": [{"model": a}]}
    if method in ("slerp", "nearswap"):
        return {"merge_method": method, "base_model": base, **dtype, "parameters": {"t": 0.5 if method == "slerp" else 1e-3},
                "models": [{"model": base}, {"model": a}]}
    if method == "arcee_fusion":
        return {"merge_method": method, "base_model": base, **dtype, "out_dtype": "bfloat16",
                "models": [{"model": base}, {"model": a}]}
    if method in ("nuslerp", "multislerp"):
        return {"merge_method": method, **dtype, "models": [{"model": m, "parameters": {"weight": 0.5}} for m in (a, b)]}
    if method == "karcher":
        return {"merge_method": method, **dtype, "models": [{"model": m} for m in (base, a, b)]}
    per_model: dict[str, Any] = {"weight": 0.5}
    shared: dict[str, Any] = {}
    if method in ("ties", "dare_ties", "dare_linear"):
        per_model["density"] = 0.5
    elif method.startswith("breadcrumbs"):
        per_model.update(density=0.9, gamma=0.01)
    elif method.startswith("della"):
        per_model.update(density=0.5, epsilon=0.1)
    elif method == "sce":
        shared["select_topk"] = 0.5
        per_model = {}
    elif method in ("model_stock", "ram", "ramplus_tl"):
        per_model = {}
    recipe = {"merge_method": method, "base_model": base, **dtype,
              "models": [{"model": m, **({"parameters": per_model} if per_model else {})} for m in (a, b)]}
    if method == "model_stock":
        recipe["models"].insert(0, {"model": base})
    if shared:
        recipe["parameters"] = shared
    return recipe


def _selected(env: str, default: tuple[str, ...]) -> tuple[str, ...]:
    raw = os.environ.get(env)
    return tuple(x for x in raw.split(",") if x in default) if raw else default


def _entry(method: str, hpc: Sample, mk: Sample | None, floor: Sample, shard_mb: float) -> dict[str, Any]:
    entry = {"method": method, "taken": time.strftime("%Y-%m-%d %H:%M"), "load": os.getloadavg()[0],
             "floor_s": floor.wall_s, "floor_cpu_s": floor.cpu_s,
             "hpc_merge": {"wall_s": hpc.wall_s, "cpu_s": hpc.cpu_s, "peak_rss_mb": hpc.peak_rss_mb},
             "ratio": {"floor": hpc.wall_s / floor.wall_s, "floor_cpu": (hpc.cpu_s or 0) / (floor.cpu_s or 1),
                       "shard_rss": hpc.peak_rss_mb / shard_mb},
             "target_x_floor": target(method)}
    if mk is not None:
        entry["mergekit_yaml"] = {"wall_s": mk.wall_s, "cpu_s": mk.cpu_s, "peak_rss_mb": mk.peak_rss_mb}
        entry["ratio"]["mergekit_yaml"] = hpc.wall_s / mk.wall_s
    return entry


def _load(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text()) if path.exists() else {}


def run(ctx: Context) -> list[Table]:
    """One floor per kind, then hpc_merge and mergekit-yaml per method (one run each: 80 merges)."""
    shape = inputs.QUICK_M if ctx.quick else inputs.QWEN05
    work = ctx.scratch(NAME)
    skip_mk = os.environ.get("BENCH_SKIP_MERGEKIT") == "1"
    tables = []
    for kind in _selected("BENCH_KINDS", inputs.KINDS):
        models = inputs.ensure_models(shape, 3, kind)
        shard_mb = max((m / "model.safetensors").stat().st_size for m in models) / 2**20
        warm_cache(models)
        floor_recipe = inputs.write_recipe(method_recipe("linear", models), work / f"{kind}-floor.yaml")
        path = RESULTS / f"methods-{kind}{'-quick' if ctx.quick else ''}.json"
        results = _load(path)
        results.update(shape=shape.label, kind=kind, models_gb=[round(m.stat().st_size / 1e9, 3) for m in
                                                               (p / "model.safetensors" for p in models)])
        by_method = results.setdefault("methods", {})
        for method in _selected("BENCH_METHODS", METHODS):
            recipe = inputs.write_recipe(method_recipe(method, models), work / f"{kind}-{method}.yaml")
            try:  # the floor beside each method: a ratio compares runs under the same machine state
                floor = run_once(commands.floor(floor_recipe, work / "out"))
                hpc = run_once(commands.hpc_merge(recipe, work / "out", work / "logs"))
                mk = None if skip_mk else run_once(commands.mergekit_yaml(recipe, work / "out"))
            except RuntimeError as exc:  # one failing method must not lose the others' rows
                ctx.log(f"    {kind} {method}: FAILED {str(exc).strip().splitlines()[-1][:300]}")
                by_method[method] = {"method": method, "failed": str(exc)[-2000:], "load": os.getloadavg()[0]}
                continue
            entry = _entry(method, hpc, mk, floor, shard_mb)
            if mk is None and method in by_method and "mergekit_yaml" in by_method[method]:
                entry["mergekit_yaml"] = by_method[method]["mergekit_yaml"]  # kept from an earlier run
                entry["mergekit_yaml"]["from_earlier_run"] = True
                entry["ratio"]["mergekit_yaml"] = hpc.wall_s / entry["mergekit_yaml"]["wall_s"]
            by_method[method] = entry
            ctx.log(f"    {kind} {method}: {hpc.wall_s:.1f} s ({entry['ratio']['floor']:.2f} × floor {floor.wall_s:.1f} s), "
                    f"cpu {hpc.cpu_s:.1f} s, peak {hpc.peak_rss_mb:.0f} MB; mergekit-yaml "
                    + (f"{mk.wall_s:.1f} s, {mk.peak_rss_mb:.0f} MB" if mk else "skipped")
                    + f"; load {entry['load']:.1f}")
            tmp = path.with_suffix(".json.tmp")
            tmp.write_text(json.dumps(results, indent=1))
            os.replace(tmp, path)
        tables.append(table(results, shard_mb))
    return tables


def table(results: dict[str, Any], shard_mb: float) -> Table:
    """The 20-method table of one input kind from its results file."""
    t = Table(f"Every method: three {results['shape']} bf16 models, `{results['kind']}` fine-tunes",
              ["method", "hpc_merge s", "cpu s", "floor s", "× floor", "× floor (cpu)", "target", "mergekit-yaml s",
               "× mergekit-yaml", "peak RSS MB (hpc / mk)", "× shard", "load"])
    for method in METHODS:
        e = results.get("methods", {}).get(method)
        if e is None or "failed" in e:
            t.add(method, "not run" if e is None else "FAILED (see the json)", *[""] * 10)
            continue
        h, mk, r = e["hpc_merge"], e.get("mergekit_yaml"), e["ratio"]
        met = "met" if r["floor"] <= e["target_x_floor"] else "NOT met"
        t.add(method, h["wall_s"], h["cpu_s"], e["floor_s"], f"{r['floor']:.2f} ×", f"{r['floor_cpu']:.2f} ×",
              f"≤ {e['target_x_floor']} × ({met})", mk["wall_s"] if mk else "-",
              f"{r['mergekit_yaml']:.2f} ×" if mk else "-",
              f"{h['peak_rss_mb']:.0f} / {mk['peak_rss_mb']:.0f}" if mk else f"{h['peak_rss_mb']:.0f} / -",
              f"{r['shard_rss']:.2f} ×", f"{e['load']:.1f}")
    t.notes += [
        "floor: `bench/floor.py` linear over the same three models (read once, one weighted sum, one write), "
        "run just before each method's hpc_merge and mergekit-yaml runs (a single floor at the start "
        f"made every ratio hostage to one reading); largest shard {shard_mb:.0f} MiB.",
        "one run per cell; wall time includes interpreter start and imports (hpc_merge also composes its "
        "config, validates and writes its run dir). `cpu s` is user + system CPU of the command, which a "
        "loaded machine inflates less than wall time; `load` is the 1-minute load average when the row ran "
        "(this 2-core machine is shared with other agents: above 2, timings are noisy — do not over-read them).",
    ]
    return t
