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
import time
from pathlib import Path
from typing import Any

from hpc_merge.atomic import atomic_dir, write_json
from hpc_merge.split.plan import Part
from hpc_merge.split.progress import write_part_progress

RECORD = "part.json"


def sha256_file(path: Path) -> str:
    """The file's sha256, read in 16 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(16 << 20):
            digest.update(block)
    return digest.hexdigest()


def run_part(config: dict[str, Any], options: dict[str, Any], part: Part, parts_root: Path, fp: str) -> Path:
    """Merge ``part``'s tensors (mergekit's planned tasks for them) into ``parts_root/<label>``; its folder.

    Idempotent: a part already recorded for this fingerprint is returned as it is, so an array
    element that SLURM requeues (preemption, ``scontrol requeue``) after its part was written ends
    at once with the same record, and one requeued mid-merge merges the part again from the start
    (its dead try's temporary folder is removed by the next write in the folder). Progress goes to
    ``<label>.progress.json`` (:mod:`hpc_merge.split.progress`): ``merging`` once mergekit has
    executed its first task, ``done`` once the folder and record are in place.
    """
    from hpc_merge import mergekit_adapter as mk

    dest = parts_root / part.label
    if valid_record(parts_root, part, fp, checksums=False) is not None:
        print(f"{part.label}: already recorded in {dest}, nothing to do", flush=True)
        return dest
    started = time.time()
    print(f"{part.label}: merging {len(part.names)} tensors ({part.read_bytes} bytes to read)", flush=True)

    first: list[float] = []  # when mergekit ran its first task: imports and planning are behind it

    def progress(p: dict[str, Any]) -> None:
        first[:] = first or [time.time()]
        write_part_progress(parts_root, part, "merging", started, tensors_done=p["tensors_done"],
                            tensors_total=p["tensors_total"], read_frac=p["loads_done"] / max(p["loads_total"], 1),
                            first_task_at=first[0])

    def record(tmp: Path) -> None:
        files = {f.name: sha256_file(f) for f in sorted(tmp.iterdir()) if f.is_file()}
        write_json(tmp / RECORD, {"fingerprint": fp, "part": part.label, "names": list(part.names), "files": files})

    try:
        with atomic_dir(dest, overwrite=True, finish=record) as tmp:
            mk.run_mergekit(config, tmp, options, progress=progress, only_tensors=part.names)
    except BaseException:
        write_part_progress(parts_root, part, "failed", started)
        raise
    write_part_progress(parts_root, part, "done", started, tensors_done=len(part.names), read_frac=1.0,
                        first_task_at=first[0] if first else None)
    print(f"{part.label}: done in {time.time() - started:.1f} s", flush=True)
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
