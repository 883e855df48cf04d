"""``hydra/launcher=hpc_merge`` (the default of ``hpc-merge -m``): the Hydra side of our sweeps.

Hydra imports every module under ``hydra_plugins`` when it scans for plugins, on every run, so
this module stays light (and has no ``from __future__ import annotations``: Hydra executes it
without registering it in ``sys.modules``, where dataclasses would look string annotations up): it registers the launcher's options and hands each batch of points to
:mod:`hpc_merge.sweep.launch`, imported only when a sweep is launched.
"""

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from hydra.core.config_store import ConfigStore
from hydra.core.utils import JobReturn
from hydra.plugins.launcher import Launcher
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig, OmegaConf


@dataclass
class HpcMergeLauncherConf:
    """Options: ``hydra.launcher.wait=true``, ``hydra.launcher.workers=2`` ... on the command line."""

    _target_: str = "hydra_plugins.hpc_merge_launcher.launcher.HpcMergeLauncher"
    wait: bool = False  # cluster=slurm*: wait for the array with a live table (exit 1 if a point failed)
    workers: int = 1  # cluster=local: points run at once
    metric: str | None = None  # the key metric (a result field, e.g. perplexity); null: chosen by job kind
    mode: str | None = None  # min | max for the metric; null: min for perplexity/loss, else max
    sweep_dir: str | None = None  # null: <logs_dir>/sweeps/<sweep_id>
    interval_s: float = 2.0  # seconds between refreshes of the table while waiting


ConfigStore.instance().store(group="hydra/launcher", name="hpc_merge", node=HpcMergeLauncherConf,
                             provider="hpc_merge")


class HpcMergeLauncher(Launcher):
    """Validates every point, skips finished ones, runs the rest locally or as one SLURM array."""

    def __init__(self, **params: Any) -> None:
        self.options = {k: OmegaConf.to_container(v, resolve=True) if OmegaConf.is_config(v) else v
                        for k, v in params.items()}
        self.config: DictConfig | None = None
        self.hydra_context: HydraContext | None = None

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        """Keep what ``launch`` needs; the task function is not used (points run as hpc_merge jobs)."""
        self.config, self.hydra_context = config, hydra_context

    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[JobReturn]:
        """Run one batch of points (all of a basic sweep); see :func:`hpc_merge.sweep.launch.launch`."""
        from hpc_merge.sweep.launch import launch

        assert self.config is not None and self.hydra_context is not None
        return launch(self.config, self.hydra_context.config_loader, [list(o) for o in job_overrides],
                      initial_job_idx, self.options)
