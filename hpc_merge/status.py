"""The run dir's live status file (``status.json``): what the monitor reads.

Every writer (merge progress, evolution generations, the SLURM launcher) merges its fields into
one JSON object, written atomically, with a heartbeat (``updated_at``), so a job that died without
a final update can be told from one that is still running.
"""

from __future__ import annotations

import json
import os
import socket
import threading
import time
from pathlib import Path
from typing import Any

from hpc_merge.atomic import write_json

STATUS_FILE = "status.json"
_lock = threading.Lock()


def read_status(run_dir: str | Path) -> dict[str, Any]:
    """The current status of a run (``{}`` if none yet)."""
    try:
        return json.loads((Path(run_dir) / STATUS_FILE).read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return {}


def update_status(run_dir: str | Path, **fields: Any) -> dict[str, Any]:
    """Merge ``fields`` into ``status.json`` (atomic), stamping time, host and pid."""
    with _lock:
        status = read_status(run_dir)
        status.update(fields)
        status.update(updated_at=time.time(), host=socket.gethostname(), pid=os.getpid())
        write_json(Path(run_dir) / STATUS_FILE, status)
        return status
