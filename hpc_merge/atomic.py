"""Atomic writes: a reader (or a killed job) never sees a half-written file or model folder."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any


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
def atomic_dir(dest: str | Path, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temp folder beside ``dest``; rename it to ``dest`` only if the block succeeds.

    A killed or failed writer leaves only a ``.dest.tmp-*`` folder, never a ``dest`` that looks
    complete. With ``overwrite`` an existing ``dest`` is replaced after the new one is complete.
    """
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.tmp-", dir=dest.parent))
    try:
        yield tmp
        fix_permissions(tmp)
        if dest.exists():
            if not overwrite:
                raise FileExistsError(f"{dest} already exists")
            old = dest.with_name(f".{dest.name}.old-{os.getpid()}")
            os.replace(dest, old)
            os.replace(tmp, dest)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, dest)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


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
    with open(folder / ".lock", "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)
