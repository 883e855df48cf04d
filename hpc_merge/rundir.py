"""Run identity and run folders: the same resolved config -> the same run dir (skip or resume)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

#: Config sections that do not change a run's result: where it ran, how it was logged, flags.
NOT_IN_IDENTITY = ("cluster", "logger", "force", "run_id", "hydra", "logs_dir", "name")
NOT_IN_JOB_IDENTITY = ("dry_run", "wait")


def config_hash(cfg: DictConfig | dict[str, Any]) -> str:
    """10-hex-digit hash of the resolved config minus :data:`NOT_IN_IDENTITY` fields."""
    data = OmegaConf.to_container(cfg, resolve=True) if isinstance(cfg, DictConfig) else dict(cfg)
    data = {k: v for k, v in data.items() if k not in NOT_IN_IDENTITY}
    if isinstance(data.get("job"), dict):
        data["job"] = {k: v for k, v in data["job"].items() if k not in NOT_IN_JOB_IDENTITY}
    blob = json.dumps(data, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:10]


def run_dir_for(cfg: DictConfig) -> Path:
    """``<logs_dir>/<kind>/<name>/<run_id>``, absolute (jobs on other nodes see the same path)."""
    run_id = cfg.get("run_id") or config_hash(cfg)
    name = str(cfg.get("name") or "default")
    return (Path(str(cfg.logs_dir)) / str(cfg.job.kind) / name / str(run_id)).resolve()


def read_result(run_dir: Path) -> dict[str, Any] | None:
    """The run's ``result.json``, if there is one."""
    try:
        return json.loads((run_dir / "result.json").read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None


def reusable_result(run_dir: Path) -> dict[str, Any] | None:
    """The result of an earlier successful run of this exact config whose output still exists.

    A deduplicated run is skipped only while its model is there (a run that writes no model, such
    as an evolution, is done once it succeeded): the same rule for single runs and sweep points.
    """
    previous = read_result(run_dir)
    if not previous or previous.get("status") != "ok":
        return None
    out = previous.get("output_model")
    return None if out and not Path(out, "config.json").is_file() else previous
