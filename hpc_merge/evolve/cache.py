"""Never evaluate the same candidate twice: results keyed by the hash of the candidate's merge recipe.

The key is taken over the recipe a candidate merges (rounded values, model references, method),
not over the genotype, so two genotypes that decode to the same merge share one evaluation. Every
result (failures included: a failed merge fails again, and a resumed search must see exactly what
the first run saw) is appended to ``cache.jsonl`` as soon as it arrives, so a search killed in the
middle of a generation redoes only the candidates that had not finished.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

#: Recipe keys that do not change the merged weights.
NOT_IN_KEY = ("name",)


def candidate_key(recipe: dict[str, Any]) -> str:
    """16-hex-digit hash of the recipe's canonical JSON (minus its name)."""
    data = {k: v for k, v in recipe.items() if k not in NOT_IN_KEY}
    return hashlib.sha256(json.dumps(data, sort_keys=True, default=str).encode()).hexdigest()[:16]


def merge_seed(key: str, seed: int) -> int:
    """Seed for the random methods (dare, della): a function of the candidate and the run seed only,
    so a candidate merges identically whichever worker, generation or session evaluates it."""
    return int(hashlib.sha256(f"{seed}:{key}".encode()).hexdigest()[:8], 16)


class ResultCache:
    """``key -> outcome`` kept in memory and appended, one JSON line per result, to ``path``."""

    def __init__(self, path: str | Path, initial: dict[str, dict[str, Any]] | None = None):
        self.path = Path(path)
        self.results: dict[str, dict[str, Any]] = dict(initial or {})
        if self.path.is_file():
            for line in self.path.read_text().splitlines():
                try:
                    row = json.loads(line)
                except json.JSONDecodeError:  # a line cut by a kill: that candidate runs again
                    continue
                self.results.setdefault(row["key"], row["outcome"])

    def __contains__(self, key: str) -> bool:
        return key in self.results

    def __len__(self) -> int:
        return len(self.results)

    def get(self, key: str) -> dict[str, Any] | None:
        """The stored outcome for ``key``, if any."""
        return self.results.get(key)

    def put(self, key: str, outcome: dict[str, Any]) -> None:
        """Store and persist one outcome (flushed and fsynced: it survives a kill right after)."""
        self.results[key] = outcome
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a") as fh:
            fh.write(json.dumps({"key": key, "outcome": outcome}, default=str) + "\n")
            fh.flush()
            os.fsync(fh.fileno())
