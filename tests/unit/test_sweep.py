"""Sweeps without SLURM: swept parameters, metrics, the report (CSV, plot), the monitor's grouping,
and the launcher refusing a sweep with a bad point before anything exists."""

from __future__ import annotations

import csv
import os
import subprocess
import sys
from pathlib import Path

import pytest

from hpc_merge.atomic import write_json
from hpc_merge.cli.sweep_report import main as report_main
from hpc_merge.monitor.reader import Reader
from hpc_merge.monitor.view import plain_snapshot
from hpc_merge.run.status import update_status
from hpc_merge.sweep import sweepfile
from hpc_merge.sweep.metrics import better_is_lower, default_metric, flat_metrics
from hpc_merge.sweep.points import Point, split_override, swept_keys
from hpc_merge.sweep.report import write_report
from tests.conftest import run_cli


def test_swept_keys_are_the_overrides_that_vary() -> None:
    points = [Point(i, ["models=tiny", f"merge.x={x}", f"merge.y={y}"]) for i, (x, y) in
              enumerate([(0.1, 1), (0.2, 1), (0.1, 2)])]
    for p in points:
        p.params = dict(map(split_override, p.overrides))
    keys = swept_keys(points)
    assert keys == ["merge.x", "merge.y"]
    assert points[2].label(keys) == "merge.x=0.1 merge.y=2"
    assert split_override("+merge.z=0.5") == ("merge.z", 0.5) and split_override("merge=ties") == ("merge", "ties")


def test_points_writing_one_output_folder_are_refused(tmp_path: Path) -> None:
    from omegaconf import OmegaConf

    from hpc_merge.sweep.points import clashing_outputs

    def point(i: int, output: str | None) -> Point:
        return Point(i, [f"x={i}"], cfg=OmegaConf.create({"output": output}), run_dir=tmp_path / f"r{i}")

    [(p, problem)] = clashing_outputs([point(0, str(tmp_path / "out")), point(1, None), point(2, str(tmp_path / "out"))])
    assert p.index == 2 and problem.startswith(f"output: {tmp_path / 'out'} is also point 0's output — fix: ")
    assert clashing_outputs([point(0, str(tmp_path / "a")), point(1, str(tmp_path / "b"))]) == []


def test_metrics_of_each_job_kind_and_which_is_key() -> None:
    merge = {"status": "ok", "metrics": {"perplexity": 12.5, "n_params": 10, "samples": [1],
                                         "report": [{"role": "merged", "accuracy": 0.5}, {"role": "merged", "accuracy": 1.0},
                                                    {"role": "base", "accuracy": 0.0}]},
             "timings": {"total_s": 3.0}}
    assert flat_metrics(merge) == {"perplexity": 12.5, "n_params": 10.0, "accuracy": 0.75, "total_s": 3.0}
    evolve = {"status": "ok", "best": {"fitness": 0.4, "test_fitness": 0.3}, "evaluations": 8}
    assert flat_metrics(evolve) == {"best.fitness": 0.4, "best.test_fitness": 0.3, "evaluations": 8.0}
    assert default_metric({"evolve"}, False) == "best.test_fitness"
    assert default_metric({"merge"}, True) == "accuracy" and default_metric({"merge", "moe"}, False) == "perplexity"
    assert better_is_lower("perplexity") and not better_is_lower("best.test_fitness")
    assert not better_is_lower("perplexity", "max")


def _sweep(logs: Path, values: list[tuple[float, float]], metric: str = "perplexity") -> Path:
    """A sweep folder whose points are real run dirs with results (the last point failed)."""
    sweep_dir = logs / "sweeps" / "s1"
    points = []
    for i, (x, y) in enumerate(values):
        run = logs / "merge" / "grid" / f"run{i}"
        run.mkdir(parents=True)
        (run / "config.yaml").write_text("name: grid\n")
        ok = i < len(values) - 1
        update_status(run, state="ok" if ok else "failed", phase="done" if ok else "failed")
        write_json(run / "result.json", {"status": "ok", "metrics": {metric: 100 - 10 * x + y}} if ok else
                   {"status": "failed", "error": "RuntimeError: boom"})
        points.append({"index": i, "overrides": [f"a={x}", f"b={y}"], "params": {"a": x, "b": y},
                       "label": f"a={x} b={y}", "kind": "merge", "run_dir": str(run.resolve()), "run_id": run.name,
                       "state": "pending", "skipped": None, "metrics": {}})
    sweep_dir.mkdir(parents=True)
    sweepfile.write_sweep(sweep_dir, {"sweep_id": "s1", "params": ["a", "b"], "metric": metric, "mode": None,
                                      "points": points})
    return sweep_dir


