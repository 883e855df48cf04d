"""The merge job's plan: every check that can run before a weight is read.

Recipe stages, model resolution, architecture and layer checks, mergekit's own validation, the
output check and the resource estimate; :mod:`hpc_merge.jobs.merge` runs the plan this returns.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from hpc_merge import archcheck, console, split
from hpc_merge import mergekit_adapter as mk
from hpc_merge.errors import ConfigError, did_you_mean
from hpc_merge.jobs.plans import MergePlan, MergeStage
from hpc_merge.models.inputcheck import check_inputs
from hpc_merge.resolve import resolve_model
from hpc_merge.run.outputs import check_output


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


def effective_options(plan: Mapping[str, Any], has_cuda: bool | None = None) -> dict[str, Any]:
    """``job.options`` plus, where this node has a GPU (and the device is not pinned to cpu), the
    profile's ``gpu_options``: one profile serves the CPU login node's dry run and the GPU job."""
    opts = dict(plan["options"])
    if has_cuda is None:
        import torch

        has_cuda = torch.cuda.is_available()
    if plan.get("gpu_options") and has_cuda and opts.get("device", "auto") != "cpu":
        opts.update(plan["gpu_options"])
    return opts


def validate(cfg: DictConfig) -> MergePlan:
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


def _split_parts(stages: list[MergeStage], opts: dict[str, Any], tasks: int) -> dict[str, list[Any]]:
    """``{stage: parts}`` of a split merge (``job.tasks > 1``) for the stages whose inputs exist now;
    a stage that reads an earlier stage's output is split when it runs."""
    if tasks <= 1:
        return {}
    out = {}
    for st in stages:
        if all(ref in st["paths"] for _sub, ref in mk.model_refs(st["recipe"])):
            out[st["name"]] = split.plan_parts(mk.to_mergekit(st["recipe"], st["paths"]), opts, tasks)
    return out


def _input_fields(stages: list[MergeStage]) -> tuple[dict[str, Path], dict[str, Path]]:
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


def _estimate(stages: list[MergeStage]) -> dict[str, float]:
    last = stages[-1]
    inputs = [Path(p) for p in dict.fromkeys(p for s in stages for p in s["paths"].values())]
    if not inputs:
        return {}
    donor_layers = archcheck.read_config(inputs[0]).get("num_hidden_layers") or 1
    slices = last["recipe"].get("slices")
    ratio = sum(s["sources"][0]["layer_range"][1] - s["sources"][0]["layer_range"][0] for s in slices) / donor_layers \
        if slices else 1.0
    return archcheck.estimate(inputs, ratio, last["recipe"].get("dtype"))
