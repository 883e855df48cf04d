"""A part of a split merge killed MID-MERGE on the local SLURM (scancel of its running array
element, or ``scontrol requeue`` as a preemption does): the re-run, or the requeued element,
redoes only that part.

No sleep-and-hope: the part is held at the moment it reports that it is merging (its first
``merging`` progress report, written once mergekit has executed its first task) by the test
helper ``tests/split_hold`` (an audit hook on the worker's own report; the merge is the real
one), and the test kills it only once that report is on disk.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import ROOT, run_cli

pytestmark = [pytest.mark.integration, pytest.mark.slurm]

PART = "part-00002-of-00003"
BASE = ["merge=dare_ties", "models=tiny", "logger=none", "job.smoke.enabled=false", "cluster=slurm",
        "cluster.cpus_per_task=1", "cluster.mem_gb=2", "cluster.timeout_min=10", "job.tasks=3"]


def _args(tmp_path: Path) -> list[str]:
    """The same command for both tries: the hold acts once, while its token file exists."""
    hold = f"{tmp_path / 'hold-token'}:{PART}"
    return [*BASE, f"output={tmp_path / 'out'}", f"++cluster.env.PYTHONPATH='{ROOT / 'tests' / 'split_hold'}'",
            f"++cluster.env.HPC_MERGE_TEST_HOLD='{hold}'"]


def _wait_for(what: str, found, timeout_s: float = 300.0, proc: subprocess.Popen | None = None):
    """Poll until ``found()`` is truthy (the event itself, not a guess of how long it takes)."""
    deadline = time.time() + timeout_s
    while not (got := found()):
        if proc is not None and proc.poll() is not None:
            pytest.fail(f"the run ended before {what}: {proc.stdout.read()} {proc.stderr.read()}")
        if time.time() > deadline:
            pytest.fail(f"no {what} within {timeout_s:.0f} s")
        time.sleep(0.2)
    return got


def _merging_report(logs: Path) -> dict | None:
    for path in logs.rglob(f"{PART}.progress.json"):
        try:
            row = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        if row.get("state") == "merging":
            return {**row, "path": path}
    return None


def _start(tmp_path: Path) -> subprocess.Popen:
    (tmp_path / "hold-token").write_text("hold once\n")
    return subprocess.Popen([sys.executable, "-m", "hpc_merge", *_args(tmp_path)], cwd=tmp_path, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=dict(os.environ))


def _sacct(job: str, *flags: str) -> str:
    return subprocess.run(["sacct", "-n", "-P", "-X", *flags, "-o", "JobID,State", "-j", job],
                          capture_output=True, text=True).stdout


def test_a_part_killed_mid_merge_is_the_only_one_redone(slurm_cluster, tiny_pool, tmp_path: Path) -> None:
    logs = Path(os.environ["HPC_MERGE_LOGS"])
    proc = _start(tmp_path)
    report = _wait_for(f"'merging' report of {PART}", lambda: _merging_report(logs), proc=proc)
    element = report["slurm_job_id"]
    assert element and element.endswith("_1"), report  # the array's second element runs part 2
    parts_root = report["path"].parent
    assert 0 < report["tensors_total"] and not (parts_root / PART).exists()  # mid-merge: no part folder yet
    assert any(parts_root.glob(f".{PART}.tmp-*")), list(parts_root.iterdir())  # its half-written folder
    subprocess.run(["scancel", element], check=True)
    out, err = proc.communicate(timeout=600)
    assert proc.returncode == 1, out[-3000:] + err[-3000:]
    assert f"1 of 3 parts failed, e.g. {PART}" in err and "CANCELLED" in err, err[-3000:]
    assert not (tmp_path / "out").exists()
    kept = {}
    for label in ("part-00001-of-00003", "part-00003-of-00003"):
        assert (parts_root / label / "part.json").is_file(), label
        kept[label] = {f.name: f.stat().st_ino for f in (parts_root / label).glob("*.safetensors")}
    assert not (parts_root / PART).exists()

    again = run_cli(*_args(tmp_path), cwd=tmp_path)
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    assert re.search(r"submitted SLURM job array \d+ \(1 of 3 parts\)", again.stdout), again.stdout[-3000:]
    shards = {f.stat().st_ino for f in (tmp_path / "out").glob("*.safetensors")}
    assert len(shards) == 3
    for label, inodes in kept.items():  # the model's shards are the kept parts' files (hard links), not redone
        assert set(inodes.values()) <= shards, label


def test_a_part_requeued_mid_merge_still_ends_with_its_record(slurm_cluster, tiny_pool, tmp_path: Path) -> None:
    """``scontrol requeue`` of the running element (what SLURM does to a preempted element with
    PreemptMode=REQUEUE): the element starts again, merges its part from the start and records
    it; the waiting run sees it come back and succeeds without a second command."""
    logs = Path(os.environ["HPC_MERGE_LOGS"])
    proc = _start(tmp_path)
    report = _wait_for(f"'merging' report of {PART}", lambda: _merging_report(logs), proc=proc)
    element = report["slurm_job_id"]
    subprocess.run(["scontrol", "requeue", element], check=True)
    out, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, out[-3000:] + err[-3000:]
    assert len(list((tmp_path / "out").glob("*.safetensors"))) == 3
    def both_tries() -> str | None:
        history = _sacct(element, "-D")  # -D: every try of the element, not only the last
        return history if "REQUEUED" in history and "COMPLETED" in history else None

    history = _wait_for(f"accounting of {element}'s two tries", both_tries, timeout_s=60)
    assert "REQUEUED" in history and "COMPLETED" in history, history
