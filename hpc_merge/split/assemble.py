"""Put the parts of a split merge together into one model folder (the caller makes it atomic).

The parts' shards are hard-linked (copied across file systems) under the standard names
``model-XXXXX-of-NNNNN.safetensors`` in part order, the shard index is written from their
headers, and config, tokenizer and the other files mergekit wrote come from the first part (every
part writes the same ones). The parts stay where they are until the model is in place.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

from hpc_merge.atomic import write_json
from hpc_merge.split.part import RECORD
from hpc_merge.split.plan import Part

INDEX = "model.safetensors.index.json"


def _header(path: Path) -> dict[str, dict]:
    """A safetensors file's tensor entries (its header, without ``__metadata__``)."""
    with open(path, "rb") as fh:
        n = int.from_bytes(fh.read(8), "little")
        head = json.loads(fh.read(n))
    head.pop("__metadata__", None)
    return head


def _link(src: Path, dst: Path) -> None:
    try:
        os.link(src, dst)
    except OSError:  # another file system, or no hard links there
        shutil.copy2(src, dst)


def assemble(parts: list[Part], parts_root: Path, out: Path) -> dict[str, str]:
    """Write the whole model into ``out`` from the finished parts; returns the weight map."""
    shards = []
    for part in parts:
        folder = parts_root / part.label
        files = sorted(folder.glob("*.safetensors"))
        if not files:
            raise RuntimeError(f"{part.label} wrote no safetensors shard")
        shards += [(part, f) for f in files]
    weight_map: dict[str, str] = {}
    total = 0
    for k, (part, src) in enumerate(shards):
        name = f"model-{k + 1:05d}-of-{len(shards):05d}.safetensors"
        for tensor, entry in _header(src).items():
            if tensor not in part.names:
                raise RuntimeError(f"{part.label} wrote {tensor!r}, which is not one of its tensors")
            if tensor in weight_map:
                raise RuntimeError(f"{tensor!r} was written by two parts")
            weight_map[tensor] = name
            total += entry["data_offsets"][1] - entry["data_offsets"][0]
        _link(src, out / name)
    first = parts_root / parts[0].label
    for f in sorted(first.iterdir()):
        if f.is_file() and f.suffix != ".safetensors" and f.name not in (INDEX, RECORD):
            shutil.copy2(f, out / f.name)
    write_json(out / INDEX, {"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))})
    return weight_map
