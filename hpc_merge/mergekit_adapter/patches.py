"""Every runtime patch hpc_merge makes to mergekit, and the one context manager that applies them.

Why one module: mergekit (0.1.5) has no hooks for what we change (the trim, random draws, input
reader, shard writer, plan, architecture tables, output config, progress), so we replace its
functions and class attributes for the duration of a merge. Each patch here is one small context
manager that restores what it replaced (one planner hook, not stacked ones), and
:func:`mergekit_patches` applies them in one documented order for every kind of merge: on disk
(``run_mergekit``), chunked, a split part (``only_tensors``) and in memory (``loaders``). The
kernels the patches install live in their own modules (``trim``, ``random_sparsify``, ``reader``,
``chunked``, ``writer``, ``archfix``, ``layerfix``, ``progress``, ``configcache``).

Every mergekit name patched here is listed by the canary test (``tests/unit/test_mergekit_seam.py``),
which also checks that no other module assigns to mergekit.
"""

from __future__ import annotations

import contextlib
import types
from collections.abc import Callable, Collection, Iterator, Mapping
from typing import Any

import mergekit.graph
import mergekit.io.tasks
import mergekit.merge
import mergekit.merge_methods.arcee_fusion
import mergekit.merge_methods.ram
import mergekit.merge_methods.sce
import mergekit.sparsify
from mergekit.common import ModelReference
from mergekit.io.loader import TensorLoader
from mergekit.io.tasks import LoaderCache
from mergekit.merge_methods.generalized_task_arithmetic import GeneralizedTaskArithmeticMerge
from mergekit.merge_methods.task_adapter import ExecuteMergeMethodTask
from mergekit.plan import MergePlanner

from hpc_merge.mergekit_adapter import (
    fused_combine,
    fused_ram,
    fused_sce,
    ram_counts,
    random_sparsify,
    streamed_fusion,
)
from hpc_merge.mergekit_adapter import writer as writer_module
from hpc_merge.mergekit_adapter.archfix import architecture_info
from hpc_merge.mergekit_adapter.chunked import chunk_plan
from hpc_merge.mergekit_adapter.configcache import read_once
from hpc_merge.mergekit_adapter.layerfix import fix_output_config
from hpc_merge.mergekit_adapter.options import chunk_size
from hpc_merge.mergekit_adapter.progress import ProgressFn, ProgressTqdm
from hpc_merge.mergekit_adapter.reader import PreadSafetensors
from hpc_merge.mergekit_adapter.trim import exact_magnitude, exact_outliers, exact_sce_mask, sparsify_mode
from hpc_merge.mergekit_adapter.writer import StreamingTensorWriter, header_room, reserve_headers

#: A plan transform: ``MergePlanner._tensors`` in, the list the planner keeps out.
PlanTransform = Callable[[list[tuple[Any, Any]], str | None], list[tuple[Any, Any]]]  # (plan, out_dtype)


