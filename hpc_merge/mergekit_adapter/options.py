"""``job.options`` -> mergekit's ``MergeOptions``, with our own options checked and removed.

Why its own module: the merge (:mod:`~hpc_merge.mergekit_adapter.execute`), the split planner
(:mod:`~hpc_merge.mergekit_adapter.tensorplan`), the in-memory merge and the job validations all
need the same options; with them here, those modules import this one and not each other.
"""

from __future__ import annotations

from typing import Any

from hpc_merge.errors import ConfigError
from hpc_merge.mergekit_adapter.trim import sparsify_mode

#: ``job.options.chunk_size`` when null: tensors above 16 MiB are merged in row chunks (``chunked.py``).
DEFAULT_CHUNK_SIZE = "16M"


def merge_options(options: dict[str, Any]) -> Any:
    """``job.options`` -> ``MergeOptions`` (device ``auto`` picks cuda when there is a GPU).

    Our own options are checked and removed here (mergekit's pydantic model would reject them):
    ``device: auto``, ``sparsify`` (see :mod:`hpc_merge.mergekit_adapter.trim`) and ``chunk_size``
    (see :mod:`hpc_merge.mergekit_adapter.chunked`). torch and mergekit are imported here, not at
    the top: validating a config must not pay for them.
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
    raw = options.get("chunk_size")
    example = "e.g. 16M, or 0 to merge whole tensors"
    size = _size(DEFAULT_CHUNK_SIZE if raw is None else raw, "chunk_size", example)
    if size < 0:
        raise ConfigError("job.options.chunk_size", f"bad size {raw!r}",
                          f"use bytes with an optional K/M/B suffix, {example}")
    return size
