"""One path for every job: validate -> run dir -> launch -> report.

Everything that can be checked is checked here, before a job is submitted or a weight is read;
:class:`~hpc_merge.errors.ConfigError` becomes one line on stderr and exit status 2.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf, open_dict

from hpc_merge.atomic import disk_full, free_space, size_text
from hpc_merge.errors import ConfigError, JobFailed
from hpc_merge.jobs import job_module
from hpc_merge.run.files import read_result, write_config
from hpc_merge.run.identity import reusable_result, run_dir_for


def load_mergekit_yaml(cfg: DictConfig) -> None:
    """``mergekit_yaml=PATH``: put an existing mergekit (or mergekit-moe) YAML into the config.

    A file with an ``experts`` key is a mergekit-moe config (job ``moe``), else a merge config.
    The file is read bounded and checked (:func:`hpc_merge.schema.yamlfile.read_recipe`): a binary,
    UTF-16, huge, deeply nested or self-referencing file is one line, not a traceback.
    """
    from hpc_merge.schema.check import typed
    from hpc_merge.schema.groups import MoeRecipe
    from hpc_merge.schema.jobs import JOBS
    from hpc_merge.schema.yamlfile import read_recipe

    data, text = read_recipe(str(cfg.mergekit_yaml))
    path = Path(str(cfg.mergekit_yaml)).expanduser()
    kind = "moe" if "experts" in data else "merge"
    from hpc_merge.moe.card import OURS_HEADER

    ours = text.startswith(OURS_HEADER)  # a recipe file hpc_merge wrote for its own router
    if kind == "moe" and not ours and data.get("gate_mode", "hidden") == "hidden":
        # mergekit-moe's ``hidden`` (its default) is our ``hidden_mergekit``: the file keeps its meaning
        data["gate_mode"] = "hidden_mergekit"
    from hpc_merge.recipe_overrides import apply

    recipe = apply(cfg, kind, {"name": path.stem, **data})  # moe.KEY=VALUE given beside the file
    if kind == "moe":  # typed like moe=NAME: unknown keys and wrong types named now, as moe.KEY
        recipe = OmegaConf.merge(OmegaConf.structured(MoeRecipe), typed(MoeRecipe, recipe, "moe"))
    with open_dict(cfg):
        if cfg.job.kind != kind:  # the job group's own fields that the new kind also has are kept
            job = OmegaConf.to_container(cfg.job, resolve=True)
            schema = OmegaConf.structured(JOBS[kind])
            kept = {k: job[k] for k in ("dry_run", "smoke") if k in job and k in schema}
            kept["options"] = {k: v for k, v in (job.get("options") or {}).items() if k in schema.options}
            cfg.job = OmegaConf.merge(schema, kept)
        cfg[kind] = recipe if kind == "moe" else OmegaConf.create(recipe)
        if cfg.get("name") in (None, "default"):
            cfg.name = path.stem


def prepare(cfg: DictConfig) -> tuple[str, dict[str, Any], Path]:
    """Validate ``cfg`` and work out its run dir; returns ``(kind, plan, run_dir)``.

    The fast schema and bounds check (:func:`hpc_merge.schema.check`) runs first, so a bad value
    is reported before mergekit or torch is imported; then the job kind's own validation (models,
    architectures, mergekit's method specs). Nothing is written here.
    """
    from hpc_merge import schema

    if cfg.get("mergekit_yaml"):
        load_mergekit_yaml(cfg)
    schema.check(cfg)
    with open_dict(cfg):
        cfg.logs_dir = str(Path(str(cfg.logs_dir)).expanduser().resolve())
    if cfg.get("cluster") is not None:
        from hpc_merge.cluster.executor import check_cluster

        check_cluster(OmegaConf.to_container(cfg.cluster, resolve=True))
    kind = str(cfg.job.kind)
    plan = job_module(kind).validate(cfg)
    return kind, plan, run_dir_for(cfg)


def run(cfg: DictConfig) -> dict[str, Any] | None:
    """Run one composed config end to end; prints ``run_dir: PATH`` last."""
    kind, plan, run_dir = prepare(cfg)
    mod = job_module(kind)
    if cfg.job.get("dry_run"):
        print(mod.describe(cfg, plan))
        return None
    from hpc_merge.run import lock as runlock

    lock = None
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        lock = runlock.acquire(run_dir)  # a second identical run stops here, naming the holder
        if not cfg.get("force"):
            previous = reusable_result(run_dir)
            if previous is not None:
                print(f"skipped: this exact config already ran successfully (run {run_dir.name}); "
                      f"use force=true to run it again")
                print(f"run_dir: {run_dir}")
                return previous
            earlier = read_result(run_dir) or {}
            if earlier.get("status") == "ok":  # it succeeded, but its model is gone
                print(f"run {run_dir.name} ran this exact config, but its output {earlier['output_model']} is gone: "
                      "running it again")
        write_config(run_dir, cfg)
        from hpc_merge.jobs import entry
        from hpc_merge.launch import launch

        result = launch(kind, cfg, run_dir, entry, on_submit=lock.hand_to_slurm)
    except OSError as exc:
        if not disk_full(exc):
            raise
        raise JobFailed(f"no space left on the device of the run dir {run_dir} ({size_text(free_space(run_dir))} "
                        "free now): free space there or set logs_dir to another file system") from None
    finally:
        if lock is not None:
            lock.release()
    if result is not None:  # a screenful: every metric is in result.json
        from hpc_merge.console import echo, elapsed_s
        from hpc_merge.summary import summary_lines

        echo("\n".join(summary_lines(kind, cfg, result, run_dir, elapsed_s())))
    print(f"run_dir: {run_dir}")
    return result


def main_guarded(cfg: DictConfig) -> None:
    """:func:`run` with the user-facing error policy (one line, exit 2 for config errors)."""
    try:
        run(cfg)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(ConfigError.exit_code)
    except JobFailed as exc:
        print(f"job failed: {exc}", file=sys.stderr)
        sys.exit(exc.exit_code)
