"""Experiment tracking: Weights & Biases (offline by default) behind a tiny interface.

Jobs log through a :class:`Tracker`; ``logger=none`` gives a tracker that does nothing, so job code
never checks. W&B files go under the run dir (``run_dir/wandb``), so a run's folder holds everything.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

#: Environment variable naming the W&B group of a run (a sweep's points share one).
GROUP_ENV = "HPC_MERGE_WANDB_GROUP"


class Tracker:
    """No-op tracker (``logger=none``); the base of :class:`WandbTracker`."""

    run_path: Path | None = None

    def log(self, metrics: dict[str, Any], step: int | None = None) -> None:
        """Log a row of metrics (a history step)."""

    def summary(self, metrics: dict[str, Any]) -> None:
        """Set final values (the run summary)."""

    def table(self, name: str, columns: list[str], rows: list[list[Any]]) -> None:
        """Log a table."""

    def image(self, name: str, path: str | Path) -> None:
        """Log an image file."""

    def finish(self, exit_code: int = 0) -> None:
        """Close the run."""


class WandbTracker(Tracker):
    """A W&B run. Offline mode writes ``run_dir/wandb/offline-run-*/run-*.wandb``."""

    def __init__(self, logger: dict[str, Any], run_dir: Path, name: str, config: dict[str, Any],
                 job_type: str | None = None, group: str | None = None):
        os.environ.setdefault("WANDB_SILENT", "true")
        import wandb

        self._wandb = wandb
        wdir = Path(logger.get("dir") or run_dir)
        wdir.mkdir(parents=True, exist_ok=True)
        self.run = wandb.init(
            project=logger.get("project", "hpc_merge"), entity=logger.get("entity"),
            mode=logger.get("mode", "offline"), dir=str(wdir), name=name, config=config,
            job_type=job_type, group=group, tags=list(logger.get("tags") or []),
            reinit="create_new",
        )
        self.run_path = Path(self.run.dir).parent

    def log(self, metrics: dict[str, Any], step: int | None = None) -> None:
        self.run.log(metrics, step=step)

    def summary(self, metrics: dict[str, Any]) -> None:
        for k, v in metrics.items():
            self.run.summary[k] = v

    def table(self, name: str, columns: list[str], rows: list[list[Any]]) -> None:
        self.run.log({name: self._wandb.Table(columns=columns, data=rows)})

    def image(self, name: str, path: str | Path) -> None:
        self.run.log({name: self._wandb.Image(str(path))})

    def finish(self, exit_code: int = 0) -> None:
        self.run.finish(exit_code=exit_code)


def make_tracker(logger: dict[str, Any] | None, run_dir: Path, name: str, config: dict[str, Any],
                 job_type: str | None = None, group: str | None = None) -> Tracker:
    """The tracker the ``logger`` config group asks for."""
    if not logger or logger.get("kind", "none") == "none":
        return Tracker()
    if logger["kind"] != "wandb":
        raise ValueError(f"unknown logger.kind {logger['kind']!r}")
    # the points of a sweep share one W&B group, set by the sweep launcher for its tasks
    return WandbTracker(logger, run_dir, name, config, job_type=job_type, group=os.environ.get(GROUP_ENV) or group)
