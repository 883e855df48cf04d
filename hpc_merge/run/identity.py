"""Run identity: the same resolved config -> the same run dir (skip when done, resume when not)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from hpc_merge.errors import ConfigError
from hpc_merge.run.files import read_result

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


def path_component(value: object, field: str) -> str:
    """``value`` as one safe folder name, or a one-line ConfigError.

    ``name`` and ``run_id`` become folders under ``logs_dir``: ``../../etc`` would put the run dir
    outside it and ``/etc`` would make ``/etc`` the run dir itself.
    """
    text = str(value)
    fix = "use a plain name: letters, digits, '-', '_', '.' (no '/', not '..')"
    if text in ("", ".", ".."):
        raise ConfigError(field, f"{text!r} is not a folder name", fix)
    if "/" in text or "\\" in text:
        raise ConfigError(field, f"{text!r} is a path, not a single folder name", fix)
    if any(ord(c) < 32 or ord(c) == 127 for c in text):
        raise ConfigError(field, f"{text!r} holds control characters", fix)
    if len(text.encode()) > 200:
        raise ConfigError(field, f"{len(text.encode())} bytes long (at most 200)", "use a shorter name")
    return text


def run_dir_for(cfg: DictConfig) -> Path:
    """``<logs_dir>/<kind>/<name>/<run_id>``, absolute (jobs on other nodes see the same path)."""
    run_id = cfg.get("run_id")
    run_id = path_component(run_id, "run_id") if run_id is not None else config_hash(cfg)
    name = path_component(cfg.get("name") or "default", "name")
    return (Path(str(cfg.logs_dir)) / str(cfg.job.kind) / name / run_id).resolve()


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
