"""One path for every job: validate -> run dir -> launch -> report.

Everything that can be checked is checked here, before a job is submitted or a weight is read;
:class:`~hpc_merge.errors.ConfigError` becomes one line on stderr and exit status 2.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import yaml
from omegaconf import DictConfig, OmegaConf, open_dict

from hpc_merge.atomic import write_text
from hpc_merge.errors import ConfigError, JobFailed
from hpc_merge.jobs import job_module
from hpc_merge.rundir import read_result, run_dir_for


def load_mergekit_yaml(cfg: DictConfig) -> None:
    """``mergekit_yaml=PATH``: put an existing mergekit (or mergekit-moe) YAML into the config.

    A file with an ``experts`` key is a mergekit-moe config (job ``moe``), else a merge config.
    """
    path = Path(str(cfg.mergekit_yaml)).expanduser()
    if not path.is_file():
        raise ConfigError("mergekit_yaml", f"file {path} not found", "give the path of an existing mergekit YAML")
    text = path.read_text()
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError("mergekit_yaml", f"{path} is not valid YAML ({str(exc).splitlines()[0]})",
                          "fix the YAML syntax") from None
    if not isinstance(data, dict):
        raise ConfigError("mergekit_yaml", f"{path} does not hold a mapping", "give a mergekit config file")
    kind = "moe" if "experts" in data else "merge"
    from hpc_merge.moe.card import OURS_HEADER

    ours = text.startswith(OURS_HEADER)  # a recipe file hpc_merge wrote for its own router
    if kind == "moe" and not ours and data.get("gate_mode", "hidden") == "hidden":
        # mergekit-moe's ``hidden`` (its default) is our ``hidden_mergekit``: the file keeps its meaning
        data["gate_mode"] = "hidden_mergekit"
    with open_dict(cfg):
        cfg.job.kind = kind
        cfg[kind] = OmegaConf.create({**({"name": path.stem}), **data})
        if cfg.get("name") in (None, "default"):
            cfg.name = path.stem


def prepare(cfg: DictConfig) -> tuple[str, dict[str, Any], Path]:
    """Validate ``cfg`` and work out its run dir; returns ``(kind, plan, run_dir)``."""
    if cfg.get("mergekit_yaml"):
        load_mergekit_yaml(cfg)
    with open_dict(cfg):
        cfg.logs_dir = str(Path(str(cfg.logs_dir)).expanduser().resolve())
    if cfg.get("cluster") is not None:
        from hpc_merge.launch.executor import check_cluster

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
    from hpc_merge import runlock

    run_dir.mkdir(parents=True, exist_ok=True)
    lock = runlock.acquire(run_dir)  # a second identical run stops here, naming the holder
    try:
        previous = read_result(run_dir)
        if previous and previous.get("status") == "ok" and not cfg.get("force"):
            gone = previous.get("output_model") and not Path(previous["output_model"], "config.json").is_file()
            if not gone:
                print(f"skipped: this exact config already ran successfully (run {run_dir.name}); "
                      f"use force=true to run it again")
                print(f"run_dir: {run_dir}")
                return previous
            print(f"run {run_dir.name} ran this exact config, but its output {previous['output_model']} is gone: "
                  "running it again")
        write_text(run_dir / "config.yaml", OmegaConf.to_yaml(cfg, resolve=True))
        from hpc_merge.launch import launch

        result = launch(kind, cfg, run_dir, on_submit=lock.hand_to_slurm)
    finally:
        lock.release()
    if result is not None:
        summary = {k: result.get(k) for k in ("status", "output_model", "metrics", "timings") if k in result}
        print(json.dumps(summary, indent=2, default=str))
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