def test_report_ranks_best_first_and_writes_csv_and_heatmap(tmp_path: Path, capsys) -> None:
    grid = [(a, b) for a in (0.1, 0.5, 0.9) for b in (1.0, 2.0)]
    sweep_dir = _sweep(tmp_path / "logs", grid)
    assert report_main([str(sweep_dir)]) == 0
    out = capsys.readouterr().out
    assert "6 points (5 ok, 1 failed), best first by perplexity (lower is better)" in out
    rows = list(csv.DictReader((sweep_dir / "report.csv").open()))
    assert [r["index"] for r in rows] == ["4", "2", "3", "0", "1", "5"]  # lowest perplexity first, failed last
    assert rows[0]["perplexity"] == "92.0" and rows[-1]["state"] == "failed" and "boom" in rows[-1]["note"]
    png = sweep_dir / "report.png"
    assert png.read_bytes()[:4] == b"\x89PNG"
    data = sweepfile.read_sweep(sweep_dir)  # refreshed from the run dirs and written back
    assert [p["state"] for p in data["points"]] == ["ok"] * 5 + ["failed"]
    assert data["points"][0]["metrics"] == {"perplexity": 100.0}
    assert report_main([str(sweep_dir), "--mode", "max"]) == 0
    assert capsys.readouterr().out.count("best first by perplexity (higher is better)") == 1


def test_one_numeric_dimension_is_a_line_and_three_are_not_plotted(tmp_path: Path) -> None:
    sweep_dir = _sweep(tmp_path / "one", [(0.1, 1.0), (0.5, 1.0), (0.9, 1.0)])
    data = sweepfile.read_sweep(sweep_dir)
    data["params"] = ["a"]
    sweepfile.write_sweep(sweep_dir, data)
    assert "plot: " + str(sweep_dir / "report.png") in write_report(sweep_dir)
    data["params"] = ["a", "b", "c"]
    for p in data["points"]:
        p["params"]["c"] = p["index"]
    sweepfile.write_sweep(sweep_dir, data)
    (sweep_dir / "report.png").unlink()
    assert "plot: none (3 numeric swept parameters (a plot needs one or two))" in write_report(sweep_dir)
    assert not (sweep_dir / "report.png").exists()


def test_a_sweep_with_a_failed_point_ends_with_exit_1_naming_it(tmp_path: Path, capsys) -> None:
    from hpc_merge.sweep.launch import _finish

    sweep_dir = _sweep(tmp_path / "logs", [(0.1, 1.0), (0.5, 1.0)])
    data = sweepfile.refresh(sweep_dir, Reader(sweepfile.run_dirs(sweepfile.read_sweep(sweep_dir))))
    with pytest.raises(SystemExit) as exit_:
        _finish(sweep_dir, data)
    assert exit_.value.code == 1
    captured = capsys.readouterr()
    assert "best first by perplexity" in captured.out
    assert "point 1 (a=0.5 b=1.0): failed: RuntimeError: boom" in captured.err
    assert captured.err.strip().splitlines()[-1] == "1 of 2 points did not succeed"


def test_monitor_groups_a_sweeps_runs_under_one_heading(tmp_path: Path) -> None:
    logs = tmp_path / "logs"
    sweep_dir = _sweep(logs, [(0.1, 1.0), (0.5, 1.0)])
    lone = logs / "merge" / "other" / "x1"
    lone.mkdir(parents=True)
    update_status(lone, state="ok", phase="done")
    runs = Reader([logs]).snapshot()
    assert [r.sweep for r in runs] == [None, "s1", "s1"]
    text = plain_snapshot(runs, log_lines=0).splitlines()
    assert text[1].split()[1] == "merge/other/x1"
    assert text[2].startswith("── sweep s1: 2 runs (") and "1 ok" in text[2] and "1 failed" in text[2]
    assert sorted(ln.split()[1] for ln in text[3:5]) == ["merge/grid/run0", "merge/grid/run1"]
    only = Reader([sweep_dir]).snapshot()  # a sweep folder names its runs
    assert sorted(Path(r.run_dir).name for r in only) == ["run0", "run1"]


