"""What a newcomer sees: the demo (on the test zoo, for speed) on a terminal and in a log file.

Both forms must show progress for every phase, no mergekit/transformers log line and no library
tqdm bar at default verbosity, and end with a short summary whose last line is ``run_dir: PATH``.
The terminal form runs under a real pseudo-terminal (bars); the other with pipes (timestamped
lines, what SLURM logs get).
"""

from __future__ import annotations

import os
import pty
import re
import select
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

#: The demo preset on the test zoo, 8 prompts per skill: the output's form is under test, not the
#: figures (the full zoo takes minutes to train and its evaluation minutes to run).
DEMO = ["+experiment=demo", "models=zoo_test", "eval.size=test", "eval.limit=8", "logger=none"]
ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")
PLAIN_PROGRESS = re.compile(r"^\[\d\d:\d\d:\d\d\] ")
#: mergekit / transformers log records (Hydra's format, or logging's default) and library tqdm bars
CHATTER = re.compile(r"\[(mergekit|transformers|matplotlib)[.\]]|^(INFO|WARNING):(mergekit|transformers)|it/s\]")
PHASES = ("merging", "smoke test", "evaluating")
#: Generous: a shared 2-core machine under load took minutes per run (see the README).
TIMEOUT_S = 900


def _env(tmp_path: Path) -> dict[str, str]:
    env = {**os.environ, "HPC_MERGE_LOGS": str(tmp_path / "logs"), "TERM": "xterm", "COLUMNS": "120"}
    for key in ("TQDM_DISABLE", "TRANSFORMERS_VERBOSITY", "HF_HUB_DISABLE_PROGRESS_BARS", "HPC_MERGE_PROGRESS"):
        env.pop(key, None)  # the CLI must quiet the libraries itself (conftest sets some of these)
    return env


def _run_in_pty(args: list[str], env: dict[str, str], cwd: Path, timeout: float = TIMEOUT_S) -> tuple[int, str]:
    """Run ``python -m hpc_merge ARGS`` with stdin/stdout/stderr on a pseudo-terminal; (rc, output)."""
    master, slave = pty.openpty()
    proc = subprocess.Popen([sys.executable, "-m", "hpc_merge", *args], stdin=slave, stdout=slave, stderr=slave,
                            env=env, cwd=cwd, close_fds=True)
    os.close(slave)
    chunks, deadline = [], time.monotonic() + timeout
    while True:
        ready, _, _ = select.select([master], [], [], max(0.0, deadline - time.monotonic()))
        if not ready:  # past the deadline: stop it and show what it printed
            proc.kill()
            proc.wait()
            os.close(master)
            pytest.fail(f"no exit after {timeout} s; output so far:\n" + b"".join(chunks).decode("utf-8", "replace")[-3000:])
        try:
            data = os.read(master, 65536)
        except OSError:  # EIO: the child closed the terminal (it exited)
            break
        if not data:
            break
        chunks.append(data)
    os.close(master)
    return proc.wait(timeout=60), b"".join(chunks).decode("utf-8", "replace")


def _screen_lines(raw: str) -> list[str]:
    """The lines as they stay on screen: escape codes dropped, each line's last carriage-return rewrite."""
    out = []
    for line in ANSI.sub("", raw).replace("\r\n", "\n").split("\n"):
        out.append(line.split("\r")[-1].rstrip())
    return out


def _check_end(lines: list[str], is_progress, output: str) -> Path:
    lines = [ln for ln in lines if ln.strip()]
    last_progress = max(i for i, ln in enumerate(lines) if is_progress(ln))
    after = lines[last_progress + 1:]
    assert len(after) <= 40, f"{len(after)} lines after the last progress line:\n" + "\n".join(after)
    assert after and after[-1].startswith("run_dir: "), output[-3000:]
    assert any(ln.startswith("done: merged 5 models with task_arithmetic") for ln in after), "\n".join(after)
    assert any(ln.startswith("| merged | merged |") for ln in after), "\n".join(after)  # the report table
    assert any(ln.startswith("output: ") and "loads with transformers: ok" in ln for ln in after), "\n".join(after)
    assert not any(ln.lstrip().startswith(("{", '"metrics"')) for ln in after), "JSON dump in the summary"
    run_dir = Path(after[-1].removeprefix("run_dir: "))
    assert (run_dir / "result.json").is_file()
    return run_dir


def test_demo_on_a_terminal_shows_bars_then_a_short_summary(test_zoo, tmp_path: Path) -> None:
    rc, raw = _run_in_pty(DEMO, _env(tmp_path), tmp_path)
    assert rc == 0, raw[-3000:]
    lines = _screen_lines(raw)
    bars = [ln for ln in lines if "━" in ln]
    for phase in PHASES:
        assert any(phase in ln for ln in bars), f"no bar for {phase!r}:\n" + "\n".join(lines[-60:])
    chatter = [ln for ln in lines if CHATTER.search(ln)]
    assert not chatter, chatter[:5]
    _check_end(lines, lambda ln: "━" in ln, raw)


def test_demo_in_a_log_shows_timestamped_lines_then_a_short_summary(test_zoo, tmp_path: Path) -> None:
    proc = subprocess.run([sys.executable, "-m", "hpc_merge", *DEMO], stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True, env=_env(tmp_path), cwd=tmp_path, timeout=TIMEOUT_S)
    assert proc.returncode == 0, proc.stdout[-3000:]
    lines = proc.stdout.splitlines()
    assert not any("\x1b[" in ln for ln in lines), "control codes in a log file"
    progress = [ln for ln in lines if PLAIN_PROGRESS.match(ln)]
    for phase in PHASES:
        assert any(f"] {phase}" in ln and "started" in ln for ln in progress), f"no start line for {phase!r}"
        assert any(f"] {phase}" in ln and "done in" in ln for ln in progress), f"no end line for {phase!r}"
    chatter = [ln for ln in lines if CHATTER.search(ln)]
    assert not chatter, chatter[:5]
    run_dir = _check_end(lines, PLAIN_PROGRESS.match, proc.stdout)
    log = (run_dir / "job.log").read_text()
    assert "] evaluating: " in log and "\x1b[" not in log  # the monitor's log panel gets the plain lines


def test_hydra_verbose_shows_library_logs(tiny_pool, tmp_path: Path) -> None:
    """The switch that brings the chatter back is Hydra's own: hydra.verbose=mergekit."""
    args = ["models=tiny", "merge=linear", "logger=none", "job.smoke.enabled=false"]
    quiet = subprocess.run([sys.executable, "-m", "hpc_merge", *args], capture_output=True, text=True,
                           env=_env(tmp_path), cwd=tmp_path, timeout=TIMEOUT_S)
    loud = subprocess.run([sys.executable, "-m", "hpc_merge", *args, "hydra.verbose=mergekit", "force=true"],
                          capture_output=True, text=True, env=_env(tmp_path), cwd=tmp_path, timeout=TIMEOUT_S)
    assert quiet.returncode == 0 and loud.returncode == 0, quiet.stderr[-2000:] + loud.stderr[-2000:]
    assert not CHATTER.search(quiet.stdout + quiet.stderr)
    assert "[mergekit.merge][INFO]" in loud.stderr
