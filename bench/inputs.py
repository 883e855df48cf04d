"""Benchmark inputs: Qwen2.5-0.5B-shaped random models in bf16 safetensors, built once, cached.

Weights are drawn tensor by tensor with a seeded generator and written with ``save_file``
directly (no model object, no float32 copy), which builds a 0.5B model in seconds. The config
comes from ``hpc_merge.models.tiny`` and the tokenizer from ``hpc_merge.models.tokenizer``, so
every model loads in transformers. A "fine-tune" is the base plus a seeded perturbation; two
kinds (two distributions of task vectors, every timing target must hold on both):

- ``dense`` (the original inputs): base + 0.002 · N(0, 1) in bf16 arithmetic — about 10 % of the
  weights' spread, so task-vector magnitudes are nearly all distinct and trims have few ties;
- ``bf16ft`` (what real bf16 fine-tunes look like): base + 1 % of each tensor's std · N(0, 1),
  computed in float32 and stored bf16 — a task vector of a few bf16 ulps: ~17 % exact zeros and
  a few thousand distinct magnitudes per tensor, so ties at any trim threshold are the rule.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path

import yaml

CACHE = Path(__file__).resolve().parent / ".cache"
_VERSION = 2  # bump when the weights recipe changes so caches rebuild


@dataclass(frozen=True)
class Shape:
    """A Qwen2-architecture shape (tied embeddings, like the 0.5B model)."""

    label: str
    vocab: int
    hidden: int
    intermediate: int
    layers: int
    heads: int
    kv_heads: int
    tied: bool = True  # tied input/output embeddings (0.5B) or a separate lm_head (7B)
    shard_gb: float = 0.0  # > 0: written in shards of about this size with an index, as the Hub ships them

    def params(self) -> int:
        """Parameter count (tied embeddings counted once; q/k/v biases as in Qwen2)."""
        h, kvd = self.hidden, self.hidden // self.heads * self.kv_heads
        layer = h * h + h + 2 * (h * kvd + kvd) + h * h + 3 * h * self.intermediate + 2 * h
        return self.vocab * h * (1 if self.tied else 2) + self.layers * layer + h

    def gbytes(self) -> float:
        """Size of one bf16 checkpoint in GB (1e9 bytes)."""
        return self.params() * 2 / 1e9


#: The real Qwen2.5-0.5B shape: 494M parameters, 0.99 GB in bf16.
QWEN05 = Shape("0.5B", 151936, 896, 4864, 24, 14, 2)
QWEN025 = Shape("0.22B", 151936, 640, 3456, 16, 10, 2)
QWEN012 = Shape("0.11B", 151936, 448, 2432, 12, 7, 1)
#: --quick shapes: same architecture, small enough that all benchmarks run in minutes.
QUICK_L = Shape("54M", 16384, 512, 2048, 12, 8, 2)
QUICK_M = Shape("24M", 16384, 384, 1536, 8, 6, 2)
QUICK_S = Shape("8M", 16384, 256, 1024, 4, 4, 2)
QUICK_XS = Shape("3M", 8192, 128, 512, 4, 2, 1)
#: Qwen2.5-7B's shapes (7.6B parameters, untied lm_head), 4 shards of ≤ 4 GB like the Hub's checkpoint.
QWEN7B = Shape("7B", 152064, 3584, 18944, 28, 28, 4, tied=False, shard_gb=4.0)
#: the 7B bench's --quick stand-in: the same layout (untied, sharded) at 24M.
QUICK_SHARDED = Shape("24M-sharded", 16384, 384, 1536, 8, 6, 2, tied=False, shard_gb=0.02)

#: Names of the models built per shape: a base and fine-tunes (seeded perturbations of it).
NAMES = ("base", "ft1", "ft2", "ft3", "ft4")
#: Kinds of fine-tune (see the module docstring); ``dense`` is the default everywhere.
KINDS = ("dense", "bf16ft")


def _key(shape: Shape) -> str:
    fields = asdict(shape)
    if shape.tied and not shape.shard_gb:  # the original fields only: cached single-file models keep their key
        fields.pop("tied")
        fields.pop("shard_gb")
    return hashlib.sha256(json.dumps([_VERSION, fields]).encode()).hexdigest()[:10]


def weight_files(model: Path) -> list[Path]:
    """The model's safetensors files (one, or the shards its index lists), in order."""
    index = model / "model.safetensors.index.json"
    if index.exists():
        return [model / f for f in sorted(set(json.loads(index.read_text())["weight_map"].values()))]
    return [model / "model.safetensors"]