def test_sweep_report_of_a_folder_without_sweep_is_one_line(tmp_path: Path) -> None:
    proc = subprocess.run([sys.executable, "-m", "hpc_merge", "sweep-report", str(tmp_path)], capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1 and "sweep.json" in proc.stderr


def test_a_bad_point_refuses_the_sweep_before_anything_exists(tiny_pool, tmp_path: Path) -> None:
    logs = Path(os.environ["HPC_MERGE_LOGS"])
    proc = run_cli("-m", "models=tiny", "logger=none", "merge=della", "merge.models.0.parameters.density=0.5,0.85",
                   "merge.models.0.parameters.epsilon=0.2", cwd=tmp_path, timeout=300)
    assert proc.returncode == 2, proc.stdout[-2000:] + proc.stderr[-2000:]
    [line] = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert line.startswith("error: point 1 (merge.models.0.parameters.density=0.85): "  # the swept value
                           "merge.models[0].parameters.density: density 0.85 ± epsilon 0.2 leaves (0, 1) — fix: ")
    assert not logs.exists() or not [p for p in logs.rglob("*") if p.is_file()]  # no run dir, no sweep folder


def test_a_key_no_point_has_is_one_line_before_hydra_writes_anything(tmp_path: Path) -> None:
    logs = Path(os.environ["HPC_MERGE_LOGS"])
    proc = run_cli("-m", "models=tiny", "logger=none", "merge.densty=0.3,0.5", cwd=tmp_path, timeout=300)
    assert proc.returncode == 2, proc.stdout[-2000:] + proc.stderr[-2000:]
    [line] = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert line.startswith("error: every point of the sweep: merge.densty: not a field of the config — fix: ")
    assert not logs.exists() or not [p for p in logs.rglob("*") if p.is_file()]  # not even Hydra's multirun folder


@pytest.mark.parametrize("launcher", ["hpc_merge", "submitit_slurm"])
def test_both_launchers_compose(launcher: str) -> None:
    from hpc_merge.config import compose

    cfg = compose([f"hydra/launcher={launcher}"], return_hydra_config=True)
    assert cfg.hydra.launcher._target_.rsplit(".", 1)[-1] == {"hpc_merge": "HpcMergeLauncher",
                                                              "submitit_slurm": "SlurmLauncher"}[launcher]


def test_an_array_task_cancelled_while_packed_is_gone_and_reads_cancelled() -> None:
    """SLURM keeps no record of an array task cancelled while still packed in ``12_[1-3]``."""
    from hpc_merge.procs.slurmq import GONE, parse_sacct, resolve_missing
    from hpc_merge.run.state import classify

    acct = parse_sacct("12_0|COMPLETED\n")
    assert resolve_missing(["12_1"], {}, acct) == {"12_1": GONE}
    packed = parse_sacct("12_0|RUNNING\n12_[2-3]|PENDING\n")
    assert resolve_missing(["12_2"], packed, {}) == {}  # still packed in the queue (read from there): not gone
    assert resolve_missing(["12_1"], {}, parse_sacct("12_[1-3]|PENDING\n")) == {"12_1": "PENDING"}
    assert resolve_missing(["13_0"], {}, acct) == {}  # an array SLURM does not know yet: no verdict
    assert resolve_missing(["12_1"], None, {}) == {}  # squeue unreachable: no verdict
    state, reason = classify({"state": "pending"}, {}, GONE, True, now=0.0, stale_after=60, host="h")
    assert state == "cancelled" and "before it started" in reason
    assert classify({"state": "running"}, {}, GONE, True, now=0.0, stale_after=60, host="h")[0] == "dead"


def test_a_point_whose_run_dir_a_live_run_holds_is_followed_not_run(tmp_path: Path) -> None:
    from hpc_merge.run import lock as runlock
    from hpc_merge.sweep.record import lock_runs, release

    held = runlock.acquire(tmp_path / "busy")  # a live run (this process) holds that run dir
    try:
        points = [Point(0, ["x=0"], run_dir=tmp_path / "busy"), Point(1, ["x=1"], run_dir=tmp_path / "free")]
        data = {"points": [{"index": 0, "skipped": None}, {"index": 1, "skipped": None}]}
        kept = lock_runs(points, data)
        assert [p.index for p in kept] == [1] and (tmp_path / "free" / runlock.LOCK_FILE).exists()
        assert data["points"][0]["skipped"].startswith("already running: run dir ")
        release(kept)
        assert not (tmp_path / "free" / runlock.LOCK_FILE).exists()
    finally:
        held.release()
