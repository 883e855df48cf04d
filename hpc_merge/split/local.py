"""Run the missing parts of a split merge as local processes, all at once (``cluster=local``).

Each part is a fresh ``python -m hpc_merge.split.worker`` process (its own mergekit state, no
fork of a process that already holds torch threads), with its output in ``<parts>/<label>.log``.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from hpc_merge.atomic import write_json
from hpc_merge.split.plan import Part


def spec_for(config: dict[str, Any], options: dict[str, Any], part: Part, parts_root: Path, fp: str) -> dict[str, Any]:
    """What a worker needs to run ``part`` (JSON)."""
    return {"config": config, "options": options, "index": part.index, "count": part.count,
            "names": list(part.names), "read_bytes": part.read_bytes, "parts_root": str(parts_root),
            "fingerprint": fp}


def run_local(specs: dict[Part, dict[str, Any]], parts_root: Path,
              on_done: Callable[[Part, bool], None] | None = None,
              tick: Callable[[], None] | None = None, tick_s: float = 1.0) -> dict[str, str]:
    """Start one process per part, wait for all; ``{label: why it failed}`` for the failed ones.

    ``tick()`` is called every ``tick_s`` seconds while parts run (the caller folds their progress
    files into the run's status).
    """
    procs: dict[Part, tuple[subprocess.Popen, Path, Any]] = {}
    try:
        for part, spec in specs.items():
            spec_path = parts_root / f"{part.label}.spec.json"
            write_json(spec_path, spec)
            log_path = parts_root / f"{part.label}.log"
            log = open(log_path, "w")  # noqa: SIM115 (closed when the process ends)
            proc = subprocess.Popen([sys.executable, "-m", "hpc_merge.split.worker", str(spec_path)],
                                    stdout=log, stderr=subprocess.STDOUT, env=_worker_env(len(specs)))
            procs[part] = (proc, log_path, log)
        failed: dict[str, str] = {}
        pending = dict(procs)
        last_tick = time.monotonic()
        while pending:
            if tick is not None and time.monotonic() - last_tick >= tick_s:
                last_tick = time.monotonic()
                tick()
            for part, (proc, log_path, log) in list(pending.items()):
                code = proc.poll()
                if code is None:
                    continue
                log.close()
                del pending[part]
                if code != 0:
                    failed[part.label] = f"exit code {code}: {_last_line(log_path)} (log: {log_path})"
                if on_done is not None:
                    on_done(part, code == 0)
            time.sleep(0.05)
        return failed
    finally:
        for proc, _path, log in procs.values():
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            log.close()


def _worker_env(n_workers: int) -> dict[str, str]:
    """The workers' environment: the cores shared out (``OMP_NUM_THREADS``, unless the user set it).

    Without it each of N workers starts torch with one thread per core, N times too many threads
    for the cores there are, and they slow each other down.
    """
    env = dict(os.environ)
    if "OMP_NUM_THREADS" not in env:
        env["OMP_NUM_THREADS"] = str(max(1, len(os.sched_getaffinity(0)) // max(n_workers, 1)))
    return env


def _last_line(path: Path) -> str:
    lines = [line for line in path.read_text(errors="replace").splitlines() if line.strip()]
    return lines[-1].strip() if lines else "no output"

