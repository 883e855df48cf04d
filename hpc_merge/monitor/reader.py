"""Read run dirs and SLURM into one snapshot per run, with a state the user can trust.

Only reads files (``status.json``, ``result.json``, logs) and asks SLURM; it never imports torch
or mergekit, so the monitor starts in a fraction of a second on a login node that sees the
shared file system.

The state rules, in order (first match wins):

1. ``result.json`` says ok -> ``ok``; SLURM says CANCELLED -> ``cancelled``; ``result.json`` or
   the status file says failed -> ``failed``; the status file says ok -> ``ok``.
2. A SLURM job that is waiting -> ``pending``; running -> ``running``; ended (FAILED, TIMEOUT,
   NODE_FAIL, OUT_OF_MEMORY, ... or gone from the queue) while the status file still says
   running -> ``dead``: the job died without a last word.
3. A local job (no SLURM id) whose pid is gone on this host -> ``dead``.
4. Otherwise a heartbeat (``updated_at``) older than ``stale_after`` -> ``dead``, because nothing
   else can be checked from here (another host, SLURM unreachable).
"""

from __future__ import annotations

import json
import os
import re
import socket
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from hpc_merge.monitor import slurmq
from hpc_merge.sweep import sweepfile

STATES = ("pending", "running", "ok", "failed", "cancelled", "dead")
ENDED_STATES = frozenset({"ok", "failed", "cancelled", "dead"})
RUN_MARKERS = ("status.json", "config.yaml", "result.json")
#: Folders under ``logs/`` that hold Hydra's own outputs, or sweep folders (read through their
#: ``sweep.json``), not run dirs.
NOT_RUNS = frozenset({"hydra", "multirun", ".hydra", "sweeps"})
DEFAULT_STALE_AFTER_S = 15 * 60
_SUBMITIT_ID = re.compile(r"^(\d+(?:_\d+)?)_(?:submitted\.pkl|\d+_log\.(?:out|err)|\d+_result\.pkl)$")

SlurmQuery = Callable[[Iterable[str]], "dict[str, str] | None"]


@dataclass
class RunInfo:
    """What the monitor knows about one run; ``to_json`` is the ``--json`` row."""

    run_dir: str
    kind: str | None
    name: str | None
    run_id: str
    state: str
    reason: str = ""
    phase: str | None = None
    progress: float | None = None
    throughput_mb_s: float | None = None
    bytes_read: float | None = None
    bytes_written: float | None = None
    eta_s: float | None = None
    started_at: float | None = None
    updated_at: float | None = None
    host: str | None = None
    pid: int | None = None
    slurm_job_id: str | None = None
    slurm_state: str | None = None
    generation: int | None = None
    best_fitness: float | None = None
    mean_fitness: float | None = None
    sigma: float | None = None
    error: str | None = None
    history: list[dict[str, Any]] = field(default_factory=list)
    status: dict[str, Any] = field(default_factory=dict)
    sweep: str | None = None  # the sweep (``logs/sweeps/<sweep_id>``) the run is a point of

    @property
    def ended(self) -> bool:
        """True once the run will not change any more."""
        return self.state in ENDED_STATES

    def to_json(self) -> dict[str, Any]:
        """JSON-ready dict (the raw status file is kept under ``status``)."""
        return asdict(self)


def _read_json(path: Path) -> dict[str, Any]:
    """A JSON object from ``path``; ``{}`` if missing, half-written or not an object."""
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _num(value: Any) -> float | None:
    """``value`` as a float, or ``None`` (status files are written by several hands)."""
    if isinstance(value, bool) or value is None:
        return None
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def is_run_dir(path: Path) -> bool:
    """A run dir holds a status file, a composed config or a result."""
    return any((path / m).is_file() for m in RUN_MARKERS)


