"""The run lock's holder rules: live holders are respected and named, dead ones (or a reused pid) are not."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from hpc_merge.procs.owner import hostname, process_start
from hpc_merge.run.lock import LOCK_FILE, RunLocked, acquire


def _write_lock(run_dir: Path, **holder: object) -> None:
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / LOCK_FILE).write_text(json.dumps({"token": "theirs", "started": 0, **holder}))


def test_a_live_holder_is_named_and_released_lock_is_free(tmp_path: Path) -> None:
    lock = acquire(tmp_path)
    with pytest.raises(RunLocked) as info:
        acquire(tmp_path)
    msg = str(info.value)
    assert "\n" not in msg and f"in use by pid {os.getpid()} on host {hostname()}" in msg and f"kill {os.getpid()}" in msg
    lock.release()
    assert not (tmp_path / LOCK_FILE).exists()
    acquire(tmp_path).release()


def test_dead_holder_is_taken_over(tmp_path: Path) -> None:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    _write_lock(tmp_path, pid=proc.pid, host=hostname(), pid_start=None)
    lock = acquire(tmp_path)
    assert json.loads((tmp_path / LOCK_FILE).read_text())["pid"] == os.getpid()
    lock.release()


def test_a_reused_pid_does_not_hold_the_lock(tmp_path: Path) -> None:
    """The recorded pid now belongs to another process (this one, started at another time)."""
    _write_lock(tmp_path, pid=os.getpid(), host=hostname(), pid_start=process_start(os.getpid()) - 1)
    acquire(tmp_path).release()


def test_a_holder_nobody_can_check_is_respected_with_a_way_out(tmp_path: Path) -> None:
    _write_lock(tmp_path, pid=4242, host="another-node", slurm_job_id=None)
    with pytest.raises(RunLocked) as info:
        acquire(tmp_path)
    msg = str(info.value)
    assert "pid 4242 on host another-node (cannot check from here)" in msg and f"delete {tmp_path / LOCK_FILE}" in msg


def test_release_leaves_a_lock_that_is_not_ours(tmp_path: Path) -> None:
    lock = acquire(tmp_path)
    _write_lock(tmp_path, pid=4242, host="another-node")  # someone took over (e.g. after a stale check)
    lock.release()
    assert json.loads((tmp_path / LOCK_FILE).read_text())["token"] == "theirs"
