"""What every benchmark gets from ``run.py``: the size mode, repetitions, a scratch folder, a log."""

from __future__ import annotations

import shutil
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.inputs import CACHE


@dataclass
class Context:
    """Run-wide settings; ``quick`` selects the small shapes, ``reps`` the repetitions per command."""

    quick: bool
    reps: int
    work: Path = CACHE / "work"
    notes: list[str] = field(default_factory=list)  # machine-level remarks for the results header
    shared: dict[str, Any] = field(default_factory=dict)  # results one benchmark lends another

    def log(self, msg: str) -> None:
        """Progress on stderr (stdout carries the tables)."""
        print(msg, file=sys.stderr, flush=True)

    def scratch(self, name: str) -> Path:
        """An empty folder under the work dir for one benchmark's outputs."""
        path = self.work / name
        shutil.rmtree(path, ignore_errors=True)
        path.mkdir(parents=True)
        return path
