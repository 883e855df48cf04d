"""Running a merge in-process: options, progress from mergekit's executor, bug workarounds."""

from __future__ import annotations

import os
import time
import types
from collections.abc import Callable, Collection
from pathlib import Path
from typing import Any

from hpc_merge.errors import ConfigError
from hpc_merge.mergekit_adapter.random_sparsify import counter_random
from hpc_merge.mergekit_adapter.reader import pread_inputs
from hpc_merge.mergekit_adapter.translate import validate_with_mergekit
from hpc_merge.mergekit_adapter.trim import magnitude_trim, sparsify_mode


def merge_options(options: dict[str, Any]) -> Any:
    """``job.options`` -> ``MergeOptions`` (device ``auto`` picks cuda when there is a GPU).

    Our own options are checked and removed here (mergekit's pydantic model would reject them):
    ``device: auto``, ``sparsify`` (see :mod:`hpc_merge.mergekit_adapter.trim`) and ``chunk_size``
    (see :mod:`hpc_merge.mergekit_adapter.chunked`).
    """
    import torch
    from mergekit.options import MergeOptions

    opts = dict(options)
    sparsify_mode(opts)
    chunk_size(opts)
    opts.pop("sparsify", None)
    opts.pop("chunk_size", None)
    if opts.get("out_shard_size") is not None:
        opts["out_shard_size"] = _size(opts["out_shard_size"], "out_shard_size", "e.g. 500M")
    device = opts.pop("device", "auto")
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    opts["cuda"] = device == "cuda"
    opts["device"] = device
    if opts.get("num_threads") is None:
        opts.pop("num_threads", None)
    opts.update(copy_tokenizer=True, write_model_card=False, quiet=True)
    try:
        return MergeOptions(**opts)
    except Exception as exc:
        msg = str(exc).strip().splitlines()
        raise ConfigError("job.options", f"mergekit rejects the options: {' '.join(msg[:3])}", "fix job.options") from None


def _size(raw: Any, option: str, example: str) -> int:
    """A byte count with mergekit's K/M/B suffixes; a bad one is one ConfigError naming ``job.options.OPTION``."""
    from mergekit.common import parse_kmb

    try:
        return parse_kmb(str(raw))
    except ValueError:
        raise ConfigError(f"job.options.{option}", f"bad size {raw!r}",
                          f"use bytes with an optional K/M/B suffix, {example}") from None


def chunk_size(options: dict[str, Any]) -> int:
    """``job.options.chunk_size`` in bytes (null = 16M; 0 = merge every tensor whole), checked."""
    from hpc_merge.mergekit_adapter.chunked import DEFAULT_CHUNK_SIZE

    raw = options.get("chunk_size")
    example = "e.g. 16M, or 0 to merge whole tensors"
    size = _size(DEFAULT_CHUNK_SIZE if raw is None else raw, "chunk_size", example)
    if size < 0:
        raise ConfigError("job.options.chunk_size", f"bad size {raw!r}",
                          f"use bytes with an optional K/M/B suffix, {example}")
    return size


ProgressFn = Callable[[dict[str, Any]], None]


class _ProgressTqdm:
    """Stands in for ``tqdm.tqdm`` inside ``mergekit.graph``: counts executed graph tasks.

    mergekit's executor iterates its schedule through tqdm; counting that iteration is progress
    measured from the execution itself (tasks done, tensors loaded and saved).
    """

    def __init__(self, callback: ProgressFn, every_s: float = 0.25):
        self.callback = callback
        self.every_s = every_s  # status.json is rewritten per call: 4 times a second is live enough

    def tqdm(self, iterable: Any = None, **_kw: Any) -> Any:
        items = list(iterable or [])
        total = len(items)
        kinds = [type(th.task()).__name__ for _, th in items] if items and isinstance(items[0], tuple) else []
        total_saves = sum(k == "SaveTensor" for k in kinds)
        total_loads = sum(k == "LoadTensor" for k in kinds)

        def gen():
            saves = loads = 0
            last = 0.0
            for n, item in enumerate(items):
                yield item
                if kinds:
                    saves += kinds[n] == "SaveTensor"
                    loads += kinds[n] == "LoadTensor"
                now = time.monotonic()
                if now - last >= self.every_s or n + 1 == total:
                    last = now
                    self.callback({"tasks_done": n + 1, "tasks_total": total, "tensors_done": saves,
                                   "tensors_total": total_saves, "loads_done": loads, "loads_total": total_loads})

        return gen()


