"""The floor: the least work a merge can do. ``python bench/floor.py RECIPE.yaml OUT_DIR``.

Opens every input once with ``safe_open``, reads each tensor once, combines it with plain torch
and writes the result with one ``save_file`` (per shard of the first model, for sharded inputs); it copies config and tokenizer from the first
model (base first). Only torch, safetensors and PyYAML are imported. It understands the subset
of mergekit configs the benchmarks write (``models`` with scalar ``weight``/``density``):

- ``linear``: float32 accumulation in input order, divided by the weight sum — mergekit's own
  arithmetic, so the output is bit-identical (checked by ``tests/unit/test_bench_floor.py``);
- ``ties``: the same steps as mergekit (task vectors, magnitude trim to ``density``, weighted sign
  election, disjoint mean) in bf16, with the product's exact-k O(n) trim (histogram threshold,
  ties by lowest index) instead of mergekit's full ``argsort``; the bench reports how close the
  output is to hpc_merge's (default trim) and to mergekit-yaml's.
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path
from typing import Any

import torch
import yaml
from safetensors import safe_open
from safetensors.torch import save_file

COPY = ("config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json",
        "special_tokens_map.json", "vocab.json", "merges.txt", "chat_template.jinja")


def magnitude_mask(delta: torch.Tensor, density: float) -> torch.Tensor | None:
    """Mask of exactly ``max(1, int(density · n))`` largest magnitudes (``None`` = keep all).

    The product's exact-k trim (``hpc_merge/mergekit_adapter/trim.py``), copied so the floor imports
    nothing but torch: the k-th largest from a histogram of bf16 bit patterns (one O(n) pass) or
    ``kthvalue``, ties at the threshold kept by lowest index (located by block counts, as the product does).
    """
    if density >= 1:
        return None
    n = delta.numel()
    k = max(1, int(density * n))
    mag = delta.abs().reshape(-1)
    if delta.dtype in (torch.bfloat16, torch.float16):  # 2^15 magnitudes: count them, read the threshold off
        keys = mag.view(torch.int16)
        at_least = torch.bincount(keys, minlength=1 << 15).flip(0).cumsum(0)
        j = int(torch.searchsorted(at_least, k))
        above = int(at_least[j - 1]) if j else 0
        threshold = (1 << 15) - 1 - j
    else:
        keys = mag
        threshold = torch.kthvalue(keys, n - k + 1).values
        above = int((keys > threshold).sum())
    keep = keys > threshold
    if k > above:  # the first k - above ties by flat index: count ties per 128-element block, cut in one block
        eq = keys == threshold
        n = eq.numel()
        full = n - n % 128
        words = eq[:full].view(torch.uint8).view(torch.int64).view(-1, 16).sum(1)
        words += words >> 8
        words += words >> 16
        words += words >> 32
        cumulative = torch.cat([words & 0xFF, eq[full:].sum().view(1)]).cumsum(0)
        need = k - above
        block = int(torch.searchsorted(cumulative, need))
        before = int(cumulative[block - 1]) if block else 0
        cut = block * 128 + int(eq[block * 128:block * 128 + 128].nonzero()[need - before - 1]) + 1
        keep[:cut] |= eq[:cut]
    return keep.view(delta.shape)


def linear(tensors: list[torch.Tensor], weights: list[float], normalize: bool = True) -> torch.Tensor:
    """Weighted average in float32, in input order (mergekit's linear)."""
    acc = torch.zeros_like(tensors[0], dtype=torch.float32)
    for t, w in zip(tensors, weights, strict=True):
        acc.addcmul_(t, torch.tensor(w, dtype=torch.float32))
    if normalize:
        acc.div_(torch.tensor(sum(weights), dtype=torch.float32))
    return acc.to(tensors[0].dtype)


def ties(base: torch.Tensor, others: list[torch.Tensor], weights: list[float], densities: list[float],
         normalize: bool = True) -> torch.Tensor:
    """TIES: trimmed task vectors, majority sign by weighted sum, mean of the agreeing ones."""
    deltas = base.new_empty((len(others), *base.shape))
    for i, (t, d) in enumerate(zip(others, densities, strict=True)):
        delta = t - base
        mask = magnitude_mask(delta, d) if base.dim() else None
        deltas[i] = delta if mask is None else delta * mask
    w = torch.tensor(weights, dtype=base.dtype).view(-1, *([1] * base.dim()))
    deltas.mul_(w)
    majority = (deltas.sum(dim=0) >= 0).to(base.dtype) * 2 - 1
    agree = deltas.sign() == majority
    mixed = (deltas * agree).sum(dim=0)
    divisor = (w * agree).sum(dim=0)
    divisor[divisor == 0] = 1
    if normalize:
        mixed /= divisor
    return (base + mixed).to(base.dtype)


def merge(recipe: dict, out_dir: Path) -> None:
    """Merge ``recipe`` (a mergekit config dict, see the module docstring) into ``out_dir``."""
    method = recipe["merge_method"]
    dtype = getattr(torch, recipe.get("dtype") or "bfloat16")
    entries = recipe["models"]
    params = recipe.get("parameters") or {}
    normalize = bool(params.get("normalize", True))
    paths = [Path(e["model"]) for e in entries]
    if method == "ties":
        paths = [Path(recipe["base_model"]), *paths]
    elif method != "linear":
        raise SystemExit(f"floor: unsupported method {method}")
    handles = [_open(p) for p in paths]
    weights = [float(e["parameters"]["weight"]) for e in entries]
    out_dir.mkdir(parents=True, exist_ok=True)
    shards = _shards(paths[0])
    weight_map = {}
    for file, names in shards:  # one output file per shard of the first model: at most one shard in RAM
        out: dict[str, torch.Tensor] = {}
        for name in names:
            tensors = [h[name].get_tensor(name).to(dtype) for h in handles]
            if method == "linear":
                out[name] = linear(tensors, weights, normalize)
            else:
                densities = [float(e["parameters"].get("density", 1.0)) for e in entries]
                out[name] = ties(tensors[0], tensors[1:], weights, densities, normalize)
            del tensors
            weight_map[name] = file
        save_file(out, str(out_dir / file), metadata={"format": "pt"})
        del out
    if len(shards) > 1:
        (out_dir / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    for f in COPY:
        if (paths[0] / f).exists():
            shutil.copy2(paths[0] / f, out_dir / f)


def _shards(model: Path) -> list[tuple[str, list[str]]]:
    """``(file, tensor names)`` of each weight file of ``model`` (one, or the shards of its index)."""
    index = model / "model.safetensors.index.json"
    if not index.exists():
        with safe_open(str(model / "model.safetensors"), framework="pt") as h:
            return [("model.safetensors", list(h.keys()))]
    by_file: dict[str, list[str]] = {}
    for name, file in json.loads(index.read_text())["weight_map"].items():
        by_file.setdefault(file, []).append(name)
    return sorted(by_file.items())


def _open(model: Path) -> dict[str, Any]:
    """Tensor name -> open ``safe_open`` handle of the file holding it."""
    handles = {}
    for file, names in _shards(model):
        h = safe_open(str(model / file), framework="pt")
        handles.update(dict.fromkeys(names, h))
    return handles


def main(argv: list[str]) -> None:
    """``floor.py RECIPE.yaml OUT_DIR``."""
    if len(argv) != 2:
        raise SystemExit(__doc__.splitlines()[0])
    merge(yaml.safe_load(Path(argv[0]).read_text()), Path(argv[1]))


if __name__ == "__main__":
    sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]
    main(sys.argv[1:])
