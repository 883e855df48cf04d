"""Outputs can never destroy data: where a model may be written, and what ``force`` may replace.

A merge replaces its output folder as a whole (atomic rename), so the output folder decides what
can be lost. Before anything is written (at validation) an output is refused, with one line, when
it is, contains or lies inside an input model; is or contains the logs folder or a run dir; is an
existing file; holds files hpc_merge did not write; or does not fit on its file system. Every model
folder hpc_merge writes carries a marker file (:data:`MARKER`), and ``force=true`` replaces only a
folder with that marker: an earlier output of this tool, never anything else.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Mapping
from contextlib import AbstractContextManager
from functools import partial
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from hpc_merge.atomic import atomic_dir, size_text
from hpc_merge.errors import ConfigError
from hpc_merge.run.files import MODEL_DIR
from hpc_merge.run.identity import run_dir_for

#: Written into every model folder hpc_merge writes; ``force=true`` replaces only such folders.
MARKER = ".hpc_merge_output"
#: Remote-code fields: with them transformers imports code named by the model (trust_remote_code).
REMOTE_CODE_KEYS = ("auto_map", "custom_pipelines")
#: A run dir is ``<logs>/<kind>/<name>/<run_id>``: an output this shallow is or holds run dirs.
RUN_DIR_DEPTH = 3


def read_marker(folder: str | Path) -> dict[str, Any] | None:
    """The marker of a folder hpc_merge wrote, or None."""
    try:
        data = json.loads((Path(folder) / MARKER).read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) and data.get("tool") == "hpc_merge" else None


def _within(path: Path, folder: Path) -> bool:
    return path == folder or folder in path.parents


def _nearest_existing(path: Path) -> Path:
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def output_target(cfg: DictConfig) -> tuple[Path, Path]:
    """``(output folder, run dir)``, both absolute; the output defaults to ``<run_dir>/model``."""
    run_dir = run_dir_for(cfg)
    out = cfg.get("output")
    return (Path(str(out)).expanduser().resolve() if out else run_dir / MODEL_DIR), run_dir


def check_output(cfg: DictConfig, inputs: Mapping[str, str | Path], needed_bytes: float,
                 scratch_bytes: float = 0.0, field: str = "output") -> Path:
    """Refuse (one :class:`ConfigError`) an output that could destroy data; returns the output folder.

    ``inputs`` maps each input's config field to its folder; ``needed_bytes`` is the planned
    output size (checked against the free space where the output goes), ``scratch_bytes`` what
    is written into the run dir besides (intermediate stages). Nothing is created here.
    """
    target, run_dir = output_target(cfg)
    explicit = bool(cfg.get("output"))
    if explicit:
        _check_not_an_input(target, inputs, field)
        _check_not_the_logs(target, Path(str(cfg.logs_dir)).expanduser().resolve(), field)
    _check_existing(target, run_dir, bool(cfg.get("force")), field)
    _check_space({target: needed_bytes, run_dir: scratch_bytes}, field)
    return target


def _check_not_an_input(target: Path, inputs: Mapping[str, str | Path], field: str) -> None:
    for ref_field, path in inputs.items():
        model = Path(path).resolve()
        if target == model:
            what = "is"
        elif _within(target, model):
            what = "is inside"
        elif _within(model, target):
            what = "contains"
        else:
            continue
        raise ConfigError(field, f"{target} {what} the input model {model} ({ref_field}): writing it would destroy "
                          "an input", "choose an output folder outside every input model")


def _check_not_the_logs(target: Path, logs: Path, field: str) -> None:
    if _within(logs, target):
        what = "is" if target == logs else "contains"
        raise ConfigError(field, f"{target} {what} the logs folder {logs}",
                          "choose an output folder outside logs_dir (or leave output unset: <run_dir>/model)")
    if _within(target, logs) and len(target.relative_to(logs).parts) <= RUN_DIR_DEPTH:
        raise ConfigError(field, f"{target} is or holds run dirs of the logs folder {logs}",
                          "choose an output folder outside logs_dir (or leave output unset: <run_dir>/model)")


def _check_existing(target: Path, run_dir: Path, force: bool, field: str) -> None:
    if target.is_symlink() or (target.exists() and not target.is_dir()):
        raise ConfigError(field, f"{target} is an existing file, not a folder",
                          "give a new (or empty) folder for the model")
    base = _nearest_existing(target)
    if not base.is_dir():
        raise ConfigError(field, f"{target} cannot be created: {base} is a file", "give a folder path")
    if not os.access(base, os.W_OK | os.X_OK):
        raise ConfigError(field, f"{target} cannot be created: {base} is not writable", "choose a folder you can write")
    if not target.is_dir():
        return
    try:
        entries = sorted(p.name for p in target.iterdir())
    except OSError as exc:
        raise ConfigError(field, f"{target} cannot be read ({exc.strerror})", "choose a folder you can read and write") from None
    if not entries:
        return
    marker = read_marker(target)
    if marker is None:
        if _within(target, run_dir) and target != run_dir:
            return  # this run's own folder (a model an older version wrote without a marker)
        shown = ", ".join(entries[:3]) + (", ..." if len(entries) > 3 else "")
        raise ConfigError(field, f"{target} holds files hpc_merge did not write ({shown}); force=true replaces "
                          "only an earlier hpc_merge output", "choose a new or empty folder")
    if not force and marker.get("run_dir") != str(run_dir):
        raise ConfigError(field, f"{target} holds an earlier hpc_merge output (run {marker.get('run_dir')})",
                          "pass force=true to replace it, or choose a new folder")


def _check_space(needs: Mapping[Path, float], field: str) -> None:
    """Every file system gets what is written to it: the output, the run dir's intermediates."""
    by_device: dict[int, list[Any]] = {}
    for path, nbytes in needs.items():
        if not nbytes:
            continue
        base = _nearest_existing(path)
        entry = by_device.setdefault(base.stat().st_dev, [path, base, 0.0])
        entry[2] += nbytes
    for path, base, nbytes in by_device.values():
        free = shutil.disk_usage(base).free
        if nbytes > free:
            raise ConfigError(field, f"not enough free space for {path}: the output needs ~{size_text(nbytes)}, "
                              f"its file system ({base}) has {size_text(free)} free",
                              "free space there or choose an output folder on another file system")