def run_mergekit(config: dict[str, Any], out_dir: Path, options: dict[str, Any],
                 progress: ProgressFn | None = None, only_tensors: Collection[str] | None = None) -> None:
    """Run one merge in-process into ``out_dir`` (a fresh folder; the caller makes it atomic).

    ``only_tensors``: write only these output tensors (one part of a split merge, :mod:`hpc_merge.split`);
    each is computed by the same planned task as in the whole merge.
    """
    import mergekit.graph
    import mergekit.merge
    from mergekit.io.tasks import LoaderCache

    from hpc_merge.mergekit_adapter.archsupport import architecture_fixes
    from hpc_merge.mergekit_adapter.chunked import chunk_large_tensors
    from hpc_merge.mergekit_adapter.tensorplan import restrict_plan
    from hpc_merge.mergekit_adapter.writer import stream_writes

    merge_config = validate_with_mergekit(config)
    mk_options = merge_options(options)
    on_cpu = mk_options.device == "cpu" and not mk_options.multi_gpu and not mk_options.read_to_gpu
    chunk_bytes = chunk_size(options) if on_cpu else 0
    LoaderCache.loaders.clear()  # inputs may have been rewritten since an earlier merge in this process
    real_tqdm, real_out_config = mergekit.graph.tqdm, mergekit.merge._model_out_config
    if progress is not None:
        mergekit.graph.tqdm = types.SimpleNamespace(tqdm=_ProgressTqdm(progress).tqdm)
    mergekit.merge._model_out_config = _with_layer_types_fixed(real_out_config)
    try:
        # exact-k O(n) trim and counter-based DARE masks unless sparsify: mergekit; for peak RSS: inputs read, not kept mapped,
        # the largest tensors merged in row chunks, each output tensor written as soon as it is merged
        trim = sparsify_mode(options)
        with restrict_plan(only_tensors), magnitude_trim(trim), counter_random(mk_options.random_seed, trim), pread_inputs(), \
                chunk_large_tensors(chunk_bytes, trim), stream_writes(), \
                architecture_fixes():
            mergekit.merge.run_merge(merge_config, str(out_dir), options=mk_options)
    except SystemExit as exc:  # mergekit calls sys.exit on some bad configs
        raise RuntimeError(f"mergekit exited ({exc.code}) on this recipe") from None
    finally:
        mergekit.graph.tqdm, mergekit.merge._model_out_config = real_tqdm, real_out_config
        LoaderCache.loaders.clear()


def _with_layer_types_fixed(model_out_config: Callable[..., Any]) -> Callable[..., Any]:
    """Wrap mergekit's ``_model_out_config`` so the per-layer settings describe the merged layers.

    A passthrough that changes depth sets ``num_hidden_layers`` but leaves the donor's
    ``layer_types``; transformers 5 then refuses to save or load the config (after all shards are
    written), and a layer moved across the donor's pattern would load the wrong block. Each output
    layer keeps its source layer's type (``archsupport.fix_output_config``).
    """
    from hpc_merge.mergekit_adapter.archsupport import fix_output_config

    def wrapped(*args: Any, **kwargs: Any) -> Any:
        cfg = model_out_config(*args, **kwargs)
        fix_output_config(args[0] if args else kwargs["config"], cfg)  # layers keep their source's type
        return cfg

    return wrapped


def copy_tokenizer_files(donor: Path, out_dir: Path) -> None:
    """Copy the donor's tokenizer files (used when mergekit's own copy is skipped)."""
    import shutil

    for name in os.listdir(donor):
        if name.startswith(("tokenizer", "special_tokens_map", "vocab", "merges", "added_tokens", "chat_template")):
            shutil.copy2(donor / name, out_dir / name)


def donor_has_tokenizer(donor: Path) -> bool:
    """mergekit needs tokenizer_config.json plus tokenizer.json or tokenizer.model in the donor."""
    return (donor / "tokenizer_config.json").is_file() and (
        (donor / "tokenizer.json").is_file() or (donor / "tokenizer.model").is_file())
