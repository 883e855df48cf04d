"""One run per run dir at a time: a lock file naming its holder, taken over when the holder is dead.

Two identical runs started together would both write the same run dir and output. The first one
to start holds ``RUN_DIR/run.lock`` (pid, host, SLURM job); the second is refused with one line
saying who holds it. A holder that died (killed, machine rebooted, SLURM job ended) does not hold
the run dir forever: the next run sees that and takes the lock over.

On SLURM the submitting process hands the lock to the job it submitted: the job holds it while it
is pending or running, whether the submitter waits (``cluster.wait=true``) or has long returned.
"""

from __future__ import annotations

import json
import time
import uuid
from pathlib import Path
from typing import Any

from hpc_merge.atomic import file_lock, write_json
from hpc_merge.errors import ConfigError
from hpc_merge.procs import owner
from hpc_merge.run.files import LOCK_FILE


class RunLocked(ConfigError):
    """The run dir is in use by another live run (exit status 2, one line)."""


def _read(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError):
        return {}  # not a lock we wrote (written atomically, never torn): nobody holds it
    return data if isinstance(data, dict) else {}


def _refusal(path: Path, holder: dict[str, Any], alive: bool | None) -> RunLocked:
    since = time.strftime("%H:%M:%S UTC", time.gmtime(holder.get("started", 0)))
    who = owner.describe(holder)
    run_dir = path.parent
    if holder.get("held_by") == "slurm":
        fix = (f"wait for it (squeue -j {holder['slurm_job_id']}; hpc-merge monitor {run_dir}), "
               f"or cancel it (scancel {holder['slurm_job_id']})")
    elif alive:
        fix = f"wait for it to finish, or stop it (kill {holder.get('pid')})"
    else:
        fix = f"if that process is gone, delete {path}"
    state = "" if alive else " (cannot check from here)"
    return RunLocked("run_id", f"run dir {run_dir} is in use by {who}{state} since {since}",
                     f"{fix}; or give this run another run_id=...")


class RunLock:
    """A held run lock; :meth:`release` removes it only while it is still this holder's."""

    def __init__(self, path: Path, record: dict[str, Any]):
        self.path, self.record = path, record

    def hand_to_slurm(self, job_id: str) -> None:
        """From now on SLURM job ``job_id`` holds the run dir (the submitter may exit)."""
        with file_lock(self.path.parent):
            if (_read(self.path) or {}).get("token") == self.record["token"]:
                self.record = {**self.record, "held_by": "slurm", "slurm_job_id": str(job_id)}
                write_json(self.path, self.record)

    def release(self) -> None:
        """Remove the lock if it is still ours and its holder (this process, or our SLURM job) is done.

        A SLURM job that still runs (the submitter stopped waiting, or ``cluster.wait=false``) keeps it.
        """
        with file_lock(self.path.parent):
            current = _read(self.path)
            if not current or current.get("token") != self.record["token"]:
                return
            if self.record.get("held_by") == "slurm" and owner.owner_alive(self.record) is not False:
                return
            self.path.unlink(missing_ok=True)


def acquire(run_dir: str | Path) -> RunLock:
    """Take ``run_dir``'s lock, or raise :class:`RunLocked` naming the live holder.

    A lock whose holder is dead is taken over; one whose holder cannot be checked from here
    (another host, no SLURM to ask) is respected, and the message says how to clear it.
    """
    run_dir = Path(run_dir)
    path = run_dir / LOCK_FILE
    record = {**owner.this_owner(), "token": uuid.uuid4().hex, "started": time.time()}
    with file_lock(run_dir):  # check-and-take is one step for every process using this run dir
        holder = _read(path)
        if holder:
            alive = owner.owner_alive(holder)
            if alive is not False:
                raise _refusal(path, holder, alive)
        write_json(path, record)
    return RunLock(path, record)
