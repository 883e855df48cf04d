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
as a copy (:func:`cached_configs`), since the sources of an in-memory merge do not change.
"""

from __future__ import annotations

import contextlib
import copy
import os
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import torch

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


@contextlib.contextmanager
def memory_loaders(merge_config: Any, sources: dict[str, Tensors]) -> Iterator[None]:
    """Serve every model ``merge_config`` references from ``sources`` (keyed by its path)."""
    from mergekit.io.tasks import LoaderCache

    cache = LoaderCache()
    cache.loaders.clear()
    for ref in merge_config.referenced_models():
        path = str(ref.model.path)
        if path not in sources:
            raise KeyError(f"model {path} is not loaded in this worker")
        cache.loaders[ref] = MemoryLoader(sources[path], path)
    try:
        yield
    finally:
        cache.loaders.clear()


#: (path, revision, override_architecture, trust_remote_code, config.json's mtime and size) -> config
_CONFIGS: dict[tuple, Any] = {}


def _config_stamp(path: str) -> tuple[int, int] | None:
    try:
        st = os.stat(os.path.join(path, "config.json"))
    except OSError:  # not a local folder (hub id, LoRA...): leave it to mergekit
        return None
    return st.st_mtime_ns, st.st_size


@contextlib.contextmanager
def cached_configs() -> Iterator[None]:
    """Inside the block ``ModelReference.config`` reads each local ``config.json`` once; callers get copies.

    mergekit mutates the config it gets (``_model_out_config``), hence the copies; the key holds
    the file's mtime and size, so a rewritten model is read again.
    """
    from mergekit.common import ModelReference

    real = ModelReference.config

    def config(self: Any, trust_remote_code: bool = False) -> Any:
        path = str(self.model.path)
        stamp = _config_stamp(path) if self.lora is None else None
        if stamp is None:
            return real(self, trust_remote_code)
        key = (path, self.model.revision, self.override_architecture, bool(trust_remote_code), stamp)
        if key not in _CONFIGS:
            if len(_CONFIGS) > 64:
                _CONFIGS.clear()
            _CONFIGS[key] = real(self, trust_remote_code)
        return copy.deepcopy(_CONFIGS[key])

    ModelReference.config = config
    try:
        yield
    finally:
        ModelReference.config = real


def merge_in_memory(config: dict[str, Any], sources: dict[str, Tensors], options: dict[str, Any],
                    seed: int | None = None) -> Tensors:
    """Run the mergekit ``config`` (paths as model refs) over ``sources``; return the merged tensors.

    ``seed`` seeds the random methods (dare, della) the way ``run_merge`` does with
    ``random_seed``; the result is keyed by checkpoint tensor name.
    """
    import transformers
    from mergekit.common import dtype_from_name
    from mergekit.graph import Executor
    from mergekit.merge import _model_out_config
    from mergekit.plan import MergePlanner

    from hpc_merge.mergekit_adapter import (
        architecture_info,
        magnitude_trim,
        merge_options,
        sparsify_mode,
        validate_with_mergekit,
    )

    merge_config = validate_with_mergekit(config)
    trim = sparsify_mode(options)  # the same TIES trim as run_mergekit, so memory == disk
    opts = merge_options({k: v for k, v in options.items() if k != "sparsify"})
    if seed is not None:
        transformers.trainer_utils.set_seed(int(seed))
    from hpc_merge.mergekit_adapter.random_sparsify import counter_random

    # the same random draws as run_mergekit (counter-based, keyed by seed and tensor name), so memory == disk
    draws = counter_random(int(seed) if seed is not None else opts.random_seed, trim)
    with magnitude_trim(trim), draws, memory_loaders(merge_config, sources), cached_configs():
        arch = architecture_info(merge_config, opts)  # mergekit's table with our fixes (archsupport.py)
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