@contextlib.contextmanager
def mergekit_patches(options: dict[str, Any], mk_options: Any, *, only_tensors: Collection[str] | None = None,
                     progress: ProgressFn | None = None, loaders: Mapping[Any, Any] | None = None,
                     seed: int | None = None) -> Iterator[list[str]]:
    """Inside the block, mergekit merges the way hpc_merge does; everything is restored after.

    ``options``: ``job.options`` (``sparsify``, ``chunk_size``); ``mk_options``: their
    ``MergeOptions``; ``only_tensors``: plan only these output tensors (a split merge's part);
    ``progress``: called with task counts; ``loaders``: an in-memory merge (model reference ->
    loader serving preloaded tensors; nothing is read from or written to disk); ``seed``: the
    random methods' seed when not ``mk_options.random_seed``. Yields the names of the tensors the
    plan merges in row chunks.

    Applied in this order (each restored in reverse):

    1. ``LoaderCache.loaders`` emptied (inputs may have been rewritten since an earlier merge in
       this process), or filled with ``loaders``; emptied again after.
    2. ``ModelReference.config`` read once per model (in memory only: the sources do not change).
    3. ``mergekit.sparsify.magnitude`` / ``magnitude_outliers`` and ``mergekit.merge_methods.sce.sce_mask``:
       the exact-k trim, and
    4. ``mergekit.sparsify.bernoulli`` / ``della_magprune`` + ``ExecuteMergeMethodTask.execute``:
       counter-based draws, and ``GeneralizedTaskArithmeticMerge.merge_group``, ``sce_merge``'s
       and ``ram_merge``'s implementations: the combine step fused into one bit-identical kernel (bf16 on CPU),
       and ``ramplus_tl_merge``'s: row chunks with the whole tensor's counts (``ram_counts``) — all
       unless ``sparsify: mergekit``.
    4b. ``DynamicThresholdFusion.calculate_dynamic_threshold`` (arcee_fusion): the whole tensor's
       threshold inside a chunked merge (``streamed_fusion``); mergekit's own function elsewhere.
    5. On disk: ``TensorLoader.get`` (``pread`` inputs), ``mergekit.io.tasks.TensorWriter``
       (streamed shards), ``mergekit.merge.get_architecture_info`` (fixed tables) and
       ``mergekit.merge._model_out_config`` (per-layer settings of the merged layers).
    6. ``MergePlanner._plan``: one hook, transforms in this order — restrict to ``only_tensors``,
       chunk large tensors (CPU, ``chunk_size > 0``), reserve the streamed shards' header room —
       so chunking and the header bound see the restricted plan.
    7. ``mergekit.graph.tqdm``: progress, when ``progress`` is given.
    """
    trim = sparsify_mode(options)
    on_disk = loaders is None
    on_cpu = mk_options.device == "cpu" and not mk_options.multi_gpu and not mk_options.read_to_gpu
    chunk_bytes = chunk_size(options) if on_disk and on_cpu else 0
    chunked: list[str] = []
    transforms: list[PlanTransform] = []
    if only_tensors is not None:
        transforms.append(restrict_to(only_tensors))
    if chunk_bytes > 0:
        transforms.append(chunk_plan(chunk_bytes, trim, chunked))
    with contextlib.ExitStack() as stack:
        stack.enter_context(fresh_loader_cache(loaders))
        if not on_disk:
            stack.enter_context(cached_configs())
        stack.enter_context(magnitude_trim(trim))
        stack.enter_context(counter_random(seed if seed is not None else mk_options.random_seed, trim))
        stack.enter_context(fused_combine_step(trim))
        stack.enter_context(fusion_threshold())
        if on_disk:
            stack.enter_context(pread_inputs())
            stack.enter_context(stream_writes())
            stack.enter_context(architecture_fixes())
            stack.enter_context(output_config_fixed())
            transforms.append(reserve_headers)
        stack.enter_context(planner_hook(transforms))
        if progress is not None:
            stack.enter_context(progress_reported(progress))
        yield chunked


@contextlib.contextmanager
def _replaced(owner: Any, name: str, value: Any) -> Iterator[None]:
    """``owner.name = value`` inside the block; after it, the attribute as stored before.

    A class's own attribute is restored as stored (a classmethod stays one); an inherited one is
    deleted again, so the class inherits it as before.
    """
    own = vars(owner)
    inherited = isinstance(owner, type) and name not in own
    real = None if inherited else own[name]
    setattr(owner, name, value)
    try:
        yield
    finally:
        if inherited:
            delattr(owner, name)
        else:
            setattr(owner, name, real)


@contextlib.contextmanager
def fresh_loader_cache(loaders: Mapping[Any, Any] | None = None) -> Iterator[None]:
    """mergekit's process-wide ``LoaderCache.loaders`` empty (or holding ``loaders``) inside, empty after.

    mergekit keeps every input's loader for the life of the process; a model rewritten between
    two merges (a pipeline stage, a test) would be read stale.
    """
    LoaderCache.loaders.clear()
    LoaderCache.loaders.update(loaders or {})
    try:
        yield
    finally:
        LoaderCache.loaders.clear()


def restrict_to(names: Collection[str]) -> PlanTransform:
    """The plan transform that keeps only the output tensors in ``names`` (a split merge's part).

    A name the planner does not produce is an error: the part was planned for another merge.
    """
    wanted = set(names)

    def restrict(planned: list[tuple[Any, Any]], _out_dtype: str | None = None) -> list[tuple[Any, Any]]:
        missing = sorted(wanted - {weight.name for weight, _task in planned})
        if missing:
            raise RuntimeError(f"{len(missing)} tensor(s) of this part are not in the merge's plan, e.g. {missing[0]!r}")
        return [(w, t) for w, t in planned if w.name in wanted]

    return restrict


