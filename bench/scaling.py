"""Benchmark 5: merge time vs model size (3 sizes) and vs the number of inputs (2, 3, 5).

Runs the product's CLI (smoke test and W&B off) once per point, then fits time = a + b × GB read
by least squares and extrapolates to a 32B merge. The fit is an extrapolation from models 100 ×
smaller on this machine: it assumes the per-GB cost stays constant (it will not if inputs leave
the page cache, the disk is slower, or RAM runs short) and is labelled as such.
"""

from __future__ import annotations

from bench import commands, inputs
from bench.context import Context
from bench.proc import run_once, warm_cache
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


def _time(ctx: Context, method: str, models: list, tag: str) -> float:
    work = ctx.work / NAME
    recipe = inputs.write_recipe(inputs.recipe(method, models), work / f"{tag}-{method}.yaml")
    warm_cache(models)
    s = run_once(commands.hpc_merge(recipe, work / "out", work / "logs"))
    ctx.log(f"    {tag} {method}: {s.wall_s:.1f} s, peak {s.peak_rss_mb:.0f} MB")
    return s.wall_s


def run(ctx: Context) -> list[Table]:
    """Sizes × {linear, ties} with 3 inputs; then ties with 2, 3, 5 inputs at the middle size."""
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

    mid = shapes[1]
    t2 = Table(f"Scaling with the number of inputs (TIES, {mid.label} models, base included)",
               ["inputs", "GB read", "ties s", "s per input"])
    for n in (2, 3, 5):
        s = _time(ctx, "ties", inputs.ensure_models(mid, n), f"{mid.label}-n{n}")
        t2.add(n, f"{n * mid.gbytes():.2f}", s, s / n)

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
        "TIES is CPU-bound on the per-tensor magnitude trim (argsort): it scales with element count and "
        "with cores (mergekit uses torch's intra-op threads); on a GPU node (`job.options.device=cuda`) "
        "it is far faster — not measured here.",
        "peak RAM grows with the largest tensor × inputs plus job.options.out_shard_size, not with the model "
        "size (see the memory table): set out_shard_size so the node's RAM holds it.",
    ]
    if ctx.quick:
        t3.notes.append("--quick: fitted on tiny models whose time is mostly interpreter start-up; "
                        "the prediction is meaningless — read the full-size table.")
    return [t1, t2, t3]
