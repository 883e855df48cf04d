"""Killed writers leave nothing behind after the next run; a full disk is one line, never a traceback.

Small disks are real: a tmpfs mounted in a private mount namespace (``unshare -rm``), which
disappears with the command, so nothing is left mounted whatever happens. The hpc_merge CLI runs
inside it exactly as a user runs it.
"""

from __future__ import annotations

import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from hpc_merge.app import prepare, run
from hpc_merge.atomic import remove_stale_siblings
from hpc_merge.config import compose
from hpc_merge.procs.owner import hostname
from hpc_merge.run.outputs import MARKER

WRITER = """
import sys, time
from hpc_merge.atomic import atomic_dir
with atomic_dir(sys.argv[1]) as tmp:
    (tmp / "model-00001-of-00002.safetensors").write_bytes(b"half a model" * 1000)
    print(tmp, flush=True)
    time.sleep(600)
"""


def _writer_inside(dest: Path) -> tuple[subprocess.Popen, Path]:
    """A process stopped half-way through writing ``dest``: returns it and its temp folder."""
    proc = subprocess.Popen([sys.executable, "-c", WRITER, str(dest)], stdout=subprocess.PIPE, text=True)
    tmp = Path(proc.stdout.readline().strip())  # the event: it is inside its temp folder, writing
    assert tmp.is_dir() and tmp.parent == dest.parent
    return proc, tmp


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_killed_merge_temp_folder_removed_by_the_next_run(tiny_pool, tmp_path: Path) -> None:
    out = tmp_path / "out"
    alive, busy = _writer_inside(tmp_path / "other")  # another writer, still at work beside it
    killed, stale = _writer_inside(out)
    killed.kill()
    killed.wait()
    foreign = tmp_path / ".out.tmp-notours"  # a name we never make
    foreign.mkdir()
    try:
        assert stale.is_dir() and not out.exists()
        result = run(compose(["logger=none", "models=tiny", f"output={out}", "job.smoke.enabled=false"]))
        assert result["status"] == "ok" and (out / "config.json").is_file()
        assert not stale.exists(), "the dead writer's temp folder is removed"
        assert busy.is_dir(), "a live writer's temp folder is left alone"
        assert foreign.is_dir(), "a folder we did not name is left alone"
    finally:
        alive.kill()
        alive.wait()


def test_a_writer_killed_between_its_renames_gets_its_output_back(tmp_path: Path) -> None:
    old = tmp_path / f".out.old-{_dead_pid()}@{hostname()}-abc123"
    old.mkdir()
    (old / MARKER).write_text("{}")
    (old / "config.json").write_text("{}")
    remove_stale_siblings(tmp_path)
    assert (tmp_path / "out" / "config.json").is_file() and not old.exists()


def _in_small_disk(disk: Path, size: int, args: list[str], env: dict[str, str] | None = None
                   ) -> subprocess.CompletedProcess:
    """``python -m hpc_merge ARGS`` with a ``size``-byte tmpfs mounted on ``disk``; prints what is left on it."""
    if shutil.which("unshare") is None:
        pytest.skip("unshare (util-linux) is needed to mount a small tmpfs without touching the machine")
    probe = subprocess.run(["unshare", "-rm", "true"], capture_output=True)
    if probe.returncode != 0:
        pytest.skip(f"private mount namespaces are not allowed here: {probe.stderr.decode().strip()}")
    disk.mkdir(parents=True, exist_ok=True)
    script = (f'mount -t tmpfs -o size={size} tmpfs "{disk}" || exit 99; "$@"; rc=$?; echo "--- left:"; '
              f'find "{disk}" -mindepth 1; exit $rc')
    return subprocess.run(["unshare", "-rm", "sh", "-c", script, "sh", sys.executable, "-m", "hpc_merge", *args],
                          capture_output=True, text=True, timeout=600, env={**os.environ, **(env or {})})


def _left_on_disk(proc: subprocess.CompletedProcess) -> list[str]:
    return proc.stdout.split("--- left:", 1)[1].split()


def test_output_larger_than_the_free_space_refused_up_front(tiny_pool, tmp_path: Path) -> None:
    disk = tmp_path / "small"
    proc = _in_small_disk(disk, 64 * 1024, ["logger=none", "models=tiny", f"output={disk / 'out'}"])
    assert proc.returncode == 2, proc.stderr[-2000:]
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, lines
    assert lines[0].startswith(f"error: output: not enough free space for {disk / 'out'}: the output needs ~")
    assert "KB free" in lines[0]
    assert _left_on_disk(proc) == []


def test_disk_full_while_writing_is_one_line_and_leaves_nothing(tiny_pool, tmp_path: Path) -> None:
    disk = tmp_path / "small"
    args = ["logger=none", "models=tiny", f"output={disk / 'out'}"]
    _, plan, _ = prepare(compose(args))
    need = plan["estimate"]["write_bytes"]
    # room for the planned weights (the up-front check passes) but not for the whole folder
    # (tokenizer.json alone is 9 KB; the writer also leaves header room): the disk fills mid-write
    size = math.ceil(need / 4096) * 4096 + 4096
    proc = _in_small_disk(disk, size, args)
    assert proc.returncode == 1, proc.stdout[-2000:] + proc.stderr[-2000:]
    errors = [ln for ln in proc.stderr.splitlines() if ln.startswith(("job failed", "error"))]
    assert len(errors) == 1 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert errors[0].startswith(f"job failed: no space left on the device while writing {disk / 'out'}")
    assert "the partial output was removed" in errors[0]
    assert _left_on_disk(proc) == [], "no temp folder and no half-written output"


def test_full_logs_disk_is_one_line(tiny_pool, tmp_path: Path) -> None:
    """The run dir's own small files (config, status, log) do not fit: one line, not a traceback."""
    disk = tmp_path / "small"
    out = tmp_path / "out"
    proc = _in_small_disk(disk, 8 * 1024, ["logger=none", "models=tiny", f"output={out}"],
                          env={"HPC_MERGE_LOGS": str(disk / "logs")})
    assert proc.returncode == 1, proc.stdout[-2000:] + proc.stderr[-2000:]
    errors = [ln for ln in proc.stderr.splitlines() if ln.startswith(("job failed", "error"))]
    assert len(errors) == 1 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert errors[0].startswith(f"job failed: no space left on the device of the run dir {disk / 'logs' / 'merge'}")
    assert not out.exists()
