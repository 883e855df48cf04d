"""The architecture check (the seed's arch_check): can these models be merged at all?

Reads only ``config.json`` and safetensors headers, so it runs in seconds even for 32B models,
before anything heavy is read or any job is submitted.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path
from typing import Any

from hpc_merge.errors import ConfigError

SHAPE_KEYS = ("hidden_size", "intermediate_size", "num_attention_heads", "num_key_value_heads")
DTYPE_BYTES = {"float32": 4, "fp32": 4, "float16": 2, "fp16": 2, "bfloat16": 2, "bf16": 2}


#: GPT-2-style configs name the shape differently (transformers maps them with ``attribute_map``).
GPT2_NAMES = {"num_hidden_layers": "n_layer", "hidden_size": "n_embd", "num_attention_heads": "n_head",
              "intermediate_size": "n_inner"}


def read_config(path: Path) -> dict[str, Any]:
    """The model's ``config.json`` (text_config flattened in for multimodal wrappers; GPT-2-style
    shape names also under the common ones, so every check reads ``num_hidden_layers``)."""
    cfg = json.loads((Path(path) / "config.json").read_text())
    cfg = {**cfg.get("text_config", {}), **cfg}
    for common, gpt2 in GPT2_NAMES.items():
        if common not in cfg and gpt2 in cfg:
            cfg[common] = cfg[gpt2]
    return cfg


def weight_bytes(path: Path) -> int:
    """Total size of the model's weight files on disk."""
    files = list(Path(path).glob("*.safetensors")) or list(Path(path).glob("*.bin"))
    return sum(f.stat().st_size for f in files)


def largest_tensor_bytes(path: Path) -> int:
    """Largest single tensor in the model's safetensors files (from the headers only)."""
    biggest = 0
    for f in Path(path).glob("*.safetensors"):
        with open(f, "rb") as fh:
            (n,) = struct.unpack("<Q", fh.read(8))
            header = json.loads(fh.read(n))
        for name, meta in header.items():
            if name != "__metadata__":
                start, end = meta["data_offsets"]
                biggest = max(biggest, end - start)
    return biggest


def check_models(paths: dict[str, Path], reference: str, vocab_may_differ: bool) -> list[str]:
    """Compare every model to ``reference`` (field name); raise on a mismatch, return findings."""
    configs = {field: read_config(p) for field, p in paths.items()}
    ref = configs[reference]
    findings = [f"{reference}: {ref.get('model_type')} {ref.get('num_hidden_layers')} layers, "
                f"hidden {ref.get('hidden_size')}, vocab {ref.get('vocab_size')}"]
    for field, cfg in configs.items():
        if field == reference:
            continue
        if cfg.get("model_type") != ref.get("model_type"):
            raise ConfigError(field, f"architecture {cfg.get('model_type')} differs from {reference}'s "
                              f"{ref.get('model_type')}", "merge models of one architecture family")
        for key in SHAPE_KEYS:
            if cfg.get(key) != ref.get(key):
                raise ConfigError(field, f"{key} {cfg.get(key)} differs from {reference}'s {ref.get(key)}",
                                  "merge models of the same size (same base)")
        if cfg.get("vocab_size") != ref.get("vocab_size"):
            if not vocab_may_differ:
                raise ConfigError(field, f"vocab_size {cfg.get('vocab_size')} differs from {reference}'s "
                                  f"{ref.get('vocab_size')}", "set tokenizer_source: union (or base) to merge vocabularies")
            findings.append(f"{field}: vocab {cfg.get('vocab_size')} differs (tokenizer_source handles it)")
        if cfg.get("num_hidden_layers") != ref.get("num_hidden_layers"):
            findings.append(f"{field}: {cfg.get('num_hidden_layers')} layers (reference has {ref.get('num_hidden_layers')})")
    return findings


def check_layer_ranges(slices: list[dict[str, Any]], layers_of: dict[str, int], field: str) -> None:
    """Every slice's ``layer_range`` lies inside its source model."""
    for i, sl in enumerate(slices):
        for j, src in enumerate(sl.get("sources") or []):
            n = layers_of[str(src["model"])]
            start, end = src["layer_range"]
            if end > n:
                raise ConfigError(f"{field}.slices[{i}].sources[{j}].layer_range",
                                  f"[{start}, {end}) is out of bounds: the model has {n} layers",
                                  f"use a range within [0, {n}]")


def estimate(paths: list[Path], out_layers_ratio: float, dtype: str | None) -> dict[str, float]:
    """Resource estimate: GB read, GB written, peak RAM (GB) of a mergekit merge.

    Read = every input's weights once. Written = the donor's size scaled by dtype and depth.
    Peak RAM ~ the largest tensor of every input in flight plus the output and one working copy
    (a bound: row-separable methods merge large tensors in chunks) + ~1 GB runtime. No output shard
    is buffered: tensors are written as they are merged (``mergekit_adapter/writer.py``).
    """
    sizes = [weight_bytes(p) for p in paths]
    donor_cfg = read_config(paths[0])
    src_bytes = DTYPE_BYTES.get(str(donor_cfg.get("torch_dtype") or donor_cfg.get("dtype") or "bfloat16"), 2)
    out_bytes = sizes[0] * out_layers_ratio * (DTYPE_BYTES.get(dtype or "", src_bytes) / src_bytes)
    tensor = max(largest_tensor_bytes(p) for p in paths)
    peak = tensor * (len(paths) + 2) + 1e9
    gb = 1e9
    return {"read_gb": round(sum(sizes) / gb, 3), "write_gb": round(out_bytes / gb, 3), "peak_ram_gb": round(peak / gb, 2),
            "read_bytes": int(sum(sizes)), "write_bytes": int(out_bytes)}