def model_bytes(model: Path) -> int:
    """Bytes of weights on disk."""
    return sum(f.stat().st_size for f in weight_files(model))


def model_dir(shape: Shape, name: str, kind: str = "dense") -> Path:
    """Where model ``name`` of ``shape`` (fine-tunes of ``kind``) lives in the cache; both kinds share the base."""
    folder = name if kind == "dense" or name == "base" else f"{name}-{kind}"
    return CACHE / "models" / f"{shape.label}-{_key(shape)}" / folder


def _tensor_specs(shape: Shape) -> list[tuple[str, tuple[int, ...]]]:
    """Checkpoint names and shapes, taken from transformers' own model on the meta device."""
    import torch
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(_config(shape))
    return [(name, tuple(p.shape)) for name, p in model.named_parameters()]  # tied lm_head listed once


def _config(shape: Shape):
    from hpc_merge.models.tiny import tiny_config

    cfg = tiny_config("qwen2", vocab_size=shape.vocab, layers=shape.layers, hidden=shape.hidden,
                      intermediate=shape.intermediate, heads=shape.heads, kv_heads=shape.kv_heads)
    cfg.architectures = ["Qwen2ForCausalLM"]  # mergekit picks its architecture table by this
    cfg.tie_word_embeddings = shape.tied
    cfg.max_position_embeddings = 32768
    cfg.dtype = "bfloat16"
    return cfg


def _tokenizer_files() -> Path:
    """One tokenizer (byte-level BPE from the product) shared by every benchmark model."""
    out = CACHE / "tokenizer"
    if not (out / "tokenizer.json").exists():
        from hpc_merge.models.tokenizer import build_tokenizer

        tmp = out.with_name(f"tokenizer.tmp{os.getpid()}")
        shutil.rmtree(tmp, ignore_errors=True)
        build_tokenizer(tmp, vocab_size=320)
        os.replace(tmp, out)
    return out


class _BaseReader:
    """The base model's tensors by name, single file or sharded (for building fine-tunes from it)."""

    def __init__(self, model: Path):
        from safetensors import safe_open

        self.files = {}
        for f in weight_files(model):
            handle = safe_open(str(f), framework="pt")
            for name in handle.keys():
                self.files[name] = handle

    def get_tensor(self, name: str):
        return self.files[name].get_tensor(name)


