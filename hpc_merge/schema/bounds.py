"""What types cannot say: ranges, allowed words and cross-field rules of every typed group.

Each check gets the group already typed by its dataclass (so a field holds a value of its type)
and raises one :class:`~hpc_merge.errors.ConfigError` naming the field. Nothing here imports
mergekit or torch: these checks run on every command line before anything is written.
"""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any

from hpc_merge.errors import ConfigError, did_you_mean

DEVICES = ("auto", "cpu", "cuda")
CLUSTER_KINDS = ("local", "slurm")
LOGGER_KINDS = ("none", "wandb")
WANDB_MODES = ("offline", "online", "disabled")
SPLITS = ("train", "validation", "test")
LAUNCHERS = ("local", "slurm")
SPACES = ("ps", "dfs", "ps+dfs")
GRANULARITIES = ("model", "layer", "filter", "filter_layer")
DTYPES = ("float32", "float16", "bfloat16", "fp32", "fp16", "bf16")
_SIZE = re.compile(r"^\d+[KMB]?$", re.IGNORECASE)  # mergekit's parse_kmb: digits, optional K/M/B
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def choice(value: Any, allowed: tuple[str, ...], field: str) -> None:
    """``value`` is one of ``allowed`` (with a did-you-mean)."""
    if value not in allowed:
        raise ConfigError(field, f"unknown value {value!r}{did_you_mean(str(value), allowed)}",
                          f"use one of {', '.join(allowed)}")


def at_least(value: Any, low: float, field: str, optional: bool = False) -> None:
    """``value`` is a finite number >= ``low`` (or None when ``optional``)."""
    if value is None and optional:
        return
    if value is None:
        raise ConfigError(field, "missing", f"set {field} to a number >= {low:g}")
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value) or value < low:
        raise ConfigError(field, f"{value!r} is not a number >= {low:g}", f"set {field} to a number >= {low:g}")


def size(value: Any, field: str, example: str = "e.g. 500M", positive: bool = True) -> None:
    """A byte count in mergekit's notation (``500M``, ``1B``, ``4096``); None = the default."""
    if value is None:
        return
    text = str(value).strip()
    if not _SIZE.match(text) or (positive and int(re.sub(r"\D", "", text)) == 0):
        raise ConfigError(field, f"bad size {value!r}", f"use bytes with an optional K/M/B suffix, {example}")


def task_specs(tasks: list[str], size_name: str, field: str) -> None:
    """Every task spec names a task that exists: ``zoo[:task]``, ``lmeval:...`` or a JSONL file."""
    from hpc_merge.zoo.spec import SIZES

    if not tasks:
        raise ConfigError(field, "no tasks", "give at least one task spec, e.g. [zoo]")
    choice(size_name, tuple(SIZES), f"{field.rsplit('.', 1)[0]}.size")
    zoo_tasks = tuple(SIZES[size_name].task_params)
    for i, spec in enumerate(tasks):
        f = f"{field}[{i}]"
        target = spec.split(":", 1)[1] if spec.startswith("lmeval:") else spec
        if target == "zoo" and spec == "zoo":
            continue
        if target.startswith("zoo:"):
            choice(target.split(":", 1)[1], zoo_tasks, f)
        elif spec.startswith("lmeval:"):
            if not target.strip():
                raise ConfigError(f, "empty lm-eval task", "write lmeval:<task name or task YAML path>")
            if target.endswith((".yaml", ".yml")) and not Path(target).expanduser().is_file():
                raise ConfigError(f, f"lm-eval task file {target} not found", "give an existing task YAML")
        elif not Path(spec).expanduser().is_file():
            raise ConfigError(f, f"task {spec!r} is neither zoo[:task], lmeval:... nor an existing JSONL file",
                              f"use zoo, zoo:<{'|'.join(zoo_tasks)}>, lmeval:<task> or a path to a .jsonl file")


def job(j: dict[str, Any], kind: str) -> None:
    """``job``: the options every kind uses, and the smoke test."""
    opts = j.get("options") or {}
    device = str(opts.get("device"))
    if device not in DEVICES and not re.fullmatch(r"cuda:\d+", device):
        choice(device, DEVICES, "job.options.device")
    size(opts.get("out_shard_size"), "job.options.out_shard_size")
    if "chunk_size" in opts:
        size(opts["chunk_size"], "job.options.chunk_size", "e.g. 16M, or 0 to merge whole tensors", positive=False)
    at_least(opts.get("num_threads"), 1, "job.options.num_threads", optional=True)
    at_least(opts.get("random_seed"), 0, "job.options.random_seed")
    if "write_threads" in opts:
        at_least(opts["write_threads"], 1, "job.options.write_threads")
    if j.get("smoke") is not None:
        at_least(j["smoke"].get("max_new_tokens"), 1, "job.smoke.max_new_tokens")
    if "tasks" in j:
        at_least(j["tasks"], 1, "job.tasks")
        if kind == "moe" and j["tasks"] > 1:  # refused before anything is resolved, submitted or written
            raise ConfigError("job.tasks", f"{j['tasks']} tasks for a MoE build, which is not split: its gates come "
                              "from forward passes of the base model over the prompts and mergekit-moe writes the "
                              "experts in one pass, not as per-tensor merge tasks", "use job.tasks=1 with job=moe "
                              "(split the dense merges that make the experts instead: job=merge job.tasks=N)")


