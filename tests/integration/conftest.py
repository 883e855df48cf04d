"""The local SLURM cluster for the integration tier: brought up once per test session.

``scripts/local_slurm.sh up`` installs Debian's SLURM if needed and returns at once when the
cluster already answers. Tests are skipped only where it cannot be installed (not root, or no
apt-get and no SLURM); a bring-up that fails where it could work is an error, not a skip.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "scripts" / "local_slurm.sh"


@pytest.fixture(scope="session")
def slurm_cluster() -> str:
    """Bring the single-node cluster up; returns its partition name."""
    installed = shutil.which("sbatch") and shutil.which("slurmctld")
    if os.geteuid() != 0:
        if installed and subprocess.run([str(SCRIPT), "status"], capture_output=True).returncode == 0:
            return "debug"  # someone (root) already runs it: use it
        pytest.skip("no local SLURM cluster, and installing one needs root: "
                    "sudo bash scripts/local_slurm.sh up && bash scripts/test.sh")
    if not installed and shutil.which("apt-get") is None:
        pytest.skip("SLURM is not installed and apt-get is unavailable to install it")
    proc = subprocess.run([str(SCRIPT), "up"], capture_output=True, text=True, timeout=900)
    if proc.returncode != 0:
        pytest.fail(f"scripts/local_slurm.sh up failed (rc {proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return "debug"


@pytest.fixture
def slurm_profile(slurm_cluster: str) -> dict[str, Any]:
    """A small ``cluster`` profile for the local cluster (jobs start in the repo root, so test
    helpers under ``tests/`` are importable on the node)."""
    return {
        "kind": "slurm", "wait": True, "partition": slurm_cluster, "account": None, "qos": None,
        "constraint": None, "nodes": 1, "tasks_per_node": 1, "gpus_per_node": 0, "cpus_per_task": 1,
        "mem_gb": 1, "timeout_min": 5, "signal_delay_s": 90, "array_parallelism": 8, "setup": [],
        "additional_parameters": {"chdir": str(ROOT)}, "env": {"HF_HUB_OFFLINE": "1"}, "hf_home": None,
    }
