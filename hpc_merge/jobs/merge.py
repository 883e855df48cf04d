"""The merge job: a mergekit recipe (one stage or several) -> a checked, smoke-tested model."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import yaml
from omegaconf import DictConfig, OmegaConf

from hpc_merge import archcheck, console
from hpc_merge import mergekit_adapter as mk
from hpc_merge.errors import ConfigError, did_you_mean
from hpc_merge.models.inputcheck import check_inputs
from hpc_merge.models.resolve import resolve_model
from hpc_merge.outputs import check_output, model_dir
from hpc_merge.status import update_status


def stages_of(recipe: dict[str, Any]) -> list[tuple[str, dict[str, Any], str]]:
    """``[(name, stage_recipe, field), ...]``: a plain recipe is a single stage named ``final``."""
    stages = recipe.get("stages")
    if not stages:
        return [("final", recipe, "merge")]
    extra = [k for k in mk.RECIPE_KEYS if recipe.get(k) is not None]
    if extra:
        raise ConfigError(f"merge.{extra[0]}", "a multi-stage recipe keeps its fields inside stages",
                          "move it into a stage, or drop merge.stages")
    out = []
    for i, st in enumerate(stages):
        name = st.get("name") if isinstance(st, dict) else None
        if not name:
            raise ConfigError(f"merge.stages[{i}].name", "missing", "name every stage; later stages use it as a model")
        out.append((str(name), st, f"merge.stages[{i}]"))
    return out


def gpu_options_of(cfg: DictConfig, opts: dict[str, Any]) -> dict[str, Any]:
    """The cluster profile's ``gpu_options`` (job.options a GPU node gets, e.g. ``multi_gpu``),
    checked now, on the login node, together with ``job.options``."""
    cluster = cfg.get("cluster")
    gpu = OmegaConf.to_container(cluster.gpu_options, resolve=True) if cluster is not None and cluster.get("gpu_options") else {}
    if not isinstance(gpu, dict):
        raise ConfigError("cluster.gpu_options", "must be a mapping of job.options -> value", "e.g. {multi_gpu: true}")
    unknown = sorted(set(gpu) - set(opts))
    if unknown:
        raise ConfigError("cluster.gpu_options", f"unknown option {unknown[0]!r}{did_you_mean(unknown[0], opts)}",
                          "use job.options names (multi_gpu, read_to_gpu, device, ...)")
    if gpu:
        try:
            mk.merge_options({**opts, **gpu})
        except ConfigError as exc:
            raise ConfigError("cluster.gpu_options", exc.problem, exc.fix) from None
    return gpu


def effective_options(plan: dict[str, Any], has_cuda: bool | None = None) -> dict[str, Any]:
    """``job.options`` plus, where this node has a GPU (and the device is not pinned to cpu), the
    profile's ``gpu_options``: one profile serves the CPU login node's dry run and the GPU job."""
    opts = dict(plan["options"])
    if has_cuda is None:
        import torch

        has_cuda = torch.cuda.is_available()
    if plan.get("gpu_options") and has_cuda and opts.get("device", "auto") != "cpu":
        opts.update(plan["gpu_options"])
    return opts


def validate(cfg: DictConfig) -> dict[str, Any]:
    """Schema, model resolution, architecture check, mergekit's own validation, resource estimate."""
    if cfg.get("merge") is None:
        raise ConfigError("merge", "no merge recipe", "choose one: merge=NAME (conf/merge/) or mergekit_yaml=PATH")
    # shown only when slow (first imports of torch and mergekit, a zoo to build, big checkpoints)
    with console.task("checking config and models", unit="model", show_after=2.0) as bar:
        recipe = OmegaConf.to_container(cfg.merge, resolve=True)
        opts = OmegaConf.to_container(cfg.job.options, resolve=True)
        mk.merge_options(opts)  # option errors now, not in the job
        gpu_options = gpu_options_of(cfg, opts)
        stages, done, findings, all_paths = [], [], [], {}
        for name, st, field in stages_of(recipe):
            mk.check_recipe(st, field)
            paths: dict[str, str] = {}
            local: dict[str, Path] = {}
            for sub, ref in mk.model_refs(st):
                if ref in done:
                    continue
                bar.update(info=str(ref))
                path = resolve_model(ref, f"{field}.{sub}")
                if str(ref) not in paths:
                    bar.update(advance=1)
                paths[ref] = str(path)
                local.setdefault(f"{field}.{sub}", path)
            if local:
                reference = next(iter(local))
                findings += archcheck.check_models(dict(local), reference, vocab_may_differ=bool(st.get("tokenizer_source")))
                if st.get("slices"):
                    layers = {ref: archcheck.read_config(Path(p))["num_hidden_layers"] for ref, p in paths.items()}
                    archcheck.check_layer_ranges(st["slices"], layers, field)
                donor = local[reference]
                if not st.get("tokenizer_source") and not mk.donor_has_tokenizer(donor):
                    raise ConfigError(reference, f"the tokenizer donor {donor} has no tokenizer files "
                                      "(mergekit would write an empty tokenizer)",
                                      "use a base model with tokenizer.json + tokenizer_config.json, or set tokenizer_source")
                findings += mk.check_support(dict(local), st, field)  # architecture × method support
            placeholder = {s: f"/stage/{s}" for s in done}
            mk.validate_with_mergekit(mk.to_mergekit(st, {**paths, **placeholder}), field)
            stages.append({"name": name, "field": field, "recipe": st, "paths": paths})
            all_paths.update(paths)
            done.append(name)
        bar.update(info="resolved, architectures match")
    split_parts = _split_parts(stages, opts, int(cfg.job.get("tasks") or 1))  # job.tasks > tensors: refused here
    est = _estimate(stages)
    inputs, donors = _input_fields(stages)
    output = check_output(cfg, inputs, est.get("write_bytes", 0), est.get("write_bytes", 0) * (len(stages) - 1))
    check_inputs(inputs, donors, allow_pickle=bool(cfg.job.get("allow_pickle", False)),
                 trust_remote_code=bool(opts.get("trust_remote_code")))  # last: it loads tokenizers
    return {"stages": stages, "findings": findings, "estimate": est, "options": opts, "gpu_options": gpu_options,
            "inputs": all_paths, "output": str(output), "split": split_parts}


