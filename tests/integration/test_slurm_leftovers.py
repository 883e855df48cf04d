"""Temp folders written on another node are cleaned once their SLURM job has ended, and only then.

On a cluster the writer of ``.NAME.tmp-*`` is usually a job on a compute node, whose pid means
nothing on the next run's host; its SLURM job id (in the folder name) is what says it is gone.
The jobs are real: one that ran to the end, one held pending (certainly alive).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from hpc_merge.atomic import remove_stale_siblings
from hpc_merge.cluster.slurm import make_executor, wait
from tests.integration import slurm_jobs

pytestmark = [pytest.mark.integration, pytest.mark.slurm]


def test_other_nodes_temp_folders_removed_only_after_their_job_ended(slurm_profile: dict, tmp_path: Path) -> None:
    ended = make_executor(slurm_profile, tmp_path / "slurm", "ended").submit(slurm_jobs.answer, 1)
    wait(ended, tmp_path / "ended", stream=lambda _: None)  # the event: SLURM reports it COMPLETED
    held_profile = {**slurm_profile, "additional_parameters": {**slurm_profile["additional_parameters"], "hold": True}}
    held = make_executor(held_profile, tmp_path / "slurm", "held").submit(slurm_jobs.answer, 2)
    out = tmp_path / "models"
    out.mkdir()
    gone = out / f".merged.tmp-4242@node-17+j{ended.job_id}-abcd1234"
    pending = out / f".merged.tmp-4242@node-17+j{held.job_id}-efgh5678"
    unknown = out / ".merged.tmp-4242@node-17-ijkl9012"  # another node, no job: nobody can tell
    try:
        for folder in (gone, pending, unknown):
            folder.mkdir()
            (folder / "model.safetensors").write_bytes(b"partial")
        assert remove_stale_siblings(out) == [gone]
        assert not gone.exists() and pending.is_dir() and unknown.is_dir()
    finally:
        held.cancel(check=False)
