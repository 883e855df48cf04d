"""Tiny random causal LMs of every architecture we merge, built locally and cached.

Used by tests, the demo pool ``models=tiny`` and the MoE identity checks. A "fine-tune" is the
base plus a small seeded perturbation, so task vectors are real and sparse methods have something
to keep or drop. Everything is deterministic in (arch, name, seed).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from hpc_merge.atomic import atomic_dir, cache_dir, file_lock
from hpc_merge.models.archs import QUIRKS, quirks, shape_fields

#: Every architecture with a tiny recipe (models/archs.py); the first five are the historic pool.
ARCHS = tuple(QUIRKS)
POOL_NAMES = ("base", "instruct", "math", "coder", "science")
_VERSION = 1  # bump when the recipe below changes, so caches rebuild


def tiny_config(arch: str = "qwen2", vocab_size: int = 320, layers: int = 4, hidden: int = 64,
                intermediate: int = 128, heads: int = 4, kv_heads: int = 2, **extra):
    """A transformers config for a tiny model of ``arch`` (one of :data:`ARCHS`), its quirks kept.

    ``extra`` passes any other config field through (``sliding_window``, ``rope_theta``...).
    """
    from transformers import AutoConfig

    if arch not in ARCHS:
        raise ValueError(f"unknown tiny arch {arch!r}; known: {', '.join(ARCHS)}")
    common = dict(
        vocab_size=vocab_size, **shape_fields(arch, layers, hidden, intermediate, heads, kv_heads),
        max_position_embeddings=256, tie_word_embeddings=False, bos_token_id=0, eos_token_id=0,
        pad_token_id=0,
    )
    if arch == "qwen3":
        common["head_dim"] = hidden // heads
    return AutoConfig.for_model(arch, **{**common, **quirks(arch, layers), **extra})


def build_tiny(out_dir: str | Path, arch: str = "qwen2", seed: int = 0, base: str | Path | None = None,
               perturb: float = 0.02, dtype: str = "bfloat16", grow_vocab: int = 0, **config_overrides) -> Path:
    """Write a tiny model (weights, config, tokenizer) to ``out_dir`` atomically.

    With ``base`` the weights are ``base + perturb * N(0, 1)`` (seeded), i.e. a fake fine-tune;
    ``grow_vocab`` adds that many tokens to it (embeddings resized, a larger tokenizer trained),
    the way a fine-tune that adds special tokens differs from its base.
    """
    import torch
    from transformers import AutoModelForCausalLM

    from hpc_merge.models.tokenizer import build_tokenizer

    torch.manual_seed(seed)
    if base is not None:
        model = AutoModelForCausalLM.from_pretrained(str(base), dtype=torch.float32)
        if grow_vocab:
            model.resize_token_embeddings(model.config.vocab_size + grow_vocab, mean_resizing=False)
        gen = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for p in model.parameters():
                p.add_(torch.randn(p.shape, generator=gen) * perturb)
    else:
        cfg = tiny_config(arch, **config_overrides)
        model = AutoModelForCausalLM.from_config(cfg, dtype=torch.float32)
        gen = torch.Generator().manual_seed(seed)
        with torch.no_grad():  # from_config init depends on global RNG order; make it explicit
            for p in model.parameters():
                p.copy_(torch.randn(p.shape, generator=gen) * 0.05 if p.dim() > 1 else torch.ones(p.shape))
    model = model.to(getattr(torch, dtype))
    with atomic_dir(out_dir, overwrite=True) as tmp:
        model.save_pretrained(str(tmp))
        build_tokenizer(tmp, vocab_size=model.config.vocab_size)
    return Path(out_dir)


def pool_dir(arch: str = "qwen2") -> Path:
    """Cache folder of the tiny pool for ``arch`` (keyed by the recipe version)."""
    recipe = [_VERSION, arch] + ([QUIRKS[arch]] if QUIRKS.get(arch) else [])  # historic keys stay valid
    key = hashlib.sha256(json.dumps(recipe, sort_keys=True).encode()).hexdigest()[:10]
    return cache_dir() / "tiny" / f"{arch}-{key}"


def ensure_tiny(name: str, arch: str = "qwen2") -> Path:
    """Path of tiny pool member ``name`` (base, instruct, math, coder, science), built on first use."""
    if name not in POOL_NAMES:
        raise KeyError(name)
    root = pool_dir(arch)
    base, out = root / "base", root / name
    if (out / "config.json").exists():
        return out
    with file_lock(root):  # concurrent first uses (array tasks, test workers) build once
        if not (base / "config.json").exists():
            build_tiny(base, arch=arch, seed=0)
        if not (out / "config.json").exists():
            build_tiny(out, arch=arch, seed=1 + POOL_NAMES.index(name), base=base)
    return out


def ensure_tiny_wide(arch: str = "qwen2", extra_tokens: int = 32) -> Path:
    """A fine-tune of ``arch``'s tiny base with ``extra_tokens`` more tokens (for ``tokenizer_source: union``)."""
    root = pool_dir(arch)
    out = root / f"wide{extra_tokens}"
    if (out / "config.json").exists():
        return out
    base = ensure_tiny("base", arch)
    with file_lock(root):
        if not (out / "config.json").exists():
            build_tiny(out, arch=arch, seed=99, base=base, grow_vocab=extra_tokens)
    return out
