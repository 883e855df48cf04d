"""The whole search state, written atomically after every generation so any run can resume.

One pickle holds the CMA-ES object, numpy's global RNG (cma draws its samples from it), every
candidate with its scores, the per-generation history and the result cache. It is written to a
temp file beside ``state.pkl`` and renamed over it: a kill at any moment leaves either the
previous generation's state or this one's, never a torn file.
"""

from __future__ import annotations

import pickle
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hpc_merge.atomic import write_bytes

STATE_FILE = "state.pkl"
VERSION = 1


@dataclass
class EvolutionState:
    """Everything needed to continue a search exactly where it stopped."""

    fingerprint: str  # hash of the search settings; a resume with other settings is refused
    es: Any  # cma.CMAEvolutionStrategy
    rng: Any  # numpy.random.get_state()
    generation: int = 0  # completed generations
    candidates: list[dict[str, Any]] = field(default_factory=list)
    history: list[dict[str, Any]] = field(default_factory=list)
    cache: dict[str, dict[str, Any]] = field(default_factory=dict)
    elapsed_s: float = 0.0  # search time summed over sessions (the wall-time budget)
    version: int = VERSION

    @property
    def evaluations(self) -> int:
        """Distinct candidates the search has scored (cache hits on earlier ones do not count)."""
        return len({c["key"] for c in self.candidates})


def save_state(run_dir: str | Path, state: EvolutionState) -> Path:
    """Pickle ``state`` to ``run_dir/state.pkl`` atomically and durably (temp file + fsync + rename)."""
    path = Path(run_dir) / STATE_FILE
    write_bytes(path, pickle.dumps(state, protocol=pickle.HIGHEST_PROTOCOL), durable=True)
    return path


def load_state(run_dir: str | Path) -> EvolutionState | None:
    """The saved state, or None when there is none yet."""
    path = Path(run_dir) / STATE_FILE
    if not path.is_file():
        return None
    with open(path, "rb") as fh:
        state = pickle.load(fh)
    if getattr(state, "version", None) != VERSION:
        raise RuntimeError(f"{path} was written by another version of hpc_merge's evolution; "
                           "move it away to start over")
    return state