def _write_model(shape: Shape, name: str, out: Path, kind: str = "dense") -> None:
    import torch
    from safetensors.torch import save_file

    seed = NAMES.index(name)
    gen = torch.Generator().manual_seed(1000 + seed + (100 if kind == "bf16ft" else 0))
    base = _BaseReader(ensure_model(shape, "base")) if name != "base" else None
    tmp = out.with_name(f"{out.name}.tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    specs = _tensor_specs(shape)
    shard_bytes = int(shape.shard_gb * 1e9)
    shards: list[list[str]] = [[]]
    tensors: dict = {}
    weight_map: dict[str, str] = {}
    size = 0

    def flush(last: bool) -> None:
        nonlocal tensors, size
        index = len(shards)
        file = "model.safetensors" if not shard_bytes else f"model-{index:05d}-of-NNNNN.safetensors"
        save_file(tensors, str(tmp / file), metadata={"format": "pt"})
        for tname in tensors:
            weight_map[tname] = file
        tensors, size = {}, 0
        if not last:
            shards.append([])

    for tname, tshape in specs:
        if tname.endswith("norm.weight"):
            t = torch.ones(tshape, dtype=torch.bfloat16)
            if base is not None:
                t = t + 0.01 * torch.randn(tshape, generator=gen, dtype=torch.bfloat16)
        elif base is None:
            t = 0.02 * torch.randn(tshape, generator=gen, dtype=torch.bfloat16)
        elif kind == "bf16ft":  # a few bf16 ulps: 1 % of the tensor's spread, rounded to bf16 once
            b = base.get_tensor(tname).float()
            t = (b + 0.01 * b.std() * torch.randn(tshape, generator=gen)).to(torch.bfloat16)
            del b
        else:  # a fine-tune: base + dense, seeded task vector
            t = base.get_tensor(tname) + 0.002 * torch.randn(tshape, generator=gen, dtype=torch.bfloat16)
        nbytes = t.numel() * t.element_size()
        if shard_bytes and tensors and size + nbytes > shard_bytes:
            flush(last=False)
        tensors[tname] = t.contiguous()
        shards[-1].append(tname)
        size += nbytes
    flush(last=True)
    if shard_bytes:  # the Hub's names: model-00001-of-00004.safetensors and an index
        total = len(shards)
        renamed = {}
        for i in range(1, total + 1):
            old_name, new_name = f"model-{i:05d}-of-NNNNN.safetensors", f"model-{i:05d}-of-{total:05d}.safetensors"
            os.replace(tmp / old_name, tmp / new_name)
            renamed[old_name] = new_name
        index = {"metadata": {"total_size": sum((tmp / f).stat().st_size for f in renamed.values())},
                 "weight_map": {k: renamed[v] for k, v in weight_map.items()}}
        (tmp / "model.safetensors.index.json").write_text(json.dumps(index, indent=2))
    _config(shape).save_pretrained(str(tmp))
    for f in _tokenizer_files().iterdir():
        shutil.copy2(f, tmp / f.name)
    shutil.rmtree(out, ignore_errors=True)
    os.replace(tmp, out)


def ensure_model(shape: Shape, name: str, kind: str = "dense") -> Path:
    """Path of model ``name`` (``base``, ``ft1``..``ft4``) of ``shape``, built on first use."""
    if kind not in KINDS:
        raise ValueError(f"unknown input kind {kind!r}; use one of {KINDS}")
    out = model_dir(shape, name, kind)
    done = out / ("model.safetensors.index.json" if shape.shard_gb else "model.safetensors")
    if not done.exists():
        out.parent.mkdir(parents=True, exist_ok=True)
        _write_model(shape, name, out, kind)
    return out


def ensure_models(shape: Shape, n: int, kind: str = "dense") -> list[Path]:
    """The base and ``n - 1`` fine-tunes of ``shape`` (of ``kind``)."""
    return [ensure_model(shape, name, kind) for name in NAMES[:n]]


def recipe(method: str, models: list[Path], dtype: str = "bfloat16") -> dict:
    """A mergekit config over ``models`` (the first is the base for TIES and dare_ties).

    Scalar parameters only, so the floor script can apply the same arithmetic without
    mergekit's gradient/filter machinery. Fine-tunes share the weight equally.
    """
    w = round(1.0 / max(1, len(models) - (method == "ties")), 6)
    if method == "linear":
        return {"merge_method": "linear", "dtype": dtype,
                "models": [{"model": str(m), "parameters": {"weight": w}} for m in models]}
    if method in ("ties", "dare_ties"):  # dare_ties: the same recipe, random (seeded) drops instead of top-k
        densities = [0.6, 0.5, 0.7, 0.4]
        w = round(1.0 / max(1, len(models) - 1), 6)
        return {"merge_method": method, "base_model": str(models[0]), "dtype": dtype,
                "parameters": {"normalize": True},
                "models": [{"model": str(m), "parameters": {"weight": w, "density": densities[i % 4]}}
                           for i, m in enumerate(models[1:])]}
    raise ValueError(method)


def write_recipe(cfg: dict, path: Path) -> Path:
    """Write a mergekit YAML (the same file is given to mergekit-yaml, our CLI and the floor)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path
