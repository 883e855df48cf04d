"""Atomic writes: a reader (or a killed job) never sees a half-written file or model folder."""

from __future__ import annotations

import contextlib
import errno
import json
import os
import re
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from hpc_merge import console
from hpc_merge.errors import JobFailed
from hpc_merge.procs.owner import hostname, pid_alive, slurm_job_active, slurm_job_id

#: ``.NAME.tmp-PID@HOST[+jJOB]-XXXX`` (a folder being written) / ``.NAME.old-...`` (being replaced):
#: the writer's pid, host and SLURM job are in the name, so a later run can tell a dead writer's leftovers.
_SIDE = re.compile(r"^\.(?P<name>.+)\.(?P<kind>tmp|old)-(?P<pid>\d+)@(?P<host>[^@/+]+?)(?:\+j(?P<job>[0-9_]+))?"
                   r"-(?P<rand>[a-z0-9_]+)$")


def write_bytes(path: str | Path, data: bytes, durable: bool = False) -> None:
    """Write ``data`` to ``path`` through a temp file in the same folder and ``os.replace`` (0644).

    ``durable``: fsync before the rename, for state a resumed run depends on (evolution state):
    after a crash the file is the old version or the new one, never empty.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            if durable:
                fh.flush()
                os.fsync(fh.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def write_json(path: str | Path, obj: Any) -> None:
    """Atomic JSON write (see :func:`write_bytes`)."""
    write_bytes(path, (json.dumps(obj, indent=2, sort_keys=False, default=str) + "\n").encode())


def write_text(path: str | Path, text: str) -> None:
    """Atomic text write (see :func:`write_bytes`)."""
    write_bytes(path, text.encode())


def fix_permissions(folder: str | Path) -> None:
    """Give files 0644 and folders 0755: safetensors writes weights 0600, which breaks shared storage."""
    folder = Path(folder)
    os.chmod(folder, 0o755)
    for p in folder.rglob("*"):
        os.chmod(p, 0o755 if p.is_dir() else 0o644)


@contextlib.contextmanager
def atomic_dir(dest: str | Path, overwrite: bool = False, finish: Callable[[Path], None] | None = None,
               replace_if: Callable[[Path], bool] | None = None) -> Iterator[Path]:
    """Yield a temp folder beside ``dest``; rename it to ``dest`` only if the block succeeds.

    A killed or failed writer leaves only a ``.dest.tmp-PID@HOST-*`` folder, never a ``dest`` that
    looks complete; the next writer in the same folder removes such leftovers of dead processes.
    With ``overwrite`` an existing ``dest`` is replaced after the new one is complete, but only if
    ``replace_if(dest)`` (when given) allows it. ``finish(tmp)`` runs last, before the rename.
    A full disk is one :class:`~hpc_merge.errors.JobFailed` line, with the temp folder removed.
    """
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_siblings(dest.parent)
    tag = _owner_tag()
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.tmp-{tag}-", dir=dest.parent))
    try:
        yield tmp
        if finish is not None:
            finish(tmp)
        fix_permissions(tmp)
        if dest.exists() or dest.is_symlink():
            if not overwrite:
                raise FileExistsError(f"{dest} already exists")
            if replace_if is not None and not replace_if(dest):
                raise JobFailed(f"{dest} appeared while the output was written and was not written by "
                                "hpc_merge: left as it is; the new output was not moved in")
            old = Path(tempfile.mkdtemp(prefix=f".{dest.name}.old-{tag}-", dir=dest.parent))
            os.replace(dest, old)
            os.replace(tmp, dest)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, dest)
    except BaseException as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        if disk_full(exc):
            free = shutil.disk_usage(dest.parent).free
            raise JobFailed(f"no space left on the device while writing {dest} ({size_text(free)} free now; "
                            "the partial output was removed): free space there or choose another output "
                            "folder") from None
        raise


def free_space(path: str | Path) -> int:
    """Free bytes on the file system ``path`` is (or would be) on: its nearest existing folder's."""
    path = Path(path)
    while not path.exists() and path != path.parent:
        path = path.parent
    return shutil.disk_usage(path).free


def size_text(nbytes: float) -> str:
    """``396.3 KB`` / ``1.20 GB``: sizes in messages, readable from kilobytes to terabytes."""
    for unit, scale in (("TB", 1e12), ("GB", 1e9), ("MB", 1e6)):
        if nbytes >= scale:
            return f"{nbytes / scale:.2f} {unit}"
    return f"{nbytes / 1e3:.1f} KB"


def _owner_tag() -> str:
    job = slurm_job_id()
    return f"{os.getpid()}@{hostname()}" + (f"+j{job}" if job else "")


def disk_full(exc: BaseException) -> bool:
    """ENOSPC anywhere in the exception chain (writers wrap it: safetensors, our write thread)."""
    seen: set[int] = set()
    cur: BaseException | None = exc
    while cur is not None and id(cur) not in seen:
        seen.add(id(cur))
        if (isinstance(cur, OSError) and cur.errno in (errno.ENOSPC, errno.EDQUOT)) \
                or "No space left on device" in str(cur) or "os error 28" in str(cur):
            return True
        cur = cur.__cause__ or cur.__context__
    return False


def remove_stale_siblings(folder: Path) -> list[Path]:
    """Remove the ``.NAME.tmp-*`` folders in ``folder`` left by dead writers.

    Only names this module makes are touched, only when their writer is known to be gone: its pid
    on this host, or (written on another node) its SLURM job has ended; a writer on another host
    without a SLURM job cannot be checked and its folder is left alone. A ``.NAME.old-*`` (a dead
    writer stopped between its two renames) is put back as ``NAME`` when that is missing.
    """
    removed = []
    try:
        entries = list(folder.iterdir())
    except OSError:
        return removed
    here = hostname()
    for p in entries:
        m = _SIDE.match(p.name)
        if not m or not p.is_dir() or p.is_symlink():
            continue
        if m["host"] == here:
            if pid_alive(int(m["pid"])):
                continue
        elif not m["job"] or slurm_job_active(m["job"]) is not False:
            continue
        target = folder / m["name"]
        if m["kind"] == "old" and not (target.exists() or target.is_symlink()):
            os.replace(p, target)
            continue
        shutil.rmtree(p, ignore_errors=True)
        removed.append(p)
    return removed


def cache_dir() -> Path:
    """Where built models live: ``$HPC_MERGE_CACHE``, else ``~/.cache/hpc_merge``."""
    root = os.environ.get("HPC_MERGE_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "hpc_merge")
    return Path(root)


@contextlib.contextmanager
def file_lock(folder: str | Path) -> Iterator[None]:
    """Exclusive lock on ``folder/.lock`` across processes (e.g. two jobs building one cached model)."""
    import fcntl

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / ".lock", "a+") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:  # say why we wait: a silent wait looks like a hang
            fh.seek(0)
            holder = fh.read().strip() or "another process"
            console.note(f"waiting for {holder}, which holds {folder} (building or reading a cached model)")
            fcntl.flock(fh, fcntl.LOCK_EX)
        fh.seek(0)
        fh.truncate()
        fh.write(f"pid {os.getpid()} on {hostname()}\n")
        fh.flush()
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)