@contextlib.contextmanager
def planner_hook(transforms: list[PlanTransform]) -> Iterator[None]:
    """The one replacement of ``MergePlanner._plan``: mergekit plans, then ``transforms`` run in list
    order, each given the plan and the merge's ``out_dtype`` (what mergekit's ``SaveTensor`` casts to)."""
    if not transforms:
        yield
        return
    real = MergePlanner._plan

    def _plan(planner: MergePlanner) -> None:
        real(planner)
        for transform in transforms:
            planner._tensors = transform(planner._tensors, planner.config.out_dtype)

    with _replaced(MergePlanner, "_plan", _plan):
        yield


@contextlib.contextmanager
def magnitude_trim(mode: str = "fast") -> Iterator[None]:
    """The exact-k trims (``trim.py``) for ``magnitude``, ``magnitude_outliers`` and SCE's
    ``sce_mask`` inside the block (``fast``).

    ``mergekit.sparsify.sparsify`` and ``sce_merge`` look them up in their modules at call time, so
    replacing the module attributes reaches every merge method that trims by magnitude or variance.
    """
    if mode == "mergekit":
        yield
        return
    with _replaced(mergekit.sparsify, "magnitude", exact_magnitude), \
            _replaced(mergekit.sparsify, "magnitude_outliers", exact_outliers), \
            _replaced(mergekit.merge_methods.sce, "sce_mask", exact_sce_mask):
        yield


@contextlib.contextmanager
def counter_random(seed: int | None, mode: str = "fast") -> Iterator[None]:
    """Inside the block DARE and DELLA draw with the counter-based masks of ``random_sparsify.py`` (``fast``).

    Every planned merge task runs with its tensor's name as the draw site unless a chunked merge
    set a finer one (row offset, streamed norms).
    """
    if mode == "mergekit":
        yield
        return
    real_execute = ExecuteMergeMethodTask.execute

    def execute(self: ExecuteMergeMethodTask, **kwargs: Any) -> Any:
        site = random_sparsify.SITE.get()
        if site is not None and site.name == self.output_weight.name:  # a chunk: the chunked merge set it
            site.calls = 0
            return real_execute(self, **kwargs)
        with random_sparsify.at(random_sparsify.Site(seed=seed or 0, name=self.output_weight.name)):
            return real_execute(self, **kwargs)

    token = random_sparsify.SEED.set(seed or 0)
    try:
        with _replaced(mergekit.sparsify, "bernoulli", random_sparsify.counter_bernoulli), \
                _replaced(mergekit.sparsify, "della_magprune", random_sparsify.counter_della), \
                _replaced(ExecuteMergeMethodTask, "execute", execute):
            yield
    finally:
        random_sparsify.SEED.reset(token)


@contextlib.contextmanager
def fused_combine_step(mode: str = "fast") -> Iterator[None]:
    """Inside the block the task-arithmetic family and SCE combine their task vectors in one kernel (``fast``).

    ``fused_combine.merge_group`` forms and sparsifies the task vectors as mergekit does, then
    weights, elects signs, sums, normalises and adds the base in one numba pass, bit-identical to
    mergekit's bf16 arithmetic; ``fused_sce.merge`` does the same for ``sce_merge`` after its
    select step; other dtypes and devices run mergekit's own code.
    """
    if mode == "mergekit":
        yield
        return
    real = GeneralizedTaskArithmeticMerge.merge_group
    sce = mergekit.merge_methods.sce.sce_merge  # the registered method object; it calls .implementation
    real_sce = sce.implementation
    ram = mergekit.merge_methods.ram.ram_merge
    real_ram = ram.implementation
    ramplus = mergekit.merge_methods.ram.ramplus_tl_merge
    real_ramplus = ramplus.implementation

    def merge_group(self: GeneralizedTaskArithmeticMerge, group: Any, /, **parameters: Any) -> Any:
        return fused_combine.merge_group(real, self, group, parameters)

    def sce_merge(group: Any, **parameters: Any) -> Any:
        return fused_sce.merge(real_sce, group, **parameters)

    def ram_merge(group: Any, **parameters: Any) -> Any:
        return fused_ram.merge(real_ram, group, **parameters)

    def ramplus_merge(group: Any, **parameters: Any) -> Any:  # row chunks: the whole tensor's counts
        return ram_counts.merge(real_ramplus, group, **parameters)

    with _replaced(GeneralizedTaskArithmeticMerge, "merge_group", merge_group), \
            _replaced(sce, "implementation", sce_merge), _replaced(ram, "implementation", ram_merge), \
            _replaced(ramplus, "implementation", ramplus_merge):
        yield


