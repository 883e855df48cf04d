"""Follow a job's log files from the submitting machine: new lines while it runs, the tail after."""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable
from pathlib import Path


class LogFollower:
    """Hands out the complete lines appended to some files since the last call.

    The files may not exist yet (the job is pending) and may grow across a requeue (submitit
    opens them in append mode), so only byte offsets are remembered.
    """

    def __init__(self, paths: Iterable[Path], max_lines: int = 40):
        self.paths = [Path(p) for p in paths]
        self.max_lines = max_lines
        self._offsets = {p: 0 for p in self.paths}

    def new_lines(self) -> list[str]:
        """New complete lines of every file (at most ``max_lines``, the latest ones)."""
        lines: list[str] = []
        for path in self.paths:
            try:
                with path.open("rb") as fh:
                    fh.seek(self._offsets[path])
                    chunk = fh.read()
            except FileNotFoundError:
                continue
            end = chunk.rfind(b"\n") + 1  # keep a half-written last line for the next call
            self._offsets[path] += end
            lines += chunk[:end].decode("utf-8", "replace").splitlines()
        if len(lines) > self.max_lines:
            skipped = len(lines) - self.max_lines
            lines = [f"... ({skipped} lines skipped)"] + lines[-self.max_lines:]
        return lines


def tail(path: Path, n: int = 30) -> list[str]:
    """The last ``n`` lines of ``path`` (``[]`` if it does not exist)."""
    try:
        with Path(path).open("r", encoding="utf-8", errors="replace") as fh:
            return list(deque((line.rstrip("\n") for line in fh), maxlen=n))
    except FileNotFoundError:
        return []


def tail_text(paths: Iterable[Path], n: int = 30) -> str:
    """A readable block with the last ``n`` lines of each non-empty file, for error messages."""
    blocks = []
    for path in paths:
        lines = tail(path, n)
        if lines:
            blocks.append(f"--- last {len(lines)} lines of {path} ---\n" + "\n".join(lines))
    return "\n".join(blocks) if blocks else "(the job wrote no log)"
