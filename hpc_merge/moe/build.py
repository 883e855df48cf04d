"""Build an MoE model folder from a validated :class:`MoePlan`, atomically.

Order: gate vectors (the only step that runs a model) -> weights + config (mergekit's writer or
ours) -> tokenizer copied from the base -> model card. All of it happens in a temp folder that is
renamed into place only when complete, with files 0644 (see :func:`hpc_merge.atomic.atomic_dir`).
"""

from __future__ import annotations

import logging
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hpc_merge import console
from hpc_merge.atomic import atomic_dir
from hpc_merge.moe.arch import has_tokenizer
from hpc_merge.moe.card import write_card
from hpc_merge.moe.plan import MoePlan

log = logging.getLogger(__name__)

#: Tokenizer-side files copied verbatim from the base model (a re-save could change them).
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "tokenizer.model",
                   "vocab.json", "merges.txt", "added_tokens.json", "chat_template.jinja", "chat_template.json",
                   "generation_config.json")


@dataclass(frozen=True)
class BuildOptions:
    """The subset of ``job.options`` the MoE builder uses."""

    device: str = "auto"
    random_seed: int = 0
    out_shard_size: int | str = "1B"
    safe_serialization: bool = True
    num_threads: int | None = None

    def resolved_device(self) -> str:
        """``auto`` -> cuda when this node has a GPU, else cpu."""
        if self.device != "auto":
            return self.device
        import torch

        return "cuda" if torch.cuda.is_available() else "cpu"

    def merge_options(self):
        """mergekit ``MergeOptions`` for the writers, through the project's one mergekit adapter."""
        from hpc_merge.mergekit_adapter import merge_options

        return merge_options({"device": self.resolved_device(), "out_shard_size": self.out_shard_size,
                              "safe_serialization": self.safe_serialization, "random_seed": self.random_seed})


def copy_tokenizer(src: str | Path, dest: Path) -> list[str]:
    """Copy the base model's tokenizer files into ``dest``; returns the names copied."""
    copied = []
    for name in TOKENIZER_FILES:
        if (Path(src) / name).is_file():
            shutil.copyfile(Path(src) / name, dest / name)
            copied.append(name)
    return copied


def build_moe(plan: MoePlan, out_dir: str | Path, options: BuildOptions | None = None,
              overwrite: bool = False, finish: Callable[[Path], None] | None = None,
              replace_if: Callable[[Path], bool] | None = None) -> dict[str, Any]:
    """Write the MoE described by ``plan`` to ``out_dir``; returns what was built and timings.

    ``finish`` and ``replace_if`` go to :func:`~hpc_merge.atomic.atomic_dir` (the job marks its
    output as hpc_merge's and replaces only what it may: :func:`hpc_merge.run.outputs.output_hooks`).
    """
    import torch

    options = options or BuildOptions()
    if options.num_threads:
        torch.set_num_threads(int(options.num_threads))
    out_dir = Path(out_dir)
    timings: dict[str, float] = {}
    t0 = time.time()
    from hpc_merge.moe.gates import gate_vectors

    router, shared = gate_vectors(plan, device=options.resolved_device(), seed=options.random_seed)
    timings["gates_s"] = round(time.time() - t0, 3)
    with atomic_dir(out_dir, overwrite=overwrite, finish=finish, replace_if=replace_if) as tmp, \
            console.task(f"MoE: writing {len(plan.experts)} experts"):
        t1 = time.time()
        torch.manual_seed(options.random_seed)  # noise_scale draws from the global RNG
        if plan.writer == "mergekit":
            from hpc_merge.moe.mergekit_writer import write_with_mergekit

            write_with_mergekit(plan, tmp, options.merge_options(), router, shared)
        else:
            from hpc_merge.moe.writers import write_own

            write_own(plan, tmp, options.merge_options(), router)
        timings["write_s"] = round(time.time() - t1, 3)
        tokenizer = copy_tokenizer(plan.base_path, tmp) if has_tokenizer(plan.base_path) else []
        info = {"output_arch": plan.output_arch, "writer": plan.writer, "source_type": plan.source_type,
                "n_experts": len(plan.experts), "n_shared_experts": len(plan.shared_experts),
                "experts_per_token": plan.experts_per_token, "gate_mode": plan.gate_mode,
                "tokenizer_files": tokenizer, "findings": list(plan.findings)}
        write_card(tmp, plan, info)
    timings["build_s"] = round(time.time() - t0, 3)
    info["timings"] = timings
    info["output_model"] = str(out_dir)
    return info