@contextlib.contextmanager
def fusion_threshold() -> Iterator[None]:
    """arcee_fusion's threshold goes through ``streamed_fusion`` inside the block: the whole tensor's,
    found by a first pass, when its rows are merged in chunks; mergekit's own otherwise."""
    cls = mergekit.merge_methods.arcee_fusion.DynamicThresholdFusion
    real = cls.calculate_dynamic_threshold

    def calculate(self: Any, importance: Any) -> Any:
        return streamed_fusion.calculate_dynamic_threshold(real, self, importance)

    with _replaced(cls, "calculate_dynamic_threshold", calculate):
        yield


@contextlib.contextmanager
def pread_inputs() -> Iterator[None]:
    """Inside the block, mergekit opens CPU ``.safetensors`` shards with ``reader.PreadSafetensors``."""
    real = vars(TensorLoader)["get"]

    def get(cls: type, shard_path: str, use_lazy_unpickle: bool = False, device: str | None = None) -> Any:
        if shard_path.lower().endswith(".safetensors") and (device or "cpu") == "cpu":
            reader = PreadSafetensors(shard_path)
            if reader.supported():
                return reader
            reader.close()
        return real.__func__(cls, shard_path, use_lazy_unpickle=use_lazy_unpickle, device=device)

    with _replaced(TensorLoader, "get", classmethod(get)):
        yield


@contextlib.contextmanager
def stream_writes() -> Iterator[None]:
    """Inside the block, mergekit writes safetensors shards with ``writer.StreamingTensorWriter``.

    Its header room comes from the plan (``writer.reserve_headers``, the planner hook's last transform).
    """
    real = mergekit.io.tasks.TensorWriter
    current: list[StreamingTensorWriter] = []  # the writer chunked merges write their rows into

    def make(*args: Any, **kwargs: Any) -> Any:
        if kwargs.get("safe_serialization", True):
            current[:] = [StreamingTensorWriter(*args, **kwargs)]
            return current[0]
        return real(*args, **kwargs)

    token = writer_module.CURRENT.set(current)
    try:
        with _replaced(mergekit.io.tasks, "TensorWriter", make), header_room():
            yield
    finally:
        writer_module.CURRENT.reset(token)


@contextlib.contextmanager
def architecture_fixes() -> Iterator[None]:
    """Within the block, mergekit's ``run_merge`` plans with the fixed architecture tables (``archfix.py``)."""
    real = mergekit.merge.get_architecture_info
    with _replaced(mergekit.merge, "get_architecture_info",
                   lambda merge_config, options: architecture_info(merge_config, options, real)):
        yield


@contextlib.contextmanager
def output_config_fixed() -> Iterator[None]:
    """mergekit's ``_model_out_config`` with the per-layer settings describing the merged layers.

    A passthrough that changes depth sets ``num_hidden_layers`` but leaves the donor's
    ``layer_types``; transformers 5 then refuses to save or load the config (after all shards are
    written), and a layer moved across the donor's pattern would load the wrong block. Each output
    layer keeps its source layer's type (``layerfix.fix_output_config``).
    """
    real = mergekit.merge._model_out_config

    def wrapped(*args: Any, **kwargs: Any) -> Any:
        cfg = real(*args, **kwargs)
        fix_output_config(args[0] if args else kwargs["config"], cfg)
        return cfg

    with _replaced(mergekit.merge, "_model_out_config", wrapped):
        yield


@contextlib.contextmanager
def progress_reported(progress: ProgressFn) -> Iterator[None]:
    """mergekit's executor reports its progress to ``progress`` (``progress.ProgressTqdm`` as its tqdm)."""
    with _replaced(mergekit.graph, "tqdm", types.SimpleNamespace(tqdm=ProgressTqdm(progress).tqdm)):
        yield


@contextlib.contextmanager
def cached_configs() -> Iterator[None]:
    """Inside the block ``ModelReference.config`` reads each local ``config.json`` once (``configcache.py``)."""
    real = ModelReference.config

    def config(self: Any, trust_remote_code: bool = False) -> Any:
        return read_once(real, self, trust_remote_code)

    with _replaced(ModelReference, "config", config):
        yield
