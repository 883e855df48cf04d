"""Benchmark 6: the merge bench on a GPU — only where one is lent; never required.

The same TIES recipe as benchmark 1, timed interleaved: hpc_merge on the GPU
(``job.options.device=cuda``), mergekit-yaml with ``--cuda``, and hpc_merge on the CPU as the
reference the other two are compared with (elements equal after the timed runs: bf16 arithmetic
may round differently on the two devices, the exact-k trim keeps the same elements on both).
Written without a GPU to run it on (none was lent while it was written): where CUDA is missing it
says so and measures nothing.
"""

from __future__ import annotations

from bench import commands, inputs
from bench.context import Context
from bench.merge_floor import compare_outputs
from bench.proc import interleaved, warm_cache
from bench.table import Table, median, ratio, spread

NAME = "gpu"


def run(ctx: Context) -> list[Table]:
    """Time the GPU merge against mergekit-yaml --cuda and the CPU merge, or say why not."""
    import torch

    if not torch.cuda.is_available():
        t = Table("GPU", ["status"])
        t.add(f"skipped: no CUDA device on this machine (torch {torch.__version__}); "
              "the GPU variant of the merge bench was not run")
        return [t]
    shape = inputs.QUICK_M if ctx.quick else inputs.QWEN05
    models = inputs.ensure_models(shape, 3)
    work = ctx.scratch(NAME)
    recipe = inputs.write_recipe(inputs.recipe("ties", models), work / "ties.yaml")
    warm_cache(models)
    last = ctx.reps - 1
    outs = {k: work / f"out-{k}" for k in ("gpu", "mergekit-yaml", "cpu")}

    def keep(cmd, rep):  # keep the last repetition's outputs for the comparison
        if rep == last:
            cmd.cleanup = []
        return cmd

    res = interleaved({
        "hpc_merge job.options.device=cuda": lambda r: keep(
            commands.hpc_merge(recipe, outs["gpu"], work / "logs", "job.options.device=cuda"), r),
        "mergekit-yaml --cuda": lambda r: keep(commands.mergekit_yaml(recipe, outs["mergekit-yaml"], "--cuda"), r),
        "hpc_merge job.options.device=cpu": lambda r: keep(
            commands.hpc_merge(recipe, outs["cpu"], work / "logs", "job.options.device=cpu"), r),
    }, ctx.reps, log=ctx.log)
    walls = {k: median([s.wall_s for s in v]) for k, v in res.items()}
    ref = walls["mergekit-yaml --cuda"]
    t = Table(f"GPU ({torch.cuda.get_device_name(0)}): TIES of three {shape.label} models",
              ["command", "wall s (median)", "min–max", "× mergekit-yaml --cuda", "peak RSS MB"])
    for k, v in res.items():
        t.add(k, walls[k], spread([s.wall_s for s in v]), ratio(walls[k], ref),
              median([s.peak_rss_mb for s in v]))
    same_gpu, total = compare_outputs(outs["gpu"], outs["cpu"])
    same_mk, _ = compare_outputs(outs["mergekit-yaml"], outs["cpu"])
    t.notes += [
        f"{ctx.reps} interleaved repetitions; wall time includes interpreter start, imports and CUDA start-up.",
        f"elements equal to the CPU merge: hpc_merge on the GPU {same_gpu / total:.4%}, "
        f"mergekit-yaml --cuda {same_mk / total:.4%} (mergekit's argsort trim keeps different tied elements).",
        "on the GPU hpc_merge merges whole tensors (row chunks are a CPU path); peak RSS is host memory.",
    ]
    return [t]
