"""The monitor's state rules on real status files (written with ``update_status``) and its CLI output."""

from __future__ import annotations

import io
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from rich.console import Console

from hpc_merge.atomic import write_json
from hpc_merge.monitor import main
from hpc_merge.monitor.reader import Reader
from hpc_merge.monitor.view import fmt_bytes, plain_snapshot, render, sparkline, split_keys, watch
from hpc_merge.procs.slurmq import parse_sacct
from hpc_merge.run.files import discover
from hpc_merge.run.logs import last_log_lines, slurm_job_id
from hpc_merge.run.state import classify
from hpc_merge.run.status import read_status, update_status

HOST = socket.gethostname()


def _run(logs: Path, name: str, kind: str = "merge") -> Path:
    run = logs / kind / name / f"id-{name}"
    run.mkdir(parents=True)
    (run / "config.yaml").write_text(f"name: {name}\n")
    return run


def _states(*roots: Path, **kw) -> dict[str, str]:
    return {Path(r.run_dir).parent.name: r.state for r in Reader(roots, **kw).snapshot()}


def _writer(run: Path, *fields: str) -> subprocess.Popen:
    """A real job process: writes a running status through update_status, then keeps running."""
    code = ("import sys, time; from hpc_merge.run.status import update_status; "
            f"update_status(sys.argv[1], state='running', phase='merge:final', {', '.join(fields)}); "
            "print('written', flush=True); time.sleep(120)")
    proc = subprocess.Popen([sys.executable, "-c", code, str(run)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "written"
    return proc


def test_local_job_running_then_dead_when_its_process_is_killed(tmp_path: Path) -> None:
    run = _run(tmp_path, "victim")
    proc = _writer(run, "tasks_done=3", "tasks_total=12")
    try:
        [info] = Reader([tmp_path]).snapshot()
        assert (info.state, info.phase, info.progress, info.pid) == ("running", "merge:final", 0.25, proc.pid)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    [info] = Reader([tmp_path]).snapshot()
    assert info.state == "dead" and f"pid {proc.pid}" in info.reason
    assert read_status(run)["state"] == "running"  # the file still says so; the monitor knows better


def test_zombie_and_reused_pid_are_dead(tmp_path: Path) -> None:
    run = _run(tmp_path, "zombie")
    proc = _writer(run)
    proc.send_signal(signal.SIGKILL)
    time.sleep(0.2)  # not reaped yet: a zombie still answers kill(pid, 0)
    assert _states(tmp_path)["zombie"] == "dead"
    proc.wait()
    # a live process that started after the last status update is not the writer (pid reuse)
    reused = _run(tmp_path, "reused")
    update_status(reused, state="running", phase="smoke")
    status = read_status(reused)
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        write_json(reused / "status.json", {**status, "pid": sleeper.pid, "updated_at": time.time() - 60})
        assert _states(tmp_path)["reused"] == "dead"
        write_json(reused / "status.json", {**status, "pid": sleeper.pid, "updated_at": time.time() + 5})
        assert _states(tmp_path)["reused"] == "running"
    finally:
        sleeper.kill()
        sleeper.wait()


def test_final_states_from_status_and_result(tmp_path: Path) -> None:
    ok, failed, cancelled = _run(tmp_path, "ok"), _run(tmp_path, "failed"), _run(tmp_path, "cancelled")
    update_status(ok, state="ok", phase="done", tasks_done=5, tasks_total=5)
    write_json(ok / "result.json", {"status": "ok"})
    update_status(failed, state="failed", phase="failed", error="ValueError: boom")
    write_json(failed / "result.json", {"status": "failed", "error": "ValueError: boom",
                                        "traceback": "Traceback...\nValueError: boom"})
    update_status(cancelled, state="failed", phase="failed", error="KeyboardInterrupt: ")
    runs = {r.name: r for r in Reader([tmp_path]).snapshot()}
    assert {n: r.state for n, r in runs.items()} == {"ok": "ok", "failed": "failed", "cancelled": "cancelled"}
    assert runs["ok"].progress == 1.0 and runs["failed"].error == "ValueError: boom"
    assert last_log_lines(failed)[-1] == "ValueError: boom"  # no log file: the traceback stands in


def test_other_host_uses_the_heartbeat(tmp_path: Path) -> None:
    fresh, stale = _run(tmp_path, "fresh"), _run(tmp_path, "stale")
    for run, age in ((fresh, 5), (stale, 3600)):
        update_status(run, state="running", phase="merge:final")
        write_json(run / "status.json", {**read_status(run), "host": "node042", "pid": 1,
                                         "updated_at": time.time() - age})
    assert _states(tmp_path, stale_after=600) == {"fresh": "running", "stale": "dead"}
    # a run dir with only its config: pending at first, dead when nothing ever came
    _run(tmp_path, "never")
    assert _states(tmp_path, stale_after=600)["never"] == "pending"
    assert _states(tmp_path, stale_after=-1)["never"] == "dead"


@pytest.mark.parametrize(("slurm", "written", "result", "expected"), [
    ("PENDING", {}, {}, "pending"),
    ("REQUEUED", {"state": "running"}, {}, "pending"),
    ("RUNNING", {"state": "running"}, {}, "running"),
    ("RUNNING", {}, {}, "running"),
    ("COMPLETED", {"state": "ok"}, {"status": "ok"}, "ok"),
    ("COMPLETED", {"state": "running"}, {}, "dead"),
    ("FAILED", {"state": "running"}, {}, "dead"),
    ("TIMEOUT", {"state": "running"}, {}, "dead"),
    ("NODE_FAIL", {"state": "running"}, {}, "dead"),
    ("OUT_OF_MEMORY", {"state": "running"}, {}, "dead"),
    ("GONE", {"state": "running"}, {}, "dead"),
    ("FAILED", {"state": "failed"}, {"status": "failed"}, "failed"),
    ("CANCELLED", {"state": "running"}, {}, "cancelled"),
    ("CANCELLED", {}, {}, "cancelled"),
    (None, {"state": "pending"}, {}, "pending"),  # submitted, SLURM not reachable from here
])
def test_slurm_state_rules(slurm, written, result, expected) -> None:
    status = {**written, "updated_at": time.time(), "host": "node1", "pid": 123} if written else {}
    state, _ = classify(status, result, slurm, True, now=time.time(), stale_after=600, host=HOST)
    assert state == expected


def test_slurm_job_ids_from_status_or_submitit_files(tmp_path: Path) -> None:
    by_status, by_files = _run(tmp_path, "by_status"), _run(tmp_path, "by_files")
    update_status(by_status, state="running", slurm_job_id=41, slurm_state="PENDING")
    (by_files / "slurm").mkdir()
    (by_files / "slurm" / "77_submitted.pkl").write_bytes(b"")
    (by_files / "slurm" / "77_0_log.out").write_text("loading\nmerging tensor 3/9\n")
    asked: list[set[str]] = []

    def sacct(ids):
        asked.append(set(ids))
        return {"41": "RUNNING", "77": "PENDING"}

    runs = {r.name: r for r in Reader([tmp_path], query=sacct).snapshot()}
    assert asked == [{"41", "77"}]  # one batched question for every job
    assert (runs["by_status"].state, runs["by_status"].slurm_state) == ("running", "RUNNING")
    assert (runs["by_files"].state, runs["by_files"].slurm_job_id) == ("pending", "77")
    assert last_log_lines(by_files)[-1] == "merging tensor 3/9"
    (by_files / "slurm" / "80_3_0_log.err").write_text("")  # an array element, submitted later
    assert slurm_job_id(by_files, {}) == "80_3"
    # SLURM unreachable: the launcher's pid (long gone) must not make a pending job dead
    runs = {r.name: r for r in Reader([tmp_path], query=lambda ids: None).snapshot()}
    assert runs["by_status"].state == "running"


def test_parse_sacct_output() -> None:
    text = "12|COMPLETED\n13|CANCELLED by 0\n14_2|RUNNING\n15_[0-3]|PENDING\n"
    assert parse_sacct(text) == {"12": "COMPLETED", "13": "CANCELLED", "14_2": "RUNNING", "15_[0-3]": "PENDING"}


def test_discover_skips_a_runs_own_folders(tmp_path: Path) -> None:
    run = _run(tmp_path, "a")
    (run / "model").mkdir()
    (run / "model" / "config.yaml").write_text("")  # looks like a marker, is inside a run
    hydra = tmp_path / "hydra" / "2026" / "x"
    hydra.mkdir(parents=True)
    (hydra / "config.yaml").write_text("")
    assert discover([tmp_path]) == [run.resolve()]
    assert discover([run]) == [run.resolve()]


def test_json_and_once_output(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    merge = _run(tmp_path, "m")
    update_status(merge, state="running", phase="merge:final", tasks_done=50, tasks_total=200,
                  throughput_mb_s=12.5, eta_s=75, bytes_read=29e6)

    time.sleep(0.01)  # the evolution run is the most recent: selected, its log shown
    evo = _run(tmp_path, "evo", kind="evolve")
    history = [{"generation": g, "best": b, "mean": b / 2, "sigma": 0.3} for g, b in enumerate([0.1, 0.3, 0.2, 0.6])]
    update_status(evo, state="running", phase="evolve", generation=3, generations_total=4, best_fitness=0.6,
                  mean_fitness=0.3, sigma=0.3, history=history + ["junk"])
    (evo / "job.log").write_text("gen 2 best 0.2\ngen 3 best 0.6\n")
    assert main(["--json", str(tmp_path)]) == 0
    data = json.loads(capsys.readouterr().out)
    runs = {r["name"]: r for r in data["runs"]}
    assert {r["state"] for r in data["runs"]} == {"running"}
    assert runs["m"]["progress"] == 0.25 and runs["m"]["eta_s"] == 75
    assert runs["evo"]["progress"] == 0.75 and runs["evo"]["best_fitness"] == 0.6
    assert len(runs["evo"]["history"]) == 4  # the malformed entry is dropped

    assert main(["--once", "--lines", "1", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    row = next(line for line in out.splitlines() if "merge/m/" in line).split()
    assert row[:7] == ["running", "merge/m/id-m", "merge:final", "25%", "12.5", "29M→-", "1m15s"]
    assert sparkline([0.1, 0.3, 0.2, 0.6]) in out and "0.6 g3" in out
    # --lines 1: the newest log file's last line, of the selected (first) run
    assert out.rstrip().splitlines()[-3:] == ["--- last log lines of evolve/evo/id-evo ---", "==> job.log <==",
                                              "gen 3 best 0.6"]

    assert main(["--json", "--limit", "1", str(tmp_path)]) == 0
    assert [r["name"] for r in json.loads(capsys.readouterr().out)["runs"]] == ["evo"]
    assert main(["--json", str(tmp_path / "missing")]) == 2


def test_cli_entry_points_in_subprocesses(tmp_path: Path) -> None:
    run = _run(tmp_path, "cli")
    update_status(run, state="ok", phase="done")
    env = {**os.environ, "HPC_MERGE_LOGS": str(tmp_path)}
    for module in (["hpc_merge", "monitor"], ["hpc_merge.monitor"]):
        t0 = time.monotonic()
        proc = subprocess.run([sys.executable, "-m", *module, "--json"], capture_output=True, text=True,
                              env=env, timeout=60, check=False)
        assert proc.returncode == 0, proc.stderr
        assert [r["state"] for r in json.loads(proc.stdout)["runs"]] == ["ok"]
        assert time.monotonic() - t0 < 10
    # the monitor must not pull in torch or mergekit (it runs on login nodes, every second)
    code = ("import sys; from hpc_merge.monitor import main; main(['--once', sys.argv[1]]); "
            "print(sorted(m for m in ('torch', 'mergekit', 'transformers') if m in sys.modules))")
    proc = subprocess.run([sys.executable, "-c", code, str(tmp_path)], capture_output=True, text=True,
                          timeout=60, check=False)
    assert proc.stdout.strip().splitlines()[-1] == "[]", proc.stderr


def test_live_view_stops_when_every_run_has_ended(tmp_path: Path) -> None:
    ok, dead = _run(tmp_path, "ok"), _run(tmp_path, "dead")
    update_status(ok, state="ok", phase="done")
    update_status(dead, state="running", phase="merge:final")
    write_json(dead / "status.json", {**read_status(dead), "pid": 2 ** 22 + 1})  # no such pid
    out = io.StringIO()
    rc = watch(Reader([tmp_path]), interval=0.1, console=Console(file=out, width=140, color_system=None))
    assert rc == 1  # not all ok
    assert "dead" in out.getvalue() and "merge/ok/id-ok" in out.getvalue()
    # on an 80-column terminal the run names stay whole (empty columns give way)
    narrow = Console(file=io.StringIO(), width=80, color_system=None)
    narrow.print(render(Reader([tmp_path]).snapshot()))
    text = narrow.file.getvalue()
    assert "merge/ok/id-ok" in text and "merge/dead/id-dead" in text and "FITNESS" not in text


def test_plain_snapshot_and_keys() -> None:
    assert plain_snapshot([]) == "no runs found"
    assert split_keys("j\x1b[Ak\x1b") == ["j", "\x1b[A", "k", "\x1b"]
    assert sparkline([1, 1, 1]) == "▁▁▁" and sparkline([0, 1]) == "▁█"
    assert [fmt_bytes(n) for n in (None, 999, 1500, 29e6, 2.5e9)] == ["-", "999", "1.5K", "29M", "2.5G"]