def discover(roots: Iterable[str | Path]) -> list[Path]:
    """Run dirs named by ``roots``: each root is a run dir, or a folder searched for run dirs.

    Under a logs folder the layout is ``<kind>/<name>/<run_id>``; searching by markers instead of
    depth also finds runs in folders laid out by hand. A run's own subfolders (``model/``,
    ``slurm/``) are not searched: that keeps a walk over big logs folders cheap.
    """
    found: dict[Path, None] = {}
    for root in map(Path, roots):
        for top, dirs, files in os.walk(root):
            if any(m in files for m in RUN_MARKERS):
                found[Path(top).resolve()] = None
                dirs.clear()
            else:
                dirs[:] = sorted(d for d in dirs if d not in NOT_RUNS)
    return list(found)


def _pid_alive(pid: int, since: float | None) -> bool:
    """Whether ``pid`` still runs here and is the process that wrote the status at ``since``.

    A pid can be reused after the job died; a process that started after the last status
    update cannot be its writer (checked through ``/proc`` where there is one).
    """
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    except OSError:
        return False
    if since is None:
        return True
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        fields = stat[stat.rindex(")") + 2:].split()
        if fields[0] == "Z":  # zombie: exited, not yet reaped by its parent
            return False
        start_ticks = int(fields[19])
        btime = next(int(line.split()[1]) for line in Path("/proc/stat").read_text().splitlines()
                     if line.startswith("btime"))
        started = btime + start_ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError, StopIteration):
        return True
    return started <= since + 2  # btime has 1 s resolution


def slurm_job_id(run_dir: Path, status: dict[str, Any]) -> str | None:
    """The run's SLURM job id: from the status file, else from submitit's files in ``slurm/``."""
    job_id = status.get("slurm_job_id")
    if job_id not in (None, ""):
        return str(job_id)
    folder = run_dir / "slurm"
    if not folder.is_dir():
        return None
    hits = [(p.stat().st_mtime, m.group(1)) for p in folder.rglob("*") if (m := _SUBMITIT_ID.match(p.name))]
    return max(hits)[1] if hits else None


def progress_of(status: dict[str, Any]) -> float | None:
    """Fraction done in [0, 1]: merge tasks, else evolution generations or evaluations."""
    for done, total in (("tasks_done", "tasks_total"), ("generation", "generations_total"),
                        ("evaluations", "evaluations_total")):
        d, t = _num(status.get(done)), _num(status.get(total))
        if d is not None and t:
            return max(0.0, min(1.0, d / t))
    return None


def history_of(status: dict[str, Any]) -> list[dict[str, Any]]:
    """Per-generation ``{generation, best, mean, sigma}`` rows (malformed rows dropped)."""
    rows = status.get("history")
    return [r for r in rows if isinstance(r, dict)] if isinstance(rows, list) else []


def classify(status: dict[str, Any], result: dict[str, Any], slurm_state: str | None,
             has_slurm: bool, *, now: float, stale_after: float, host: str,
             created_at: float | None = None) -> tuple[str, str]:
    """``(state, reason)`` of a run from its files and SLURM's word (see the module docstring).

    ``has_slurm`` says the run is a SLURM job; ``slurm_state`` is ``None`` when SLURM could not
    be asked (or did not know the job).
    """
    written = str(status.get("state") or "").lower()
    res = str(result.get("status") or "").lower()
    if res == "ok":
        return "ok", "result.json"
    if slurm_state == "CANCELLED":
        return "cancelled", "SLURM: CANCELLED"
    if str(result.get("error") or status.get("error") or "").startswith("KeyboardInterrupt"):
        return "cancelled", "interrupted (Ctrl-C)"
    if res == "failed" or written == "failed":
        return "failed", str(result.get("error") or status.get("error") or "")
    if written in ("ok", "cancelled"):
        return written, "status.json"
    if has_slurm and slurm_state:
        if slurm_state in slurmq.WAITING:
            return "pending", f"SLURM: {slurm_state}"
        if slurm_state == slurmq.GONE and written in ("pending", "submitted"):  # never started
            return "cancelled", "SLURM: left the queue before it started (cancelled)"
        if slurm_state in slurmq.ENDED or slurm_state == slurmq.GONE:
            what = "left the queue" if slurm_state == slurmq.GONE else f"ended {slurm_state}"
            return "dead", f"SLURM job {what} without a final status"
        return "running", f"SLURM: {slurm_state}"
    if written in ("pending", "submitted"):
        return "pending", "submitted (SLURM not asked)" if has_slurm else "submitted"
    updated = _num(status.get("updated_at"))
    pid = status.get("pid")
    if not has_slurm and isinstance(pid, int) and status.get("host") == host and not _pid_alive(pid, updated):
        return "dead", f"pid {pid} is gone on {host}"
    last = updated if updated is not None else created_at
    if last is not None and now - last > stale_after:
        return "dead", f"no heartbeat for {int(now - last)} s"
    if not status:
        return "pending", "no status yet"
    return "running", ""


