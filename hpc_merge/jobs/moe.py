"""The MoE job: a mergekit-moe recipe (``cfg.moe``) -> a checked, smoke-tested MoE model.

``validate`` reads only config files (see :mod:`hpc_merge.moe.recipe`); ``run`` builds the model
atomically, measures where the router sends each expert's own prompts, runs the smoke test and,
when ``eval.enabled``, the evaluator on the base, the experts and the MoE.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import yaml
from omegaconf import DictConfig, OmegaConf

from hpc_merge import console
from hpc_merge.archcheck import weight_bytes
from hpc_merge.errors import ConfigError
from hpc_merge.jobs.plans import MoeEstimate, MoeJobPlan
from hpc_merge.jobs.skeleton import ReportModel, finish_model, output_dir
from hpc_merge.mergekit_adapter import merge_options
from hpc_merge.models.inputcheck import check_inputs
from hpc_merge.moe import BuildOptions, build_moe
from hpc_merge.moe.arch import head_dim, read_config
from hpc_merge.moe.card import CLASSES
from hpc_merge.moe.plan import MoePlan
from hpc_merge.moe.recipe import PROMPT_GATE_MODES, validate_recipe
from hpc_merge.moe.routing import routing_report
from hpc_merge.run.outputs import check_output, output_hooks
from hpc_merge.run.status import update_status

DTYPE_BYTES = {"float32": 4, "float16": 2, "bfloat16": 2}


def _options(cfg: DictConfig) -> dict[str, Any]:
    opts = cfg.job.get("options")
    return OmegaConf.to_container(opts, resolve=True) if opts is not None else {}


def build_options(opts: dict[str, Any]):
    """``job.options`` -> :class:`hpc_merge.moe.BuildOptions`."""
    return BuildOptions(device=str(opts.get("device") or "auto"), random_seed=int(opts.get("random_seed") or 0),
                        out_shard_size=opts.get("out_shard_size") or "1B",
                        safe_serialization=bool(opts.get("safe_serialization", True)),
                        num_threads=opts.get("num_threads"))


def estimate(plan: MoePlan) -> MoeEstimate:
    """Output size and peak RAM from the base config (no weight read).

    Output = the base without its MLPs + one MLP per (shared) expert + routers. Peak RAM ~ one
    layer's stacked experts + one output shard buffered + the base model when gates need hidden
    states + ~1 GB runtime.
    """
    c = read_config(plan.base_path, "moe.base_model")
    h, inter, layers, vocab = c["hidden_size"], c["intermediate_size"], c["num_hidden_layers"], c["vocab_size"]
    hd, nh, kv = head_dim(c), c["num_attention_heads"], c.get("num_key_value_heads") or c["num_attention_heads"]
    attn = h * nh * hd * 2 + h * kv * hd * 2
    mlp = 3 * h * inter
    embed = vocab * h * (1 if c.get("tie_word_embeddings") else 2)
    n_mlp = len(plan.experts) + len(plan.shared_experts)
    params = embed + layers * (attn + n_mlp * mlp + len(plan.experts) * h)
    nbytes = DTYPE_BYTES.get(plan.dtype or str(c.get("dtype") or c.get("torch_dtype") or "bfloat16"), 2)
    inputs = {plan.base_path, *(e.path for e in plan.experts), *(e.path for e in plan.shared_experts)}
    read = sum(weight_bytes(Path(p)) for p in inputs)
    gate_model = weight_bytes(Path(plan.base_path)) if plan.gate_mode.startswith("hidden") else 0
    peak = n_mlp * mlp * nbytes * 2 + min(params * nbytes, 1e9) + gate_model + 1e9
    gb = 1e9
    return {"params_b": round(params / 1e9, 4), "read_gb": round(read / gb, 3),
            "write_gb": round(params * nbytes / gb, 3), "peak_ram_gb": round(peak / gb, 2)}


def validate(cfg: DictConfig) -> MoeJobPlan:
    """Recipe schema and rules, model resolution, shape/architecture checks, options, estimate."""
    if cfg.get("moe") is None:
        raise ConfigError("moe", "no MoE recipe", "choose one: +moe=NAME (conf/moe/), an experiment, or mergekit_yaml=PATH")
    recipe = OmegaConf.to_container(cfg.moe, resolve=True)
    opts = _options(cfg)
    merge_options(opts)  # option errors now, not in the job
    output = cfg.get("output")
    plan = validate_recipe(recipe, field_prefix="moe")
    est = estimate(plan)
    inputs = {"moe.base_model": Path(plan.base_path),
              **{f"moe.experts[{i}].source_model": Path(e.path) for i, e in enumerate(plan.experts)},
              **{f"moe.shared_experts[{i}].source_model": Path(e.path) for i, e in enumerate(plan.shared_experts)}}
    check_output(cfg, inputs, est["write_gb"] * 1e9)
    check_inputs(inputs, {"moe.base_model": Path(plan.base_path)}, allow_pickle=bool(cfg.job.get("allow_pickle", False)),
                 trust_remote_code=bool(opts.get("trust_remote_code")))  # last: it loads the tokenizer
    return {"moe": plan.to_dict(), "options": opts, "findings": list(plan.findings), "estimate": est,
            "output": str(Path(str(output)).expanduser().resolve()) if output else None}


def describe(cfg: DictConfig, plan: MoeJobPlan) -> str:
    """Dry-run text: the resolved mergekit-moe recipe, the chosen output and writer, the estimate."""
    p = MoePlan.from_dict(plan["moe"])
    writer = "mergekit's MoE writer" if p.writer == "mergekit" else "hpc_merge's own writer (mergekit cannot build it)"
    lines = ["# mergekit-moe recipe (resolved)", yaml.safe_dump(p.recipe(resolved=True), sort_keys=False).rstrip(),
             f"# output: {CLASSES[p.output_arch]} from {len(p.experts)} {p.source_type} experts "
             f"({len(p.shared_experts)} shared), {p.experts_per_token} per token, via {writer}",
             f"# output folder: {plan['output'] or '<run dir>/model'}"]
    lines += [f"#   note: {f}" for f in plan["findings"]]
    e = plan["estimate"]
    lines.append(f"# estimate: {e['params_b']} B params, read {e['read_gb']} GB, write {e['write_gb']} GB, "
                 f"peak RAM ~{e['peak_ram_gb']} GB")
    return "\n".join(lines)


def run(cfg: DictConfig, plan: MoeJobPlan, run_dir: Path, tracker: Any) -> dict[str, Any]:
    """Build the MoE, check its routing on the experts' prompts, smoke-test, evaluate, log."""
    p = MoePlan.from_dict(plan["moe"])
    output = output_dir(cfg, run_dir)
    update_status(run_dir, phase="build_moe")
    info = build_moe(p, output, build_options(plan["options"]), overwrite=True,  # shows its own progress
                     **output_hooks(run_dir, bool(plan["options"].get("trust_remote_code"))))
    timings: dict[str, float] = dict(info.pop("timings"))
    size = sum(f.stat().st_size for f in output.glob("*.safetensors"))
    metrics: dict[str, Any] = {"output_bytes": size, "n_experts": len(p.experts), "output_arch": p.output_arch}
    tracker.log({"build_time_s": timings["build_s"], "output_bytes": size})

    routing_cfg = cfg.job.get("routing")
    if p.gate_mode in PROMPT_GATE_MODES and (routing_cfg is None or routing_cfg.get("enabled", True)):
        update_status(run_dir, phase="routing")
        t0 = time.time()
        with console.task("MoE: routing check on the experts' prompts"):
            rep = routing_report(output, [list(e.positive_prompts) for e in p.experts])
        timings["routing_s"] = round(time.time() - t0, 3)
        # in-sample: these prompts made the gates; a held-out figure needs held-out prompts
        metrics["routing_own_prompts"] = rep
        tracker.log({"routing/own_prompts_accuracy": rep["accuracy"]})

    refs = [p.base_ref, *(e.ref for e in (*p.experts, *p.shared_experts))]
    finish_model(cfg, output, refs, _report_models(p, output), run_dir, tracker, timings, metrics)
    tracker.summary({k: v for k, v in metrics.items() if isinstance(v, int | float) and not isinstance(v, bool)}
                    | {"build_time_s": timings["build_s"]})
    return {"output_model": str(output), "metrics": metrics, "timings": timings, "moe": info}


def _report_models(plan: MoePlan, output: Path) -> list[ReportModel]:
    """The evaluation report's rows: the base, every expert and the MoE (as merge jobs report)."""
    models: list[ReportModel] = [("base", "base", plan.base_path)]
    seen = {plan.base_path}
    for e in (*plan.experts, *plan.shared_experts):
        if e.path not in seen:
            seen.add(e.path)
            models.append((e.ref.split(":")[-1].split("/")[-1], "source", e.path))
    models.append(("moe", "merged", str(output)))
    return models
