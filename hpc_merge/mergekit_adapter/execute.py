"""Running a merge in-process: mergekit's ``run_merge`` inside hpc_merge's patches, tokenizer files.

The options are :mod:`~hpc_merge.mergekit_adapter.options`; every change to mergekit's behaviour
(progress, bug workarounds, trim, draws, reader, writer, chunking, a split part's restriction) is
applied by :func:`~hpc_merge.mergekit_adapter.patches.mergekit_patches`.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Collection
from pathlib import Path
from typing import Any

from hpc_merge.mergekit_adapter.options import merge_options
from hpc_merge.mergekit_adapter.progress import ProgressFn
from hpc_merge.mergekit_adapter.translate import validate_with_mergekit


def run_mergekit(config: dict[str, Any], out_dir: Path, options: dict[str, Any],
                 progress: ProgressFn | None = None, only_tensors: Collection[str] | None = None) -> None:
    """Run one merge in-process into ``out_dir`` (a fresh folder; the caller makes it atomic).

    ``only_tensors``: write only these output tensors (one part of a split merge, :mod:`hpc_merge.split`);
    each is computed by the same planned task as in the whole merge.
    """
    # mergekit and torch are imported here, not at the top: validating a config must not pay for them
    from mergekit.merge import run_merge

    from hpc_merge.mergekit_adapter.allocator import keep_freed_memory
    from hpc_merge.mergekit_adapter.chunked import ROW_SEPARABLE
    from hpc_merge.mergekit_adapter.patches import mergekit_patches

    merge_config = validate_with_mergekit(config)
    mk_options = merge_options(options)
    if config.get("merge_method") in ROW_SEPARABLE:  # row chunks: their temporaries reuse the heap
        keep_freed_memory()
    try:
        with mergekit_patches(options, mk_options, only_tensors=only_tensors, progress=progress):
            run_merge(merge_config, str(out_dir), options=mk_options)
    except SystemExit as exc:  # mergekit calls sys.exit on some bad configs
        raise RuntimeError(f"mergekit exited ({exc.code}) on this recipe") from None


def copy_tokenizer_files(donor: Path, out_dir: Path) -> None:
    """Copy the donor's tokenizer files (used when mergekit's own copy is skipped)."""
    for name in os.listdir(donor):
        if name.startswith(("tokenizer", "special_tokens_map", "vocab", "merges", "added_tokens", "chat_template")):
            shutil.copy2(donor / name, out_dir / name)


def donor_has_tokenizer(donor: Path) -> bool:
    """mergekit needs tokenizer_config.json plus tokenizer.json or tokenizer.model in the donor."""
    return (donor / "tokenizer_config.json").is_file() and (
        (donor / "tokenizer.json").is_file() or (donor / "tokenizer.model").is_file())
