"""The output tensors a merge plans, with the bytes each one reads (to split a merge into parts).

Why: mergekit merges tensor by tensor, so one merge can be split by output tensor over several
processes or SLURM tasks (:mod:`hpc_merge.split`). Splitting needs the planned output names with
the bytes each one reads (to balance the parts), and each part needs the same planned tasks as
the whole merge, only for its own tensors (``only_tensors`` of
:func:`~hpc_merge.mergekit_adapter.patches.mergekit_patches`). Both come from mergekit's own
``MergePlanner``, so a part computes exactly what the whole merge would (same method task, same
chunking, same writer).
"""

from __future__ import annotations

from typing import Any

from hpc_merge.mergekit_adapter.archfix import architecture_info
from hpc_merge.mergekit_adapter.options import merge_options
from hpc_merge.mergekit_adapter.patches import fresh_loader_cache
from hpc_merge.mergekit_adapter.translate import validate_with_mergekit


def planned_tensors(config: dict[str, Any], options: dict[str, Any]) -> list[tuple[str, int]]:
    """``[(output tensor name, bytes read to merge it), ...]`` in mergekit's planned order.

    The bytes are the stored sizes (safetensors headers, no data read) of every input tensor the
    tensor's task loads; a tensor whose inputs are not safetensors counts its loads as 0 bytes.
    """
    import mergekit.merge
    from mergekit.io.tasks import LoaderCache
    from mergekit.plan import MergePlanner

    merge_config = validate_with_mergekit(config)
    mk_options = merge_options(options)
    arch_info = architecture_info(merge_config, mk_options)
    with fresh_loader_cache():
        LoaderCache().setup(options=mk_options)
        cfg_out = mergekit.merge._model_out_config(merge_config, arch_info,
                                                   trust_remote_code=mk_options.trust_remote_code)
        planner = MergePlanner(merge_config, arch_info, options=mk_options, out_model_config=cfg_out)
        planner._plan()
        sizes = _StoredSizes()
        return [(weight.name, sum(sizes.of(load) for load in _loads(task))) for weight, task in planner._tensors]


def _loads(task: Any) -> list[Any]:
    """Every distinct ``LoadTensor`` in a planned task's dependency tree."""
    from mergekit.io.tasks import LoadTensor

    seen: dict[int, Any] = {}
    stack = [task]
    while stack:
        t = stack.pop()
        if id(t) in seen:
            continue
        seen[id(t)] = t
        stack.extend(t.arguments().values())
    return [t for t in seen.values() if isinstance(t, LoadTensor)]


class _StoredSizes:
    """Bytes of a planned load as stored, from the shard headers (each header read once)."""

    def __init__(self) -> None:
        self.headers: dict[str, dict[str, Any]] = {}

    def of(self, load: Any) -> int:
        import json
        import os

        from mergekit.io.tasks import LoaderCache

        loader = LoaderCache().get(load.model)
        name = load._resolve_name(loader) if hasattr(loader, "index") else None
        if name is None:
            return 0
        path = os.path.join(loader.index.base_path, loader.index.tensor_paths[name])
        if not path.endswith(".safetensors"):
            return 0
        if path not in self.headers:
            with open(path, "rb") as fh:
                n = int.from_bytes(fh.read(8), "little")
                self.headers[path] = json.loads(fh.read(n))
        start, stop = self.headers[path][name]["data_offsets"]
        return int(stop) - int(start)
