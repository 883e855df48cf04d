"""One part of a split merge: merge its tensors into its own folder, recorded with checksums.

A part's folder (``<parts>/part-XXXXX-of-NNNNN``) is written atomically and holds ``part.json``:
the fingerprint of the merge it belongs to, its tensor names and the sha256 of every file it
wrote. A re-run reuses a part only when that record exists, matches the plan and every checksum
still matches, so a killed, preempted or failed part (no folder, or a stale one) is redone and the
others are not.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from hpc_merge.atomic import atomic_dir, write_json
from hpc_merge.split.plan import Part

RECORD = "part.json"


def sha256_file(path: Path) -> str:
    """The file's sha256, read in 16 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(16 << 20):
            digest.update(block)
    return digest.hexdigest()


def run_part(config: dict[str, Any], options: dict[str, Any], part: Part, parts_root: Path, fp: str) -> Path:
    """Merge ``part``'s tensors (mergekit's planned tasks for them) into ``parts_root/<label>``; its folder."""
    from hpc_merge import mergekit_adapter as mk

    dest = parts_root / part.label

    def record(tmp: Path) -> None:
        files = {f.name: sha256_file(f) for f in sorted(tmp.iterdir()) if f.is_file()}
        write_json(tmp / RECORD, {"fingerprint": fp, "part": part.label, "names": list(part.names), "files": files})

    with atomic_dir(dest, overwrite=True, finish=record) as tmp:
        mk.run_mergekit(config, tmp, options, only_tensors=part.names)
    return dest


def valid_record(parts_root: Path, part: Part, fp: str, checksums: bool = True) -> dict[str, Any] | None:
    """The part's record when it is complete and unchanged (fingerprint, names, every checksum), else None.

    ``checksums=False`` skips reading the files back (a part that has just been written by this run).
    """
    folder = parts_root / part.label
    try:
        rec = json.loads((folder / RECORD).read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(rec, dict) or rec.get("fingerprint") != fp or tuple(rec.get("names") or ()) != part.names:
        return None
    files = rec.get("files")
    if not isinstance(files, dict) or not files:
        return None
    for name, digest in files.items():
        path = folder / name
        if not path.is_file() or (checksums and sha256_file(path) != digest):
            return None
    return rec
