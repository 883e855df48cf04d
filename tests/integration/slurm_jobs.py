"""Functions the SLURM tests submit (importable on the node as ``tests.integration.slurm_jobs``)."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import submitit


def answer(x: int = 0) -> dict[str, Any]:
    """Returns, printing what the job saw of its environment."""
    print(f"hello from job {os.environ.get('SLURM_JOB_ID')}", flush=True)
    return {"value": 42 + x, "hf_offline": os.environ.get("HF_HUB_OFFLINE"),
            "greeting": os.environ.get("GREETING")}


def boom() -> None:
    """Raises on the node."""
    raise ValueError("kaboom on the node")


def crash() -> None:
    """Dies without a result (as a segfault or the OOM killer would)."""
    print("about to crash", flush=True)
    os._exit(3)


def sleep_long(seconds: float = 300) -> None:
    """Runs until cancelled."""
    print("sleeping", flush=True)
    time.sleep(seconds)


def square(x: int) -> int:
    """One array element; a negative item fails."""
    if x < 0:
        raise ValueError(f"negative item {x}")
    return x * x


class Resumable(submitit.helpers.Checkpointable):
    """First run: leaves a marker and outlives its time limit; after the requeue it returns."""

    def __init__(self, marker: str):
        self.marker = marker

    def __call__(self) -> dict[str, Any]:
        restarts = int(os.environ.get("SLURM_RESTART_COUNT") or 0)
        marker = Path(self.marker)
        if restarts == 0:
            marker.write_text("first run started\n")
            print("first run: working past the time limit", flush=True)
            time.sleep(600)
        return {"restarts": restarts, "resumed_after": marker.read_text().strip()}


def squares(items: list[int]) -> list[int]:
    """A task's share of a spread batch; a negative item makes the task raise."""
    print(f"squaring {items} in job {os.environ.get('SLURM_JOB_ID')} task {os.environ.get('SLURM_PROCID')} "
          f"with {os.environ.get('SLURM_CPUS_PER_TASK')} CPU(s)", flush=True)
    return [square(x) for x in items]


def squares_or_die(items: list[int]) -> list[int]:
    """Like :func:`squares`, but a negative item kills the task without a result (as the OOM killer would)."""
    if any(x < 0 for x in items):
        print(f"task {os.environ.get('SLURM_PROCID')} about to die", flush=True)
        os._exit(9)
    return squares(items)
