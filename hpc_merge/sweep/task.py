"""What runs one point: the ordinary job runner, plus the point's line in ``sweep.json``.

A SLURM array task (or a local worker process) runs the point's job exactly as a single run
would (same run dir, same ``result.json``), then records its end in the sweep record, so the
record is current even when nobody waits for the sweep.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from hpc_merge.jobs.runner import JobRunner


class SweepTask(JobRunner):
    """:class:`~hpc_merge.jobs.runner.JobRunner` for point ``index`` of the sweep in ``sweep_dir``."""

    def __init__(self, kind: str, cfg: dict[str, Any], run_dir: str, sweep_dir: str, index: int,
                 env: dict[str, str] | None = None):
        super().__init__(kind, cfg, run_dir, env=env)
        self.sweep_dir, self.index = sweep_dir, index

    def __call__(self) -> dict[str, Any]:
        """Run the job; whatever happens, write the point's state and metrics into ``sweep.json``."""
        from hpc_merge.sweep.metrics import flat_metrics
        from hpc_merge.sweep.sweepfile import update_point

        update_point(self.sweep_dir, self.index, state="running")
        try:
            result = super().__call__()
        except Exception as exc:  # not SystemExit: submitit's requeue on the time limit is no failure
            update_point(self.sweep_dir, self.index, state="failed", phase="failed",
                         error=f"{type(exc).__name__}: {exc}".splitlines()[0])
            raise
        update_point(self.sweep_dir, self.index, state="ok", phase="done", metrics=flat_metrics(result))
        return result

    def __repr__(self) -> str:
        return f"SweepTask({self.kind!r}, point={self.index}, run_dir={Path(self.run_dir).name!r})"
