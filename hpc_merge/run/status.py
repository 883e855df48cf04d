"""The run dir's live status file (``status.json``): what the monitor reads.

Every writer (merge progress, evolution generations, the SLURM launcher) merges its fields into
one JSON object, written atomically, with a heartbeat (``updated_at``), so a job that died without
a final update can be told from one that is still running.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import socket
import threading
import time
from pathlib import Path
from typing import Any

from hpc_merge.atomic import write_json
from hpc_merge.run.files import STATUS_FILE, read_json

_lock = threading.Lock()


def read_status(run_dir: str | Path) -> dict[str, Any]:
    """The current status of a run (``{}`` if none yet)."""
    return read_json(Path(run_dir) / STATUS_FILE)


def update_status(run_dir: str | Path, **fields: Any) -> dict[str, Any]:
    """Merge ``fields`` into ``status.json`` (atomic), stamping time, host and pid.

    Several processes write one run's status (the job, and on SLURM the waiting CLI): the
    read-modify-write is serialised with a file lock so no writer undoes another's fields.
    """
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    with _lock, open(run_dir / f"{STATUS_FILE}.lock", "a") as lock_fh:
        fcntl.flock(lock_fh, fcntl.LOCK_EX)
        try:
            status = read_status(run_dir)
            status.update(fields)
            status.update(updated_at=time.time(), host=socket.gethostname(), pid=os.getpid())
            write_json(run_dir / STATUS_FILE, status)
            return status
        finally:
            fcntl.flock(lock_fh, fcntl.LOCK_UN)


@contextlib.contextmanager
def heartbeat(run_dir: str | Path, every_s: float = 30.0):
    """Refresh ``updated_at`` every ``every_s`` seconds while the block runs.

    Phases without progress updates (smoke test, evaluation) would otherwise look stale to the
    monitor, which calls a run dead when its heartbeat is too old and nothing else can be asked.
    """
    stop = threading.Event()

    def beat() -> None:
        while not stop.wait(every_s):
            update_status(run_dir)

    thread = threading.Thread(target=beat, name="hpc_merge-heartbeat", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(timeout=5)