def _split_parts(stages: list[dict[str, Any]], opts: dict[str, Any], tasks: int) -> dict[str, list[Any]]:
    """``{stage: parts}`` of a split merge (``job.tasks > 1``) for the stages whose inputs exist now;
    a stage that reads an earlier stage's output is split when it runs."""
    if tasks <= 1:
        return {}
    from hpc_merge import split

    out = {}
    for st in stages:
        if all(ref in st["paths"] for _sub, ref in mk.model_refs(st["recipe"])):
            out[st["name"]] = split.plan_parts(mk.to_mergekit(st["recipe"], st["paths"]), opts, tasks)
    return out


def _input_fields(stages: list[dict[str, Any]]) -> tuple[dict[str, Path], dict[str, Path]]:
    """``({field: folder} of every input model, {field: folder} of each stage's tokenizer donor})``.

    The donor is the one the merge copies the tokenizer from: ``tokenizer_source: model:X``, else
    the base model, else the first model; a ``union`` tokenizer is built, an earlier stage's is checked there.
    """
    inputs: dict[str, Path] = {}
    donors: dict[str, Path] = {}
    for st in stages:
        refs = [(f"{st['field']}.{sub}", ref) for sub, ref in mk.model_refs(st["recipe"])]
        inputs.update({f: Path(st["paths"][ref]) for f, ref in refs if ref in st["paths"]})
        ts = st["recipe"].get("tokenizer_source")
        if ts == "union" or not refs:
            continue
        f, ref = next(((f, r) for f, r in refs if f.endswith(".tokenizer_source")), refs[0])
        if ref in st["paths"]:
            donors[f] = Path(st["paths"][ref])
    return inputs, donors


