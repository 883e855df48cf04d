"""The merge job: a mergekit recipe (one stage or several) -> a checked, smoke-tested model.

:func:`validate` (the plan) is :mod:`hpc_merge.jobs.merge_plan`; this module describes and runs it.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import yaml
from omegaconf import DictConfig, OmegaConf

from hpc_merge import console, split
from hpc_merge import mergekit_adapter as mk
from hpc_merge.cluster.executor import single_process
from hpc_merge.jobs.merge_plan import effective_options, gpu_options_of, stages_of, validate
from hpc_merge.jobs.plans import MergePlan
from hpc_merge.jobs.skeleton import ReportModel, finish_model, output_dir
from hpc_merge.modelcard import write_card
from hpc_merge.resolve import resolve_model
from hpc_merge.run.files import PARTS_DIR, SLURM_DIR, STAGES_DIR
from hpc_merge.run.outputs import model_dir
from hpc_merge.run.status import update_status
from hpc_merge.split.slurm import run_array

__all__ = ["describe", "effective_options", "run", "submit_split_parts", "validate"]


def describe(cfg: DictConfig, plan: MergePlan) -> str:
    """Dry-run text: resolved mergekit YAML per stage, findings, resource estimate."""
    parts = []
    for st in plan["stages"]:
        placeholder = {s["name"]: f"<stage {s['name']} output>" for s in plan["stages"]}
        body = yaml.safe_dump(mk.to_mergekit(st["recipe"], {**placeholder, **st["paths"]}), sort_keys=False)
        parts.append(f"# stage {st['name']} — mergekit config\n{body}")
    parts.append("# architecture check: OK\n" + "\n".join(f"#   {f}" for f in plan["findings"]))
    e = plan["estimate"]
    if e:
        parts.append(f"# estimate: read {e['read_gb']} GB, write {e['write_gb']} GB, peak RAM ~{e['peak_ram_gb']} GB")
    if plan.get("split"):
        parts += [split.describe(p, stage) for stage, p in plan["split"].items()]
        c = OmegaConf.to_container(cfg.cluster, resolve=True) if cfg.get("cluster") is not None else {}
        n = int(cfg.job.tasks)
        if c.get("kind") == "slurm":
            c = single_process(c)  # what each element is submitted with
        parts.append(f"# runs as one SLURM job array of {n} elements, each {c.get('cpus_per_task')} CPUs and "
                     f"{c.get('mem_gb')} GB (cluster.cpus_per_task, cluster.mem_gb), then the merge job assembles"
                     if c.get("kind") == "slurm" else f"# runs as {n} local processes, then assembled here")
    return "\n".join(parts)


def run(cfg: DictConfig, plan: MergePlan, run_dir: Path, tracker: Any) -> dict[str, Any]:
    """Merge every stage (atomically), then smoke-test, evaluate and log the final model."""
    output = output_dir(cfg, run_dir)
    stage_out = {s["name"]: (output if i == len(plan["stages"]) - 1 else run_dir / STAGES_DIR / s["name"])
                 for i, s in enumerate(plan["stages"])}
    timings: dict[str, float] = {}
    split_timing: dict[str, dict[str, Any]] = {}  # job.tasks > 1: per stage, where the parts' time went
    read_total = plan["estimate"].get("read_bytes", 0)
    write_total = plan["estimate"].get("write_bytes", 0)
    for st in plan["stages"]:
        paths = {**st["paths"], **{k: str(v) for k, v in stage_out.items() if k != st["name"]}}
        config = mk.to_mergekit(st["recipe"], paths)
        t0 = time.time()
        update_status(run_dir, phase=f"merge:{st['name']}", tasks_done=0, tasks_total=None)
        label = "merging" + (f" stage {st['name']}" if len(plan["stages"]) > 1 else "")
        with console.task(label, unit="task") as bar:
            def progress(p: dict[str, Any], t0: float = t0, stage: str = st["name"], bar: console.Task = bar) -> None:
                elapsed = max(time.time() - t0, 1e-6)
                frac = p["tasks_done"] / max(p["tasks_total"], 1)
                read = read_total * (p["loads_done"] / max(p["loads_total"], 1))
                written = write_total * (p["tensors_done"] / max(p["tensors_total"], 1))
                update_status(run_dir, phase=f"merge:{stage}", **p, bytes_read=read, bytes_written=written,
                              throughput_mb_s=read / elapsed / 1e6, eta_s=elapsed * (1 - frac) / max(frac, 1e-6))
                bar.update(p["tasks_done"], total=p["tasks_total"],
                           info=f"{p['tensors_done']}/{p['tensors_total']} tensors · {read / elapsed / 1e6:.1f} MB/s read")

            tasks = int(cfg.job.get("tasks") or 1)
            with model_dir(stage_out[st["name"]], run_dir, bool(plan["options"].get("trust_remote_code"))) as tmp:
                if tasks > 1:  # N local processes, then one model (hpc_merge/split/)
                    split_timing[st["name"]] = _merge_split(config, effective_options(plan), tasks, run_dir,
                                                            st["name"], tmp, bar)
                else:
                    mk.run_mergekit(config, tmp, effective_options(plan), progress=progress)
                write_card(tmp, f"{cfg.get('name', 'merge')} ({st['name']})", st["recipe"],
                           {ref: Path(p) for ref, p in paths.items() if ref in st["paths"] or ref in stage_out})
        if tasks > 1:
            split.remove_parts(run_dir / PARTS_DIR / st["name"])  # the model is in place
        timings[f"merge_{st['name']}_s"] = round(time.time() - t0, 3)
    timings["merge_s"] = round(sum(timings.values()), 3)
    size = sum(f.stat().st_size for f in output.glob("*.safetensors"))
    metrics: dict[str, Any] = {"output_bytes": size}
    if split_timing:
        metrics["split"] = split_timing
    tracker.log({"merge_time_s": timings["merge_s"], "output_bytes": size})
    finish_model(cfg, output, list(plan["inputs"]), _report_models(plan, output), run_dir, tracker, timings, metrics)
    tracker.summary({k: v for k, v in metrics.items() if isinstance(v, int | float)} | {"merge_time_s": timings["merge_s"]})
    return {"output_model": str(output), "metrics": metrics, "timings": timings,
            "stages": {k: str(v) for k, v in stage_out.items()}}


def submit_split_parts(cfg: DictConfig, cluster: dict[str, Any], run_dir: Path) -> list[str]:
    """``cluster=slurm*`` with ``job.tasks > 1``: the parts of each stage whose inputs exist now run
    as one SLURM job array, before the merge job (which then finds them and only assembles).

    The recipe, paths and options are worked out as :func:`validate` and :func:`run` do, so the
    parts' fingerprints are those the merge job checks.
    """
    tasks = int(cfg.job.get("tasks") or 1)
    recipe = OmegaConf.to_container(cfg.merge, resolve=True)
    opts = OmegaConf.to_container(cfg.job.options, resolve=True)
    plan = {"options": opts, "gpu_options": gpu_options_of(cfg, opts)}
    options = effective_options(plan, has_cuda=bool(cluster.get("gpus_per_node")))
    stages = stages_of(recipe)
    arrays: list[str] = []
    for name, st, field in stages:
        refs = mk.model_refs(st)
        if any(ref == other for _sub, ref in refs for other, _st, _f in stages):
            continue  # reads an earlier stage's output: split inside the merge job
        paths = {ref: str(resolve_model(ref, f"{field}.{sub}")) for sub, ref in refs}
        config = mk.to_mergekit(st, paths)
        parts = split.plan_parts(config, options, tasks)
        got = run_array(config, options, parts, run_dir / PARTS_DIR / name, cluster, run_dir / SLURM_DIR / f"parts-{name}",
                        f"merge-parts-{cfg.get('name') or run_dir.name}", wait=bool(cluster.get("wait", True)),
                        progress=lambda p, n=name: update_status(run_dir, phase=f"merge:{n} (job array)", **p))
        arrays += [got["array_job_id"]] if got["array_job_id"] else []
    return arrays  # with cluster.wait=false: the arrays the merge job must wait for (afterok)


def _merge_split(config: dict[str, Any], options: dict[str, Any], tasks: int, run_dir: Path, stage: str,
                 out: Path, bar: console.Task) -> dict[str, Any]:
    """One stage as ``tasks`` parts (finished parts of an earlier try reused), assembled into ``out``;
    returns how many parts ran and where their time went."""

    def progress(p: dict[str, Any]) -> None:
        update_status(run_dir, phase=f"merge:{stage}", **p)  # one run: tensors/bytes/ETA of all parts, a row per part
        bar.update(p["parts_done"], total=p["parts_total"], info=f"{p['parts_done']}/{p['parts_total']} parts")

    done = split.merge_split(config, options, tasks, run_dir / PARTS_DIR / stage, out, progress=progress)
    if done["reused"]:
        console.echo(f"{len(done['reused'])} of {done['parts']} parts already recorded (an earlier try, or the "
                     f"SLURM job array), {len(done['ran'])} merged now")
    return {"parts": done["parts"], "ran": len(done["ran"]),
            **{k: done[k] for k in ("worker_start_s", "parts_merge_s") if k in done}}


def _report_models(plan: MergePlan, output: Path) -> list[ReportModel]:
    """The merge report's rows: base, every source and the merged model."""
    final = plan["stages"][-1]["recipe"]
    base_ref = final.get("base_model")
    inputs = plan["inputs"]
    models: list[ReportModel] = []
    if base_ref and str(base_ref) in inputs:
        models.append(("base", "base", inputs[str(base_ref)]))
    for ref, path in inputs.items():
        if ref != str(base_ref):
            models.append((ref.split(":")[-1].split("/")[-1], "source", path))
    models.append(("merged", "merged", str(output)))
    return models
