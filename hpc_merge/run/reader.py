"""Read run dirs and SLURM into one snapshot per run, with a state the user can trust.

Only reads files (``status.json``, ``result.json``, logs) and asks SLURM; it never imports torch
or mergekit, so the monitor starts in a fraction of a second on a login node that sees the
shared file system. The state rules are :mod:`hpc_merge.run.state`'s. Sweeps use this reader on
their points' run dirs; the monitor's :class:`hpc_merge.monitor.reader.Reader` adds sweep groups.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from hpc_merge.procs import slurmq
from hpc_merge.run.files import RESULT_FILE, RUN_MARKERS, STATUS_FILE, discover, read_json
from hpc_merge.run.logs import slurm_job_id
from hpc_merge.run.state import (
    DEFAULT_STALE_AFTER_S,
    ENDED_STATES,
    classify,
    history_of,
    num,
    progress_of,
)

__all__ = ["Reader", "RunInfo"]

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
        """``({run_dir: sweep_id}, run dirs of the sweeps named as roots)``: none here (a plain set of
        run dirs); the monitor's reader groups runs by sweep."""
        return {}, []

    def is_sweep_dir(self, root: Path) -> bool:
        """Whether ``root`` names a sweep (read through its record, not searched): never here."""
        return False

    def snapshot(self) -> list[RunInfo]:
        """One :class:`RunInfo` per run dir: runs of no sweep first, then each sweep's runs
        together; within a group the most recently active first."""
        members, named = self.sweeps()
        roots = [r for r in self.roots if not self.is_sweep_dir(r)]
        runs = []
        for run_dir in discover([*roots, *named]):
            status = read_json(run_dir / STATUS_FILE)
            result = read_json(run_dir / RESULT_FILE)
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
            throughput_mb_s=num(status.get("throughput_mb_s")), bytes_read=num(status.get("bytes_read")),
            bytes_written=num(status.get("bytes_written")), eta_s=num(status.get("eta_s")),
            started_at=num(status.get("started_at")), updated_at=num(status.get("updated_at")) or created,
            host=status.get("host"), pid=pid if isinstance(pid, int) else None, slurm_job_id=job_id,
            slurm_state=slurm_state or status.get("slurm_state"),
            generation=status.get("generation") if isinstance(status.get("generation"), int) else None,
            best_fitness=num(status.get("best_fitness")), mean_fitness=num(status.get("mean_fitness")),
            sigma=num(status.get("sigma")), error=result.get("error") or status.get("error"),
            history=history_of(status), status=status,
        )