def _estimate(stages: list[dict[str, Any]]) -> dict[str, float]:
    last = stages[-1]
    inputs = [Path(p) for p in dict.fromkeys(p for s in stages for p in s["paths"].values())]
    if not inputs:
        return {}
    donor_layers = archcheck.read_config(inputs[0]).get("num_hidden_layers") or 1
    slices = last["recipe"].get("slices")
    ratio = sum(s["sources"][0]["layer_range"][1] - s["sources"][0]["layer_range"][0] for s in slices) / donor_layers \
        if slices else 1.0
    return archcheck.estimate(inputs, ratio, last["recipe"].get("dtype"))


def describe(cfg: DictConfig, plan: dict[str, Any]) -> str:
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
        from hpc_merge import split

        parts += [split.describe(p, stage) for stage, p in plan["split"].items()]
        c = OmegaConf.to_container(cfg.cluster, resolve=True) if cfg.get("cluster") is not None else {}
        n = int(cfg.job.tasks)
        if c.get("kind") == "slurm":
            from hpc_merge.launch.executor import single_process

            c = single_process(c)  # what each element is submitted with
        parts.append(f"# runs as one SLURM job array of {n} elements, each {c.get('cpus_per_task')} CPUs and "
                     f"{c.get('mem_gb')} GB (cluster.cpus_per_task, cluster.mem_gb), then the merge job assembles"
                     if c.get("kind") == "slurm" else f"# runs as {n} local processes, then assembled here")
    return "\n".join(parts)


def run(cfg: DictConfig, plan: dict[str, Any], run_dir: Path, tracker: Any) -> dict[str, Any]:
    """Merge every stage (atomically), then smoke-test, evaluate and log the final model."""
    output = Path(str(cfg.output)).expanduser().resolve() if cfg.get("output") else run_dir / "model"
    stage_out = {s["name"]: (output if i == len(plan["stages"]) - 1 else run_dir / "stages" / s["name"])
                 for i, s in enumerate(plan["stages"])}
    timings: dict[str, float] = {}
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
                    _merge_split(config, effective_options(plan), tasks, run_dir, st["name"], tmp, bar)
                else:
                    mk.run_mergekit(config, tmp, effective_options(plan), progress=progress)
                from hpc_merge.modelcard import write_card

                write_card(tmp, f"{cfg.get('name', 'merge')} ({st['name']})", st["recipe"],
                           {ref: Path(p) for ref, p in paths.items() if ref in st["paths"] or ref in stage_out})
        if tasks > 1:
            from hpc_merge import split

            split.remove_parts(run_dir / "parts" / st["name"])  # the model is in place
        timings[f"merge_{st['name']}_s"] = round(time.time() - t0, 3)
    timings["merge_s"] = round(sum(timings.values()), 3)
    size = sum(f.stat().st_size for f in output.glob("*.safetensors"))
    metrics: dict[str, Any] = {"output_bytes": size}
    tracker.log({"merge_time_s": timings["merge_s"], "output_bytes": size})
    if cfg.job.smoke.enabled:
        from hpc_merge.smoke import smoke_inputs, smoke_test

        update_status(run_dir, phase="smoke")
        t0 = time.time()
        prompts = cfg.job.smoke.get("prompts")
        inputs = smoke_inputs(list(plan["inputs"]), list(prompts) if prompts else None, cfg.job.smoke.get("text"))
        smoke = smoke_test(output, inputs, int(cfg.job.smoke.max_new_tokens))
        timings["smoke_s"] = round(time.time() - t0, 3)
        metrics.update(perplexity=smoke["perplexity"], n_params=smoke["n_params"])
        metrics["samples"] = smoke["samples"]
        metrics["smoke"] = {k: smoke[k] for k in ("prompts_from", "perplexity_on")}
        tracker.log({"smoke/perplexity": smoke["perplexity"], "smoke/n_params": smoke["n_params"]})
    if cfg.get("eval") and cfg.eval.get("enabled"):
        metrics["report"] = _evaluate(cfg, plan, output, run_dir, tracker)
    tracker.summary({k: v for k, v in metrics.items() if isinstance(v, int | float)} | {"merge_time_s": timings["merge_s"]})
    return {"output_model": str(output), "metrics": metrics, "timings": timings,
            "stages": {k: str(v) for k, v in stage_out.items()}}


