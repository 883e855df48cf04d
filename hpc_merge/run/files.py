"""The files of a run dir, by name, and the one tolerant way to read its JSON.

Every module that writes or reads a run dir names its files through these constants, so a
renamed file is renamed everywhere. The readers never raise on what a crashed or concurrent
writer could leave (a missing file, half-written JSON, not an object): the monitor must keep
drawing, and a run must start again after any crash.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from hpc_merge.atomic import write_json, write_text

RESULT_FILE = "result.json"  #: the job's end: status ok/failed, metrics, timings (written last)
PREVIOUS_RESULT_FILE = "result.previous.json"  #: an earlier result, set aside when a sweep runs the point again
STATUS_FILE = "status.json"  #: live progress and heartbeat (:mod:`hpc_merge.run.status`)
CONFIG_FILE = "config.yaml"  #: the resolved config the run was started with
JOB_LOG = "job.log"  #: the job's stdout/stderr/log records (:mod:`hpc_merge.run.joblog`)
LOCK_FILE = "run.lock"  #: who holds the run dir now (:mod:`hpc_merge.run.lock`)
REPORT_JSON = "report.json"  #: evaluation rows and retention (:mod:`hpc_merge.report`)
REPORT_MD = "report.md"  #: the same as a table
REPORT_PNG = "report.png"  #: the same as a chart
FITNESS_PNG = "fitness.png"  #: an evolution's fitness per generation
MODEL_DIR = "model"  #: the model, when ``output`` is not set
STAGES_DIR = "stages"  #: intermediate models of a multi-stage merge
PARTS_DIR = "parts"  #: the parts of a split merge (``job.tasks=N``), one folder per stage
SLURM_DIR = "slurm"  #: submitit's files (scripts, logs, pickles) of the run's SLURM jobs
#: A folder holding any of these is a run dir (the monitor's discovery).
RUN_MARKERS = (STATUS_FILE, CONFIG_FILE, RESULT_FILE)
#: Folders under ``logs/`` that hold Hydra's own outputs, or sweep folders (read through their
#: ``sweep.json``), not run dirs.
NOT_RUNS = frozenset({"hydra", "multirun", ".hydra", "sweeps"})


def read_json(path: str | Path) -> dict[str, Any]:
    """The JSON object in ``path``; ``{}`` when it is missing, unreadable, half-written or not an object."""
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def read_result(run_dir: str | Path) -> dict[str, Any] | None:
    """The run's ``result.json``, if there is one."""
    return read_json(Path(run_dir) / RESULT_FILE) or None


def write_result(run_dir: str | Path, result: dict[str, Any]) -> None:
    """Write ``result.json`` (atomically: a reader sees the old result or the new one)."""
    write_json(Path(run_dir) / RESULT_FILE, result)


def write_config(run_dir: str | Path, cfg: DictConfig) -> None:
    """Write the resolved config the run starts with to ``config.yaml``."""
    write_text(Path(run_dir) / CONFIG_FILE, OmegaConf.to_yaml(cfg, resolve=True))


def is_run_dir(path: Path) -> bool:
    """A run dir holds a status file, a composed config or a result."""
    return any((path / m).is_file() for m in RUN_MARKERS)


def set_aside_result(run_dir: str | Path) -> None:
    """Rename an earlier ``result.json`` to ``result.previous.json`` before the run starts again:
    it would otherwise read as this run's end before the run has started."""
    path = Path(run_dir) / RESULT_FILE
    if path.exists():
        os.replace(path, path.with_name(PREVIOUS_RESULT_FILE))


def discover(roots: Iterable[str | Path]) -> list[Path]:
    """Run dirs named by ``roots``: each root is a run dir, or a folder searched for run dirs.

    Under a logs folder the layout is ``<kind>/<name>/<run_id>``; searching by markers instead of
    depth also finds runs in folders laid out by hand. A run's own subfolders (``model/``,
    ``slurm/``) are not searched: that keeps a walk over big logs folders cheap.
    """
    found: dict[Path, None] = {}
    for root in map(Path, roots):
        for top, dirs, files in os.walk(root):
            if any(m in files for m in RUN_MARKERS):
                found[Path(top).resolve()] = None
                dirs.clear()
            else:
                dirs[:] = sorted(d for d in dirs if d not in NOT_RUNS)
    return list(found)
