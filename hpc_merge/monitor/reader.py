"""The monitor's reader: run dir snapshots (:mod:`hpc_merge.run.reader`) grouped by sweep.

A root may be a sweep folder (``logs/sweeps/<id>``: its points' run dirs are read) and a logs
folder's sweeps (``<root>/sweeps/``) say which runs belong together; the monitor shows each
sweep's runs under one heading.
"""

from __future__ import annotations

from pathlib import Path

from hpc_merge.run import reader
from hpc_merge.run.reader import RunInfo
from hpc_merge.run.state import DEFAULT_STALE_AFTER_S, STATES
from hpc_merge.sweep import sweepfile

__all__ = ["DEFAULT_STALE_AFTER_S", "STATES", "Reader", "RunInfo"]


class Reader(reader.Reader):
    """:class:`hpc_merge.run.reader.Reader` that knows sweeps."""

    def is_sweep_dir(self, root: Path) -> bool:
        """A sweep folder holds a ``sweep.json``."""
        return sweepfile.is_sweep_dir(root)

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