def replaceable(folder: Path, run_dir: Path) -> bool:
    """What the final rename may replace: an empty folder, an hpc_merge output, this run's own folder."""
    if folder.is_symlink() or not folder.is_dir():
        return False
    return (read_marker(folder) is not None or not any(folder.iterdir())
            or (_within(folder, run_dir) and folder != run_dir))


def strip_remote_code(folder: Path) -> list[str]:
    """Remove remote-code fields (``auto_map`` ...) from the written configs; returns what was removed.

    mergekit copies the donor's ``config.json`` and ``tokenizer_config.json`` as they are: a donor's
    ``auto_map`` would make every user of the merge run code from a repository nobody chose.
    """
    removed = []
    for name in ("config.json", "tokenizer_config.json"):
        path = folder / name
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        keys = [k for k in REMOTE_CODE_KEYS if isinstance(data, dict) and k in data]
        if keys:
            for k in keys:
                del data[k]
            path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
            removed += [f"{name}:{k}" for k in keys]
    for code in folder.glob("*.py"):
        code.unlink()
        removed.append(code.name)
    return removed


def finish_output(tmp: Path, run_dir: Path, trust_remote_code: bool) -> None:
    """Last step before the rename: drop remote code unless asked for, write our marker."""
    if not trust_remote_code:
        removed = strip_remote_code(tmp)
        if removed:
            print(f"removed remote code from the output ({', '.join(removed)}); "
                  "job.options.trust_remote_code=true keeps it", flush=True)
    marker = {"tool": "hpc_merge", "run_dir": str(run_dir), "run_id": run_dir.name,
              "written_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    (tmp / MARKER).write_text(json.dumps(marker, indent=2) + "\n")


def output_hooks(run_dir: Path, trust_remote_code: bool = False) -> dict[str, Any]:
    """``finish`` and ``replace_if`` for :func:`~hpc_merge.atomic.atomic_dir` writing a model folder."""
    return {"finish": partial(finish_output, run_dir=run_dir, trust_remote_code=trust_remote_code),
            "replace_if": partial(replaceable, run_dir=run_dir)}


def model_dir(dest: Path, run_dir: Path, trust_remote_code: bool = False) -> AbstractContextManager[Path]:
    """:func:`~hpc_merge.atomic.atomic_dir` for a model folder: marked as ours, replacing only what may be."""
    return atomic_dir(dest, overwrite=True, **output_hooks(run_dir, trust_remote_code))
