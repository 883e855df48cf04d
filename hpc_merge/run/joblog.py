"""Copy a job's stdout/stderr (and log records) into ``run_dir/job.log`` while it runs.

On SLURM submitit keeps the streams too; locally this file is the only record, and the monitor
shows its tail for any run, wherever it executed.
"""

from __future__ import annotations

import contextlib
import logging
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import TextIO


class _Tee:
    """A text stream that writes to the original stream and to a file."""

    def __init__(self, stream: TextIO, file: TextIO):
        self.stream, self.file = stream, file

    def write(self, text: str) -> int:
        self.file.write(text)
        self.file.flush()
        return self.stream.write(text)

    def flush(self) -> None:
        self.stream.flush()
        self.file.flush()

    def __getattr__(self, name: str):
        return getattr(self.stream, name)


@contextlib.contextmanager
def tee_output(path: Path) -> Iterator[None]:
    """Duplicate stdout, stderr and root-logger records into ``path`` (appending)."""
    with open(path, "a", buffering=1) as fh:
        handler = logging.StreamHandler(fh)
        handler.setFormatter(logging.Formatter("[%(asctime)s][%(name)s][%(levelname)s] - %(message)s"))
        root = logging.getLogger()
        root.addHandler(handler)
        out, err = sys.stdout, sys.stderr
        sys.stdout, sys.stderr = _Tee(out, fh), _Tee(err, fh)
        try:
            yield
        finally:
            sys.stdout, sys.stderr = out, err
            root.removeHandler(handler)
