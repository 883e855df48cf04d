"""Merge a recipe over source weights that are already in memory, with mergekit's own planner.

Evolution evaluates hundreds of candidates over the same few source models; reading every source
from disk and writing every candidate back costs more than the merge itself. mergekit plans a
merge as a graph whose leaves load tensors through a process-wide ``LoaderCache``; installing
loaders that serve preloaded tensors there lets ``MergePlanner.plan_in_memory`` run the exact
same per-tensor plan (gradients, filters, dtype, tokenizer alignment) with no file I/O, so a
candidate merged here equals the one ``run_mergekit`` writes (tested). Used by evolution's
workers; it lives in the adapter because it reaches into mergekit's planner and executor.

mergekit reads a model's ``config.json`` again every time it asks for it (16 times per merge of a
five-model recipe, ≈ 0.6 ms each); inside ``merge_in_memory`` each is read once and handed out
as a copy (``patches.cached_configs``), since the sources of an in-memory merge do not change.
Both the loaders and the config cache are installed by ``patches.mergekit_patches``.
"""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any

import torch
from mergekit.common import dtype_from_name
from mergekit.graph import Executor
from mergekit.merge import _model_out_config
from mergekit.plan import MergePlanner

from hpc_merge.mergekit_adapter.archfix import architecture_info
from hpc_merge.mergekit_adapter.options import merge_options
from hpc_merge.mergekit_adapter.patches import mergekit_patches
from hpc_merge.mergekit_adapter.translate import validate_with_mergekit

Tensors = dict[str, torch.Tensor]


class MemoryLoader:
    """Duck-types ``mergekit.io.lazy_tensor_loader.LazyTensorLoader`` over a dict of tensors."""

    def __init__(self, tensors: Tensors, name: str = "memory"):
        self.tensors = tensors
        self.index = SimpleNamespace(tensor_paths={k: name for k in tensors}, base_path=name)

    def get_tensor(self, key: str, device: str = "cpu", aliases: list[str] | None = None,
                   raise_on_missing: bool = True) -> torch.Tensor | None:
        """The tensor ``key`` (or its first present alias), like the lazy loader."""
        for name in [key, *(aliases or [])]:
            if name in self.tensors:
                return self.tensors[name].to(device)
        if raise_on_missing:
            raise KeyError(key)
        return None

    def flush(self) -> None:
        """Nothing to flush: the tensors stay loaded (that is the point)."""


def load_tensors(model_dir: str | Path) -> Tensors:
    """Every tensor of a model folder (safetensors or .bin, sharded or not), read once."""
    from mergekit.io.lazy_tensor_loader import LazyTensorLoader

    loader = LazyTensorLoader.from_disk(str(model_dir), lazy_unpickle=False)
    out = {name: loader.get_tensor(name) for name in sorted(loader.index.tensor_paths)}
    loader.flush()
    return out


def memory_loaders(merge_config: Any, sources: dict[str, Tensors]) -> dict[Any, MemoryLoader]:
    """A loader for every model ``merge_config`` references, serving ``sources`` (keyed by its path)."""
    loaders = {}
    for ref in merge_config.referenced_models():
        path = str(ref.model.path)
        if path not in sources:
            raise KeyError(f"model {path} is not loaded in this worker")
        loaders[ref] = MemoryLoader(sources[path], path)
    return loaders


def merge_in_memory(config: dict[str, Any], sources: dict[str, Tensors], options: dict[str, Any],
                    seed: int | None = None) -> Tensors:
    """Run the mergekit ``config`` (paths as model refs) over ``sources``; return the merged tensors.

    ``seed`` seeds the random methods (dare, della) the way ``run_merge`` does with
    ``random_seed``; the result is keyed by checkpoint tensor name.
    """
    import transformers

    merge_config = validate_with_mergekit(config)
    opts = merge_options(options)
    if seed is not None:
        transformers.trainer_utils.set_seed(int(seed))
    # the same TIES trim and random draws (counter-based, keyed by seed and tensor name) as
    # run_mergekit, so memory == disk; mergekit's loaders serve the preloaded sources
    with mergekit_patches(options, opts, loaders=memory_loaders(merge_config, sources),
                          seed=int(seed) if seed is not None else None):
        arch = architecture_info(merge_config, opts)  # mergekit's table with our fixes (archfix.py)
        out_cfg = _model_out_config(merge_config, arch, trust_remote_code=opts.trust_remote_code)
        planner = MergePlanner(merge_config, arch, options=opts, out_model_config=out_cfg)
        # plan_in_memory() wraps each task in ReturnTensor, whose pydantic field Task[Tensor] fails
        # to validate in 0.1.5 ("Can't instantiate abstract class"); take the planned tasks instead
        planner._plan()
        weights: dict[Any, list[Any]] = {}
        for weight, task in planner._tensors:
            weights.setdefault(task, []).append(weight)
        executor = Executor(list(weights), math_device=opts.device, storage_device="cpu")
        out: Tensors = {}
        for task, value in executor.run(quiet=True):
            for weight in weights[task]:
                dtype = weight.force_dtype or merge_config.out_dtype
                out[weight.name] = value.to(dtype_from_name(dtype)) if dtype else value
        return out


def load_into(model: torch.nn.Module, tensors: Tensors) -> None:
    """Put merged tensors into a preloaded model skeleton (cast to its dtype), strictly.

    A merge with ``tokenizer_source`` can change the vocabulary size: such tensors replace the
    skeleton's parameters (and ``config.vocab_size`` follows), as the saved model's config would.
    """
    params = model.state_dict()
    missing = sorted(set(params) - set(tensors))
    unexpected = sorted(set(tensors) - set(params))
    if unexpected or [k for k in missing if not k.endswith(("rotary_emb.inv_freq",))]:
        raise RuntimeError(f"merged tensors do not fit the model: missing {missing[:3]}, unexpected {unexpected[:3]}")
    with torch.no_grad():
        for name, value in tensors.items():
            target = params[name]
            if target.shape == value.shape:
                target.copy_(value)
                continue
            owner, _, attr = name.rpartition(".")
            setattr(model.get_submodule(owner), attr, torch.nn.Parameter(value.to(target.dtype), requires_grad=False))
    embed = model.get_input_embeddings()
    if embed is not None and getattr(model.config, "vocab_size", None) != embed.weight.shape[0]:
        model.config.vocab_size = embed.weight.shape[0]
        if hasattr(embed, "num_embeddings"):
            embed.num_embeddings = embed.weight.shape[0]
