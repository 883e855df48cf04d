"""Run one command as a child process and measure it: wall time, its own peak RSS, first read.

``resource.getrusage(RUSAGE_CHILDREN)`` is a running maximum over every child ever waited for,
so it cannot tell two runs apart. ``os.wait4`` on our own child is not enough either: Linux
carries the RSS high-water mark across fork + exec, so a child of this (torch-loaded) process
reports at least this process's RSS — ``python -c pass`` showed 620 MB. The command therefore
runs under ``/usr/bin/time -f %M``, a small process whose own child starts clean, and its
figure (the peak of the command and its waited-for descendants) is read from a file.
Commands are interleaved across repetitions (A B C A B C ...) so drift in the machine's load
hits every command alike.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PY = sys.executable  # the environment that runs the bench runs every command (not a fixed .venv)
PROBE = str(ROOT / "bench" / "probe.py")
TIME = "/usr/bin/time"


@dataclass
class Cmd:
    """One command line, extra environment, and paths to delete after each run (its outputs)."""

    argv: list[str]
    env: dict[str, str] = field(default_factory=dict)
    cleanup: list[Path] = field(default_factory=list)
    probe: bool = False  # run under bench/probe.py to timestamp the first tensor read


@dataclass
class Sample:
    """What one run of a command cost."""

    wall_s: float
    peak_rss_mb: float
    first_read_s: float | None = None  # from command start to the first tensor read (probe only)
    cpu_s: float | None = None  # user + system CPU seconds of the command (less load-sensitive than wall)
    ready_s: float | None = None  # from command start to the probe's first line (interpreter up)


def base_env() -> dict[str, str]:
    """The environment every benchmarked command gets: offline, quiet, no W&B, same threads."""
    env = dict(os.environ)
    env.update(HF_HUB_OFFLINE="1", TRANSFORMERS_VERBOSITY="error", HF_HUB_DISABLE_PROGRESS_BARS="1",
               WANDB_MODE="disabled", PYTHONHASHSEED="0", TOKENIZERS_PARALLELISM="false")
    return env


def run_once(cmd: Cmd, cwd: Path = ROOT) -> Sample:
    """Run ``cmd`` to completion; raise with its output tail if it fails."""
    env = {**base_env(), **cmd.env}
    argv = list(cmd.argv)
    marks = None
    if cmd.probe:
        fd, marks = tempfile.mkstemp(prefix="bench-probe-")
        os.close(fd)
        env["BENCH_PROBE_OUT"] = marks
        argv = [PY, PROBE, *argv]
    fd, rss_file = tempfile.mkstemp(prefix="bench-rss-")
    os.close(fd)
    with tempfile.TemporaryFile() as log:
        t0 = time.time()
        rc = subprocess.call([TIME, "-f", "%U %S %M", "-o", rss_file, *argv], cwd=cwd, env=env, stdout=log,
                             stderr=subprocess.STDOUT)
        wall = time.time() - t0
        if rc != 0:
            log.seek(0)
            tail = log.read().decode(errors="replace")[-3000:]
            raise RuntimeError(f"command failed ({rc}): {' '.join(argv)}\n{tail}")
    user, system, peak_kb = Path(rss_file).read_text().split()[-3:]
    os.unlink(rss_file)
    sample = Sample(wall_s=wall, peak_rss_mb=int(peak_kb) / 1024, cpu_s=float(user) + float(system))
    if marks:
        stamps = dict(line.split() for line in Path(marks).read_text().splitlines() if line.strip())
        os.unlink(marks)
        if "first_read" in stamps:
            sample.first_read_s = float(stamps["first_read"]) - t0
        if "start" in stamps:
            sample.ready_s = float(stamps["start"]) - t0
    for path in cmd.cleanup:
        shutil.rmtree(path, ignore_errors=True)
    return sample


def interleaved(commands: dict[str, Callable[[int], Cmd]], reps: int,
                log: Callable[[str], None] = print) -> dict[str, list[Sample]]:
    """Run every command ``reps`` times, interleaved; ``commands[name](rep)`` builds the command."""
    out: dict[str, list[Sample]] = {name: [] for name in commands}
    for rep in range(reps):
        for name, make in commands.items():
            s = run_once(make(rep))
            out[name].append(s)
            extra = f", first read {s.first_read_s:.2f} s" if s.first_read_s is not None else ""
            log(f"    {name} #{rep + 1}: {s.wall_s:.2f} s, peak {s.peak_rss_mb:.0f} MB{extra}")
    return out


def warm_cache(paths: Sequence[Path]) -> None:
    """Read files once so every command finds them in the page cache (no first-run penalty)."""
    for root in paths:
        for f in sorted(Path(root).rglob("*")) if Path(root).is_dir() else [Path(root)]:
            if f.is_file():
                with open(f, "rb") as fh:
                    while fh.read(1 << 24):
                        pass


def load_average() -> str:
    """The 1/5/15-minute load average (the machine's noise at the time of the run)."""
    return " / ".join(f"{x:.1f}" for x in os.getloadavg())
