"""Model cards for every model we write: the resolved recipe and fingerprints of the inputs."""

from __future__ import annotations

import datetime as dt
import hashlib
import struct
from pathlib import Path

import yaml

import hpc_merge

_CHUNK = 1 << 20


def fingerprint(model_dir: Path) -> str:
    """sha256 over each weight file's name, size, safetensors header and first/last MiB.

    Hashing 60 GB of a 32B model takes minutes; this catches a changed or different checkpoint
    in milliseconds (any retrain changes the first and last bytes, any reshape the header).
    """
    h = hashlib.sha256()
    files = sorted(Path(model_dir).glob("*.safetensors")) or sorted(Path(model_dir).glob("*.bin"))
    for f in files:
        size = f.stat().st_size
        h.update(f"{f.name}:{size}".encode())
        with open(f, "rb") as fh:
            if f.suffix == ".safetensors":
                (n,) = struct.unpack("<Q", fh.read(8))
                h.update(fh.read(n))
            h.update(fh.read(_CHUNK))
            fh.seek(max(0, size - _CHUNK))
            h.update(fh.read(_CHUNK))
    return h.hexdigest()[:16]


def write_card(out_dir: Path, title: str, recipe: dict, inputs: dict[str, Path], kind: str = "merge") -> None:
    """Write ``README.md`` (model card) and ``hpc_merge_recipe.yaml`` into ``out_dir``."""
    rows = "\n".join(f"| `{ref}` | `{path}` | `{fingerprint(path)}` |" for ref, path in inputs.items())
    recipe_yaml = yaml.safe_dump(recipe, sort_keys=False)
    card = f"""---
library_name: transformers
tags: [merge, hpc_merge, {kind}]
---
# {title}

Built by hpc_merge {hpc_merge.__version__} ({kind}) on {dt.datetime.now(dt.timezone.utc):%Y-%m-%d %H:%M UTC}
with mergekit, in-process.

## Inputs
| reference | resolved path | fingerprint |
|---|---|---|
{rows}

Fingerprint: sha256 of each weight file's name, size, header and first/last MiB (see `hpc_merge.modelcard`).

## Recipe
```yaml
{recipe_yaml}```
"""
    (out_dir / "README.md").write_text(card)
    (out_dir / "hpc_merge_recipe.yaml").write_text(recipe_yaml)
