"""Run one command as a child process and measure it: wall time, its own peak RSS, first read.

``resource.getrusage(RUSAGE_CHILDREN)`` is a running maximum over every child ever waited for,
so it cannot tell two runs apart; ``os.wait4`` returns the rusage of exactly the child it reaps
(on Linux including that child's own waited-for descendants), which is what a per-run peak needs.
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
PY = str(ROOT / ".venv" / "bin" / "python") if (ROOT / ".venv" / "bin" / "python").exists() else sys.executable
PROBE = str(ROOT / "bench" / "probe.py")


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
    with tempfile.TemporaryFile() as log:
        t0 = time.time()
        proc = subprocess.Popen(argv, cwd=cwd, env=env, stdout=log, stderr=subprocess.STDOUT)
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.time() - t0
        proc.returncode = os.waitstatus_to_exitcode(status)
        if proc.returncode != 0:
            log.seek(0)
            tail = log.read().decode(errors="replace")[-3000:]
            raise RuntimeError(f"command failed ({proc.returncode}): {' '.join(argv)}\n{tail}")
    sample = Sample(wall_s=wall, peak_rss_mb=usage.ru_maxrss / 1024)
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