def tail(path: Path, lines: int = 10, max_bytes: int = 64 * 1024) -> list[str]:
    """The last ``lines`` lines of a text file (reads at most ``max_bytes`` from its end)."""
    try:
        with path.open("rb") as fh:
            fh.seek(0, os.SEEK_END)
            size = fh.tell()
            fh.seek(max(0, size - max_bytes))
            data = fh.read().decode("utf-8", "replace")
    except OSError:
        return []
    # progress bars redraw with \r: keep what a terminal would show
    return [ln.rsplit("\r", 1)[-1] for ln in data.splitlines()][-lines:]


def log_files(run_dir: Path) -> list[Path]:
    """The run's log files, newest first: submitit's logs under ``slurm/``, then ``*.log``."""
    candidates = [p for p in (run_dir / "slurm").rglob("*") if p.suffix in (".out", ".err", ".log")] \
        if (run_dir / "slurm").is_dir() else []
    candidates += [p for p in run_dir.glob("*.log")]
    return sorted((p for p in candidates if p.is_file()), key=lambda p: p.stat().st_mtime, reverse=True)


def last_log_lines(run_dir: str | Path, lines: int = 10) -> list[str]:
    """Recent log lines of a run (its newest log file; a failure's traceback if no log)."""
    run_dir = Path(run_dir)
    for path in log_files(run_dir):
        got = [ln for ln in tail(path, lines) if ln.strip()]
        if got:
            return [f"==> {path.relative_to(run_dir)} <=="] + got
    trace = _read_json(run_dir / "result.json").get("traceback")
    return str(trace).splitlines()[-lines:] if trace else []


