"""Read back what a W&B offline run logged, straight from its ``run-*.wandb`` file.

wandb >= 0.2x writes no summary JSON offline and has no Python reader any more; the file is a
7-byte header then LevelDB-log blocks (32 KiB) of records, each a ``wandb_internal_pb2.Record``.
Tests use this to check that what we logged really is in the run; so can users, offline.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path
from typing import Any

_BLOCK = 32 * 1024
_HEADER = 7


def _records(data: bytes):
    pos, pending = _HEADER, b""
    while pos + 7 <= len(data):
        block_left = _BLOCK - (pos % _BLOCK)
        if block_left < 7:
            pos += block_left
            continue
        _crc, length, rtype = struct.unpack("<IHB", data[pos:pos + 7])
        chunk = data[pos + 7:pos + 7 + length]
        pos += 7 + length
        if rtype == 0 and length == 0:
            pos += _BLOCK - (pos % _BLOCK) if pos % _BLOCK else 0
            continue
        if rtype == 1:
            yield chunk
        elif rtype == 2:
            pending = chunk
        elif rtype == 3:
            pending += chunk
        elif rtype == 4:
            yield pending + chunk
            pending = b""


def read_run(run_file: str | Path) -> dict[str, Any]:
    """``{"config": {...}, "history": [{...}, ...], "summary": {...}, "group": ...}`` of one ``.wandb`` file."""
    from wandb.proto import wandb_internal_pb2 as pb

    out: dict[str, Any] = {"config": {}, "history": [], "summary": {}, "group": None}
    for raw in _records(Path(run_file).read_bytes()):
        rec = pb.Record()
        try:
            rec.ParseFromString(raw)
        except Exception:  # noqa: BLE001 - a torn last record of a live run
            continue
        kind = rec.WhichOneof("record_type")
        if kind == "history":
            row = {}
            for item in rec.history.item:
                key = item.key or "/".join(item.nested_key)
                row[key] = json.loads(item.value_json)
            out["history"].append(row)
        elif kind == "summary":
            for item in rec.summary.update:
                key = item.key or "/".join(item.nested_key)
                out["summary"][key] = json.loads(item.value_json)
        elif kind in ("run", "config"):
            if kind == "run":
                out["group"] = rec.run.run_group or None  # a sweep's points share one group
            items = rec.run.config.update if kind == "run" else rec.config.update
            for item in items:
                key = item.key or "/".join(item.nested_key)
                val = json.loads(item.value_json)
                out["config"][key] = val.get("value", val) if isinstance(val, dict) else val
    return out


def find_runs(root: str | Path) -> list[Path]:
    """All offline run files under ``root`` (sorted, oldest first)."""
    return sorted(Path(root).rglob("run-*.wandb"))