def submit_split_parts(cfg: DictConfig, cluster: dict[str, Any], run_dir: Path) -> None:
    """``cluster=slurm*`` with ``job.tasks > 1``: the parts of each stage whose inputs exist now run
    as one SLURM job array, before the merge job (which then finds them and only assembles).

    The recipe, paths and options are worked out as :func:`validate` and :func:`run` do, so the
    parts' fingerprints are those the merge job checks.
    """
    from hpc_merge import split
    from hpc_merge.split.slurm import run_array

    tasks = int(cfg.job.get("tasks") or 1)
    recipe = OmegaConf.to_container(cfg.merge, resolve=True)
    opts = OmegaConf.to_container(cfg.job.options, resolve=True)
    plan = {"options": opts, "gpu_options": gpu_options_of(cfg, opts)}
    options = effective_options(plan, has_cuda=bool(cluster.get("gpus_per_node")))
    stages = stages_of(recipe)
    for name, st, field in stages:
        refs = mk.model_refs(st)
        if any(ref == other for _sub, ref in refs for other, _st, _f in stages):
            continue  # reads an earlier stage's output: split inside the merge job
        paths = {ref: str(resolve_model(ref, f"{field}.{sub}")) for sub, ref in refs}
        config = mk.to_mergekit(st, paths)
        parts = split.plan_parts(config, options, tasks)
        run_array(config, options, parts, run_dir / "parts" / name, cluster, run_dir / "slurm" / f"parts-{name}",
                  f"merge-parts-{cfg.get('name') or run_dir.name}")


def _merge_split(config: dict[str, Any], options: dict[str, Any], tasks: int, run_dir: Path, stage: str,
                 out: Path, bar: console.Task) -> None:
    """One stage as ``tasks`` parts (finished parts of an earlier try reused), assembled into ``out``."""
    from hpc_merge import split

    def progress(p: dict[str, Any]) -> None:
        update_status(run_dir, phase=f"merge:{stage}", parts_done=p["parts_done"], parts_total=p["parts_total"])
        bar.update(p["parts_done"], total=p["parts_total"], info=f"{p['parts_done']}/{p['parts_total']} parts")

    done = split.merge_split(config, options, tasks, run_dir / "parts" / stage, out, progress=progress)
    if done["reused"]:
        console.echo(f"{len(done['reused'])} of {done['parts']} parts already recorded (an earlier try, or the "
                     f"SLURM job array), {len(done['ran'])} merged now")


def _evaluate(cfg: DictConfig, plan: dict[str, Any], output: Path, run_dir: Path, tracker: Any) -> list[dict]:
    """Merge report: base, every source and the merged model on every task."""
    from hpc_merge.evaluate import load_tasks
    from hpc_merge.report import merge_report

    update_status(run_dir, phase="evaluate")
    final = plan["stages"][-1]["recipe"]
    base_ref = final.get("base_model")
    inputs = plan["inputs"]
    models = []
    if base_ref and str(base_ref) in inputs:
        models.append(("base", "base", inputs[str(base_ref)]))
    for ref, path in inputs.items():
        if ref != str(base_ref):
            models.append((ref.split(":")[-1].split("/")[-1], "source", path))
    models.append(("merged", "merged", str(output)))
    ev = OmegaConf.to_container(cfg.eval, resolve=True)
    tasks = load_tasks(list(ev.get("tasks") or ["zoo"]), size=ev.get("size", "full"))
    return merge_report(run_dir, models, tasks, tracker=tracker, split=ev.get("split", "test"),
                        limit=ev.get("limit"), batch_size=int(ev.get("batch_size") or 32))  # eval.limit was ignored