class Reader:
    """Snapshots of a set of run dirs; SLURM is asked at most every ``slurm_every`` seconds.

    ``limit`` keeps the ``limit`` most relevant runs (active first, then most recent): old runs
    pile up under ``logs/``.
    """

    def __init__(self, roots: Iterable[str | Path], *, stale_after: float = DEFAULT_STALE_AFTER_S,
                 slurm_every: float = 5.0, query: SlurmQuery = slurmq.query_states, limit: int | None = None):
        self.roots = [Path(r) for r in roots]
        self.limit = limit
        self.stale_after = stale_after
        self.slurm_every = slurm_every
        self.query = query
        self._slurm: dict[str, str] = {}
        self._slurm_ok = False
        self._slurm_at = -float("inf")
        self._slurm_ids: frozenset[str] = frozenset()

    def _slurm_states(self, ids: set[str]) -> dict[str, str] | None:
        """Cached SLURM states; asks again when due or when new job ids appear."""
        if not ids:
            return {}
        now = time.monotonic()
        if now - self._slurm_at >= self.slurm_every or not ids <= self._slurm_ids:
            got = self.query(ids)
            self._slurm_ok, self._slurm = got is not None, got or {}
            self._slurm_at, self._slurm_ids = now, frozenset(ids)
        return self._slurm if self._slurm_ok else None

    def sweeps(self) -> tuple[dict[str, str], list[str]]:
        """``({run_dir: sweep_id}, run dirs of the sweeps named as roots)`` for the sweeps named by
        the roots or kept in ``<root>/sweeps/`` (a run that several sweeps share belongs to the newest)."""
        members: dict[str, str] = {}
        named: list[str] = []
        direct = {Path(r).resolve() for r in self.roots if sweepfile.is_sweep_dir(r)}
        for folder in sorted(sweepfile.sweeps_under(self.roots), key=lambda p: p.name):
            try:
                data = sweepfile.read_sweep(folder)
            except (OSError, ValueError):
                continue
            dirs = [str(Path(d).resolve()) for d in sweepfile.run_dirs(data)]
            members.update(dict.fromkeys(dirs, str(data.get("sweep_id") or folder.name)))
            if folder in direct:
                named += dirs
        return members, named

    def snapshot(self) -> list[RunInfo]:
        """One :class:`RunInfo` per run dir: runs of no sweep first, then each sweep's runs
        together; within a group the most recently active first."""
        members, named = self.sweeps()
        roots = [r for r in self.roots if not sweepfile.is_sweep_dir(r)]
        runs = []
        for run_dir in discover([*roots, *named]):
            status = _read_json(run_dir / "status.json")
            result = _read_json(run_dir / "result.json")
            runs.append((run_dir, status, result, slurm_job_id(run_dir, status)))
        states = self._slurm_states({j for *_, j in runs if j}) or {}
        asked = self._slurm_ok
        host, now = socket.gethostname(), time.time()
        infos = [self._info(d, s, r, j, states.get(j) if j and asked else None, host, now)
                 for d, s, r, j in runs]
        for info in infos:
            info.sweep = members.get(info.run_dir)
        kept = sorted(infos, key=lambda i: (i.ended, -(i.updated_at or 0.0), i.run_dir))[: self.limit]
        order = {sweep: n for n, sweep in enumerate(dict.fromkeys(i.sweep for i in kept if i.sweep))}
        return sorted(kept, key=lambda i: -1 if i.sweep is None else order[i.sweep])  # stable: groups keep their order

    def _info(self, run_dir: Path, status: dict[str, Any], result: dict[str, Any], job_id: str | None,
              slurm_state: str | None, host: str, now: float) -> RunInfo:
        created = None
        for marker in RUN_MARKERS:
            try:
                created = (run_dir / marker).stat().st_mtime
                break
            except OSError:
                continue
        state, reason = classify(status, result, slurm_state, job_id is not None, now=now,
                                 stale_after=self.stale_after, host=host, created_at=created)
        parts = run_dir.parts
        kind = status.get("kind") or result.get("kind") or (parts[-3] if len(parts) >= 3 else None)
        pid = status.get("pid")
        return RunInfo(
            run_dir=str(run_dir), kind=kind, name=parts[-2] if len(parts) >= 2 else None,
            run_id=run_dir.name, state=state, reason=reason, phase=status.get("phase"),
            progress=1.0 if state == "ok" else progress_of(status),
            throughput_mb_s=_num(status.get("throughput_mb_s")), bytes_read=_num(status.get("bytes_read")),
            bytes_written=_num(status.get("bytes_written")), eta_s=_num(status.get("eta_s")),
            started_at=_num(status.get("started_at")), updated_at=_num(status.get("updated_at")) or created,
            host=status.get("host"), pid=pid if isinstance(pid, int) else None, slurm_job_id=job_id,
            slurm_state=slurm_state or status.get("slurm_state"),
            generation=status.get("generation") if isinstance(status.get("generation"), int) else None,
            best_fitness=_num(status.get("best_fitness")), mean_fitness=_num(status.get("mean_fitness")),
            sigma=_num(status.get("sigma")), error=result.get("error") or status.get("error"),
            history=history_of(status), status=status,
        )