def cluster(c: dict[str, Any]) -> None:
    """``cluster``: the kind and every number SLURM is asked for."""
    choice(c["kind"], CLUSTER_KINDS, "cluster.kind")
    for key in ("nodes", "tasks_per_node", "timeout_min", "array_parallelism"):
        at_least(c[key], 1, f"cluster.{key}")
    at_least(c["gpus_per_node"], 0, "cluster.gpus_per_node")
    at_least(c["cpus_per_task"], 1, "cluster.cpus_per_task", optional=True)
    at_least(c["mem_gb"], 0, "cluster.mem_gb", optional=True)  # --mem=0: all of a node's memory
    at_least(c["signal_delay_s"], 0, "cluster.signal_delay_s")
    if c["signal_delay_s"] >= c["timeout_min"] * 60:
        raise ConfigError("cluster.signal_delay_s", f"{c['signal_delay_s']} s is not before the time limit "
                          f"({c['timeout_min']} min)", "lower signal_delay_s or raise timeout_min")
    for key, example in (("additional_parameters", "{mail-type: END}"), ("env", "{HF_HUB_OFFLINE: '1'}"),
                         ("gpu_options", "{multi_gpu: true}")):
        if c[key] is not None and not isinstance(c[key], dict):
            raise ConfigError(f"cluster.{key}", f"must be a mapping, got {c[key]!r}", f"e.g. cluster.{key}={example}")
    for name in c["env"] or {}:
        if not _ENV_NAME.match(str(name)):
            raise ConfigError(f"cluster.env.{name}", "not a valid environment variable name",
                              "use letters, digits and _ (not starting with a digit)")


def logger(lg: dict[str, Any]) -> None:
    """``logger``: the kind and W&B mode."""
    choice(lg["kind"], LOGGER_KINDS, "logger.kind")
    choice(lg["mode"], WANDB_MODES, "logger.mode")
    if not lg["project"].strip():
        raise ConfigError("logger.project", "empty", "give a W&B project name")


def evaluation(ev: dict[str, Any]) -> None:
    """``eval``: checked only when enabled (``eval=none`` carries the defaults unused)."""
    if not ev["enabled"]:
        return
    task_specs(list(ev["tasks"]), ev["size"], "eval.tasks")
    choice(ev["split"], SPLITS, "eval.split")
    at_least(ev["limit"], 1, "eval.limit", optional=True)
    at_least(ev["batch_size"], 1, "eval.batch_size")


def moe(m: dict[str, Any]) -> None:
    """``moe``: numbers the recipe check does not bound (words and experts are checked there)."""
    at_least(m["experts_per_token"], 1, "moe.experts_per_token")
    if m["dtype"] is not None:
        choice(m["dtype"], DTYPES, "moe.dtype")


def evolve(e: dict[str, Any]) -> None:
    """``evolve``: CMA-ES settings, budget, launcher, fitness and the start point."""
    at_least(e["population"], 2, "evolve.population")
    if not (math.isfinite(e["sigma0"]) and 0 < e["sigma0"] <= 1):
        raise ConfigError("evolve.sigma0", f"{e['sigma0']} outside (0, 1]", "the genotype lives in the unit cube: try 0.25")
    at_least(e["seed"], 0, "evolve.seed")
    b = e["budget"]
    at_least(b["max_evaluations"], e["population"], "evolve.budget.max_evaluations")
    at_least(b["max_generations"], 1, "evolve.budget.max_generations", optional=True)
    if b["max_time_s"] is not None and not (math.isfinite(b["max_time_s"]) and b["max_time_s"] > 0):
        raise ConfigError("evolve.budget.max_time_s", f"{b['max_time_s']} is not a positive number of seconds",
                          "give seconds > 0, or null")
    for key in ("workers", "threads_per_worker", "gpus_per_candidate", "layer_groups"):
        at_least(e[key], 1, f"evolve.{key}")
    at_least(e["candidates_per_job"], 1, "evolve.candidates_per_job", optional=True)
    at_least(e["decimals"], 0, "evolve.decimals")
    if e["candidate_timeout_s"] is not None and not (math.isfinite(e["candidate_timeout_s"]) and e["candidate_timeout_s"] > 0):
        raise ConfigError("evolve.candidate_timeout_s", f"{e['candidate_timeout_s']} is not a positive number of seconds",
                          "give seconds > 0, or null")
    choice(e["space"], SPACES, "evolve.space")
    choice(e["launcher"], LAUNCHERS, "evolve.launcher")
    choice(e["granularity"], GRANULARITIES, "evolve.granularity")
    for key in ("dtype", "out_dtype"):
        if e[key] is not None:
            choice(e[key], DTYPES, f"evolve.{key}")
    if e["baseline"] is not None:
        choice(e["baseline"], ("merge",), "evolve.baseline")
    x0 = e["x0"]
    if x0 is not None and x0 != "merge" and not isinstance(x0, dict):
        raise ConfigError("evolve.x0", f"{x0!r} is not a start point" + (did_you_mean(x0, ("merge",)) if isinstance(x0, str) else ""),
                          "use null (the centre of the space), merge (the merge=NAME recipe) or a recipe mapping")
    if not e["models"]:
        raise ConfigError("evolve.models", "no models", "list the fine-tunes to merge, e.g. [${models.math}, ...]")
    f = e["fitness"]
    task_specs(list(f["tasks"]), f["size"], "evolve.fitness.tasks")
    choice(f["split"], SPLITS, "evolve.fitness.split")
    choice(f["test_split"], SPLITS, "evolve.fitness.test_split")
    at_least(f["limit"], 1, "evolve.fitness.limit", optional=True)
    at_least(f["batch_size"], 1, "evolve.fitness.batch_size")
    for name, w in f["weights"].items():
        at_least(w, 0, f"evolve.fitness.weights.{name}")
