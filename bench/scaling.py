"""Benchmark 5: merge time vs model size (3 sizes) and vs the number of inputs (2, 3, 5).

Runs the product's CLI (smoke test and W&B off) once per point, then fits time = a + b × GB read
by least squares and extrapolates to a 32B merge. The fit is an extrapolation from models 100 ×
smaller on this machine: it assumes the per-GB cost stays constant (it will not if inputs leave
the page cache, the disk is slower, or RAM runs short) and is labelled as such.
"""

from __future__ import annotations

from bench import commands, inputs
from bench.context import Context
from bench.proc import Sample, run_once, warm_cache
from bench.table import Table

NAME = "scaling"
QWEN32B_PARAMS = 32.8e9  # Qwen2.5-32B; bf16 = 2 bytes per parameter


def fit(xs: list[float], ys: list[float]) -> tuple[float, float]:
    """Least-squares ``(intercept, slope)`` of ys on xs."""
    n = len(xs)
    mx, my = sum(xs) / n, sum(ys) / n
    sxx = sum((x - mx) ** 2 for x in xs)
    slope = sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / sxx if sxx else 0.0
    return my - slope * mx, slope


def _sample(ctx: Context, method: str, models: list, tag: str) -> Sample:
    work = ctx.work / NAME
    recipe = inputs.write_recipe(inputs.recipe(method, models), work / f"{tag}-{method}.yaml")
    warm_cache(models)
    s = run_once(commands.hpc_merge(recipe, work / "out", work / "logs"))
    ctx.log(f"    {tag} {method}: {s.wall_s:.1f} s, peak {s.peak_rss_mb:.0f} MB")
    return s


def _time(ctx: Context, method: str, models: list, tag: str) -> float:
    return _sample(ctx, method, models, tag).wall_s


def run(ctx: Context) -> list[Table]:
    """Sizes × {linear, ties} with 3 inputs; then 2, 3, 5 inputs at one size."""
    ctx.scratch(NAME)
    shapes = [inputs.QUICK_XS, inputs.QUICK_S, inputs.QUICK_M] if ctx.quick else \
        [inputs.QWEN012, inputs.QWEN025, inputs.QWEN05]
    t1 = Table("Scaling with model size (3 inputs, hpc_merge CLI, one run each)",
               ["model", "params", "GB read", "linear s", "ties s", "ties s per GB read"])
    pts: dict[str, list[tuple[float, float]]] = {"linear": [], "ties": []}
    for shape in shapes:
        models = inputs.ensure_models(shape, 3)
        gb = 3 * shape.gbytes()
        lin, ties = (_time(ctx, m, models, shape.label) for m in ("linear", "ties"))
        pts["linear"].append((gb, lin))
        pts["ties"].append((gb, ties))
        t1.add(shape.label, f"{shape.params() / 1e6:.0f} M", f"{gb:.2f}", lin, ties, f"{ties / gb:.1f}")

    # inputs: the quick merge size in --quick, the smallest full size otherwise (5 × 0.5B does not fit
    # the run's time budget on this machine); linear and TIES, each one run per point
    few = inputs.QUICK_M if ctx.quick else inputs.QWEN012
    t2 = Table(f"Scaling with the number of inputs ({few.label} models, base included, one run each)",
               ["inputs", "GB read", "linear s", "ties s", "ties peak RSS MB"])
    per_n: dict[str, list[tuple[float, float]]] = {"linear": [], "ties": []}
    for n in (2, 3, 5):
        models = inputs.ensure_models(few, n)
        lin = _time(ctx, "linear", models, f"{few.label}-n{n}")
        ties = _sample(ctx, "ties", models, f"{few.label}-n{n}")
        per_n["linear"].append((n, lin))
        per_n["ties"].append((n, ties.wall_s))
        t2.add(n, f"{n * few.gbytes():.2f}", lin, ties.wall_s, ties.peak_rss_mb)
    slopes = {m: fit([x for x, _ in xy], [y for _, y in xy]) for m, xy in per_n.items()}
    t2.notes.append("least-squares cost per extra input: " + "; ".join(
        f"{m} {b:.1f} s/input (fixed {a:.1f} s)" for m, (a, b) in slopes.items()) +
        " — the fixed part is mostly interpreter start-up and imports (see the start-up table).")

    gb32 = QWEN32B_PARAMS * 2 / 1e9
    t3 = Table("EXTRAPOLATION to a 32B merge (3 × Qwen2.5-32B, bf16) — a straight-line fit, not a measurement",
               ["method", "fit: s = a + b × GB read", "predicted for 3 × 32B (" + f"{3 * gb32:.0f} GB read)"])
    for method, xy in pts.items():
        a, b = fit([x for x, _ in xy], [y for _, y in xy])
        pred = a + b * 3 * gb32
        t3.add(method, f"a = {a:.1f} s, b = {b:.2f} s/GB", f"{pred / 60:.0f} min (≈ {pred / 3600:.1f} h)")
    t3.notes += [
        "fitted on three points from this 2-core machine with the inputs in the page cache; a 32B merge reads "
        f"{3 * gb32:.0f} GB, which no page cache here holds, so add the disk read time "
        f"({3 * gb32 / 2.0:.0f} s at 2 GB/s) for linear, whose time is mostly I/O.",
        "TIES is CPU-bound on mergekit's per-tensor arithmetic (task vectors, sign election; the trim is "
        "the O(n) exact-k one): it scales with element count and with cores (torch's intra-op threads); "
        "on a GPU node (`job.options.device=cuda`) it is far faster — not measured here.",
        "peak RAM does not grow with the model size: row-separable methods (linear, task_arithmetic, ties, ...) "
        "hold 16 MB of rows per input plus the largest output tensor; methods that merge whole tensors hold "
        "the largest tensor × (inputs + the method's temporaries) (see the memory table).",
    ]
    if ctx.quick:
        t3.notes.append("--quick: fitted on tiny models whose time is mostly interpreter start-up; "
                        "the prediction is meaningless — read the full-size table.")
    return [t1, t2, t3]
