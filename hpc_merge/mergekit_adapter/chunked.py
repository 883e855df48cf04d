"""Merge the largest tensors in row chunks, reading only the rows being merged.

Why: mergekit merges one whole tensor at a time: every input's copy of it, plus the method's
working copies (a stack for linear; task vectors, sign masks and products for TIES), are in
memory at once. For the embedding of a 0.5B model (260 MiB in bf16, 28 % of its single shard)
that is most of the merge's peak RSS (measured: linear 2.4 ×, TIES 3.5 × the largest input shard).

What: with the plan transform :func:`chunk_plan` (installed for ``chunk_size > 0`` by
:func:`~hpc_merge.mergekit_adapter.patches.mergekit_patches`), the planner's task for a large tensor of a
row-separable method is replaced by :class:`ChunkedMerge`, which has no input tensors in the
graph: it reads ``chunk_size`` bytes of rows per input at a time (``PreadSafetensors.get_rows``),
runs the *same* mergekit method task on those rows and writes each chunk's result straight into
the tensor's place in the output shard (``StreamingTensorWriter.open_slot``; without a streaming
writer, into one output tensor), so neither the inputs nor the output are ever whole in memory.
Row-separable methods compute each output element from the same element (DELLA: the same row)
of the inputs, given whole-tensor statistics a first pass can find exactly: ``linear``,
``task_arithmetic``, ``passthrough``, ``nearswap``, ``ram``, ``ramplus_tl`` (its per-input counts of
changed elements: :mod:`~hpc_merge.mergekit_adapter.ram_counts`), ``ties``,
``breadcrumbs`` / ``breadcrumbs_ties``, ``dare_ties`` / ``dare_linear`` and ``della`` /
``della_linear`` (2-D tensors) — the last seven only with ``job.options.sparsify: fast`` (the
default). TIES and breadcrumbs (without ``rescale``) keep the top-k (breadcrumbs: a band between
two top-k) of the whole tensor: :mod:`~hpc_merge.mergekit_adapter.chunk_trim` streams the chunks
to find those thresholds first. DARE's and DELLA's draws are a function of each
element's coordinates (:mod:`~hpc_merge.mergekit_adapter.random_sparsify`); with ``rescale`` a first pass sums
the whole task vectors' L1 norms exactly. ``slerp`` is streamed in flat pieces instead of rows
(:mod:`~hpc_merge.mergekit_adapter.streamed_slerp`: mergekit's own piecewise norms and dot product,
in three passes); ``model_stock`` (``filter_wise: false``) and ``nuslerp`` (flattened) by building
each whole-tensor reduction's operand whole from row chunks and reducing it as mergekit does
(:mod:`~hpc_merge.mergekit_adapter.streamed_stats`: one whole operand in memory, not every input);
and ``arcee_fusion`` (2-D and up) in row chunks of at least two rows after a first
pass finds its sampled threshold (:mod:`~hpc_merge.mergekit_adapter.streamed_fusion`). Results are bit-identical to merging whole tensors (tested).

Not chunked (whole tensors, as mergekit does): methods whose whole-tensor statistics are float
reductions in torch's own order over several inputs at once (multislerp, karcher, sce),
mergekit's own random
stream (``sparsify: mergekit``), tokenizer-aligned vocabularies, inputs that are not
``.safetensors`` or not on CPU, tensors whose inputs differ in shape, and float64 TIES/DARE.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import Any

import torch
from mergekit.common import ModelReference, dtype_from_name
from mergekit.graph import Task
from mergekit.io.tasks import GatherTensors, LoaderCache, LoadTensor
from mergekit.merge_methods.task_adapter import ExecuteMergeMethodTask

from hpc_merge.mergekit_adapter import (
    ram_counts,
    random_sparsify,
    streamed_fusion,
    streamed_slerp,
    streamed_stats,
)
from hpc_merge.mergekit_adapter import writer as writer_module
from hpc_merge.mergekit_adapter.chunk_trim import ChunkRecorded, NotStreamable, StreamingTrim, streaming
from hpc_merge.mergekit_adapter.reader import PreadSafetensors
from hpc_merge.mergekit_adapter.writer import Slot

ROW_SEPARABLE = ("linear", "task_arithmetic", "ties", "passthrough", "nearswap", "dare_ties", "dare_linear",
                 "della", "della_linear", "breadcrumbs", "breadcrumbs_ties", "ram", "ramplus_tl", "arcee_fusion")
STREAMED_TRIM = ("ties", "breadcrumbs", "breadcrumbs_ties")  # whole-tensor thresholds found by a first pass
RANDOM = ("dare_ties", "dare_linear", "della", "della_linear")  # chunked only with counter-based draws (sparsify: fast)
COUNTED = ("ramplus_tl",)  # whole-tensor integer counts summed by a first pass (ram_counts; sparsify: fast)
PER_ROW = ("della", "della_linear")  # rank magnitudes within each row: 2-D tensors only, rows never split
FUSED_THRESHOLD = ("arcee_fusion",)  # per-row importance, one sampled threshold found by a first pass (>= 2-D, >= 2 rows a chunk)
STREAMED_SLERP = ("slerp",)  # whole-tensor norms and dot, reduced per flat piece by mergekit itself
STREAMED_STATS = ("model_stock", "nuslerp")  # each reduction's operand built whole from chunks (streamed_stats)
_FLOAT = {"bfloat16", "float16", "float32", "float64"}


class ChunkedMerge(Task[torch.Tensor | None]):
    """A planned merge task run over row chunks read straight from the inputs' safetensors files."""

    inner: ExecuteMergeMethodTask
    sources: tuple[tuple[ModelReference, str, str, str | None], ...]  # (model, shard file, tensor name, dtype)
    shape: tuple[int, ...]
    rows_per_chunk: int
    streamed_trim: bool
    random_seed: int | None = None  # DARE: the counter-based masks' seed
    rescaled: bool = False  # DARE with rescale: a first pass sums the whole task vectors' norms
    counted: bool = False  # ramplus_tl: a first pass sums the whole tensor's counts
    out_name: str = ""  # the output tensor's name (its SaveTensor's), for streaming rows to the writer
    out_dtype: str | None = None  # what its SaveTensor casts to (weight.force_dtype or the merge's out_dtype)
    slerp: bool = False  # streamed_slerp's three passes over flat pieces instead of row chunks
    fusion: bool = False  # arcee_fusion: a first pass finds the whole tensor's threshold (streamed_fusion)
    stats: bool = False  # model_stock / nuslerp: streamed_stats' whole operands, then the chunks

    def arguments(self) -> dict[str, Task]:
        return {}  # no LoadTensor dependencies: the whole inputs are never loaded

    def group_label(self) -> str | None:
        return self.inner.group_label()

    def uses_accelerator(self) -> bool:
        return False

    def execute(self, **_kwargs: Any) -> torch.Tensor | None:
        readers = {path: PreadSafetensors(path) for path in {source[1] for source in self.sources}}
        try:
            return self._merge(readers)
        except NotStreamable:  # e.g. float64 task vectors (first chunk): merge the tensor whole, exactly as planned
            return self.inner.execute(tensors=self._rows(readers, 0, self.shape[0]))
        finally:
            for reader in readers.values():
                reader.close()

    def _rows(self, readers: dict[str, PreadSafetensors], start: int, stop: int) -> dict[ModelReference, torch.Tensor]:
        """Each input's rows ``start:stop`` in the dtype its planned ``LoadTensor`` would have given it."""
        out = {}
        for model, path, name, dtype in self.sources:
            x = readers[path].get_rows(name, start, stop)
            if dtype and (target := dtype_from_name(dtype)) != x.dtype:
                x = x.to(dtype=target)
            out[model] = x
        return out

    def _merge(self, readers: dict[str, PreadSafetensors]) -> torch.Tensor | None:
        if self.slerp:
            return self._merge_slerp(readers)
        bounds = [(a, min(a + self.rows_per_chunk, self.shape[0])) for a in range(0, self.shape[0], self.rows_per_chunk)]
        if self.fusion:
            return self._merge_fusion(readers, bounds)
        if self.stats:
            return self._merge_stats(readers, bounds)
        if self.random_seed is not None:
            return self._merge_random(readers, bounds)
        if self.counted:
            with ram_counts.counting(ram_counts.Counts()) as counts:
                for a, b in bounds:  # the whole tensor's counts first
                    with contextlib.suppress(ChunkRecorded):
                        self.inner.execute(tensors=self._rows(readers, a, b))
                counts.recording = False
                return self._merge_chunks(readers, bounds)
        if not self.streamed_trim:
            return self._merge_chunks(readers, bounds)
        trim = StreamingTrim(n_vectors=self._n_vectors(), numel=int(torch.Size(self.shape).numel()))
        with streaming(trim):
            while trim.needs_pass():  # find every task vector's whole-tensor threshold first
                for a, b in bounds:
                    with contextlib.suppress(ChunkRecorded):
                        self.inner.execute(tensors=self._rows(readers, a, b))
                trim.end_pass()
            return self._merge_chunks(readers, bounds)

    def _merge_fusion(self, readers: dict[str, PreadSafetensors], bounds: list[tuple[int, int]]) -> torch.Tensor | None:
        """arcee_fusion: the drawn elements' importance chunk by chunk, mergekit's threshold of them, then the chunks."""
        if len(bounds) > 1 and bounds[-1][1] - bounds[-1][0] < 2:  # no one-row chunk (see streamed_fusion)
            bounds = [*bounds[:-2], (bounds[-2][0], bounds[-1][1])]
        row = int(torch.Size(self.shape[1:]).numel())
        state = streamed_fusion.Threshold.start(int(torch.Size(self.shape).numel()))
        with streamed_fusion.thresholding(state):
            for a, b in bounds:
                state.offset = a * row
                with contextlib.suppress(ChunkRecorded):
                    self.inner.execute(tensors=self._rows(readers, a, b))
            state.finish()
            return self._merge_chunks(readers, bounds)

    def _merge_stats(self, readers: dict[str, PreadSafetensors], bounds: list[tuple[int, int]]) -> torch.Tensor | None:
        """model_stock / nuslerp by :mod:`streamed_stats`: inputs in the group's order and the method's input dtype."""
        inner = self.inner
        base = inner.base_model
        others = [m for m in inner.model_order if m != base]
        order = ([base] if base is not None else []) + others
        dtypes = {s[0]: dtype_from_name(s[3]) if s[3] else getattr(torch, readers[s[1]].shape_dtype(s[2])[1])
                  for s in self.sources}
        dtype = dtype_from_name(inner.dtype) if inner.dtype else _promoted([dtypes[m] for m in inner.model_order])
        out_dtype = dtype_from_name(inner.out_dtype) if inner.out_dtype else None

        def rows(a: int, b: int) -> list[torch.Tensor]:
            got = self._rows(readers, a, b)
            return [got[m].to(dtype=dtype) for m in order]

        sink = _Sink(self)
        row = int(torch.Size(self.shape[1:]).numel())
        numel = row * self.shape[0]

        def emit(a: int, part: torch.Tensor) -> None:
            sink.put(a * row, part if out_dtype is None else part.to(dtype=out_dtype))

        if inner.method_name == "model_stock":
            streamed_stats.model_stock(rows, bounds, numel, len(others), emit)
        else:
            weights = [inner.input_parameters[m]["weight"] for m in others]
            total = sum(weights)
            t = 0.5 if abs(total) < 1e-6 else weights[1] / total
            streamed_stats.nuslerp(rows, bounds, numel, t, base is not None, emit)
        return sink.finish()

    def _n_vectors(self) -> int:
        return len(self.inner.model_order) - (self.inner.base_model is not None)

    def _merge_random(self, readers: dict[str, PreadSafetensors], bounds: list[tuple[int, int]]) -> torch.Tensor | None:
        """DARE by row chunks: each chunk draws at its flat offset; with rescale, the norms are summed first."""
        numel = int(torch.Size(self.shape).numel())
        row = numel // self.shape[0]
        sums = random_sparsify.RescaleSums() if self.rescaled else None

        def site(a: int, recording: bool) -> random_sparsify.Site:
            return random_sparsify.Site(seed=self.random_seed or 0, name=self.inner.output_weight.name, offset=a * row,
                                        numel=numel, sums=sums, recording=recording, n_vectors=self._n_vectors())

        if sums is not None:
            for a, b in bounds:
                with random_sparsify.at(site(a, True)), contextlib.suppress(ChunkRecorded):
                    self.inner.execute(tensors=self._rows(readers, a, b))
        return self._merge_chunks(readers, bounds, lambda a: random_sparsify.at(site(a, False)))

    def _merge_chunks(self, readers: dict[str, PreadSafetensors], bounds: list[tuple[int, int]],
                      around: Any = None) -> torch.Tensor | None:
        """The planned task on each row chunk (``around(a)``: a context per chunk), into a :class:`_Sink`."""
        sink = _Sink(self)
        row = int(torch.Size(self.shape[1:]).numel())
        try:
            for a, b in bounds:
                with around(a) if around is not None else contextlib.nullcontext():
                    part = self.inner.execute(tensors=self._rows(readers, a, b))
                if part is None:
                    if sink.started():
                        raise RuntimeError(f"internal: {self.out_name}: a row chunk merged to None")
                    return None
                sink.put(a * row, part)
                del part
        except NotStreamable as exc:  # too late to merge it whole: rows of it are written
            if sink.started():
                raise RuntimeError(f"internal: {self.out_name}: {exc}") from exc
            raise
        return sink.finish()

    def _merge_slerp(self, readers: dict[str, PreadSafetensors]) -> torch.Tensor | None:
        """slerp by :mod:`streamed_slerp`: base and other read as flat pieces, about ``chunk_size`` bytes per input."""
        base = next(s for s in self.sources if s[0] == self.inner.base_model)
        other = next(s for s in self.sources if s[0] != self.inner.base_model)
        loaded = [dtype_from_name(s[3]) if s[3] else getattr(torch, readers[s[1]].shape_dtype(s[2])[1])
                  for s in (base, other)]
        dtype = dtype_from_name(self.inner.dtype) if self.inner.dtype else torch.promote_types(*loaded)
        out_dtype = dtype_from_name(self.inner.out_dtype) if self.inner.out_dtype else None

        def read(start: int, stop: int) -> tuple[torch.Tensor, torch.Tensor]:
            return tuple(readers[s[1]].get_flat(s[2], start, stop).to(dtype=d).to(dtype=dtype)  # type: ignore[return-value]
                         for s, d in ((base, loaded[0]), (other, loaded[1])))

        sink = _Sink(self)
        numel = int(torch.Size(self.shape).numel())
        streamed_slerp.merge(read, numel, float(self.inner.parameters["t"]), dtype,
                             lambda start, part: sink.put(start, part if out_dtype is None else part.to(out_dtype)),
                             span_elements=max(1, self.rows_per_chunk * numel // self.shape[0]))
        return sink.finish()


def _promoted(dtypes: list[torch.dtype]) -> torch.dtype:
    """The dtype mergekit aligns a group to when the task names none (its ``promoted_dtype``)."""
    out = dtypes[0]
    for dtype in dtypes[1:]:
        out = torch.promote_types(out, dtype)
    return out


class _Sink:
    """Where a chunked tensor's parts go: straight to its place in the shard through the streaming
    writer (cast as its SaveTensor would; an empty placeholder is returned), or else one output tensor."""

    def __init__(self, task: ChunkedMerge) -> None:
        box = writer_module.CURRENT.get(None)
        self.task = task
        self.writer = box[0] if box and task.out_name else None
        self.slot: Slot | None = None
        self.out: torch.Tensor | None = None

    def started(self) -> bool:
        return self.slot is not None

    def put(self, start: int, part: torch.Tensor) -> None:
        """``part`` (a row chunk or a flat piece) at flat element ``start`` of the tensor."""
        if self.writer is not None:
            if self.task.out_dtype:
                part = part.to(dtype=dtype_from_name(self.task.out_dtype))
            if self.slot is None:
                self.slot = self.writer.open_slot(self.task.out_name, list(self.task.shape), part.dtype)
            self.slot.write_elements(start, part)
            return
        if self.out is None:
            self.out = torch.empty(self.task.shape, dtype=part.dtype)
        self.out.view(-1)[start:start + part.numel()] = part.reshape(-1)

    def finish(self) -> torch.Tensor | None:
        if self.slot is None:
            return self.out
        self.slot.close()
        return torch.empty(0, dtype=dtype_from_name(self.task.out_dtype) if self.task.out_dtype else None)


def _source(load: LoadTensor) -> tuple[str, str] | None:
    """``(shard file, tensor name)`` the planned load reads, if it reads a stored safetensors tensor.

    The name is resolved by mergekit's own ``LoadTensor`` (name, aliases, tied names); tensors it
    would have to convert from another checkpoint layout stay whole.
    """
    import os

    loader = LoaderCache().get(load.model)
    name = load._resolve_name(loader) if hasattr(loader, "index") else None
    if name is None:
        return None
    path = os.path.join(loader.index.base_path, loader.index.tensor_paths[name])
    return (path, name) if path.lower().endswith(".safetensors") else None


class _Headers:
    """Shard headers read once per plan (shape and dtype of every tensor; no data)."""

    def __init__(self) -> None:
        self.readers: dict[str, PreadSafetensors] = {}

    def get(self, path: str, name: str) -> tuple[list[int], str] | None:
        if path not in self.readers:
            reader = PreadSafetensors(path)
            reader.close()  # only the header is needed here
            self.readers[path] = reader
        return self.readers[path].shape_dtype(name)


def chunked(task: Any, chunk_bytes: int, trim_mode: str, headers: _Headers, out_name: str = "",
            out_dtype: str | None = None) -> ChunkedMerge | None:
    """The chunked version of a planned merge task, or None when it must stay whole (see module doc)."""
    if not isinstance(task, ExecuteMergeMethodTask) or type(task.gather_tensors) is not GatherTensors:
        return None
    if task.method_name not in ROW_SEPARABLE + STREAMED_SLERP + STREAMED_STATS or task.gather_tensors.device not in (None, "cpu"):
        return None
    if task.method_name in STREAMED_STATS and not _streamed_stats_case(task):
        return None
    if task.method_name in STREAMED_SLERP and (task.base_model not in task.model_order or len(task.model_order) != 2):
        return None  # mergekit's own error (or its path) for malformed slerp inputs
    params = dict(task.parameters.items())
    streamed_trim = task.method_name in STREAMED_TRIM
    if streamed_trim and (trim_mode != "fast" or params.get("rescale")):
        return None
    seed = random_sparsify.SEED.get()
    if task.method_name in RANDOM and (trim_mode != "fast" or seed is None):
        return None
    if task.method_name in COUNTED and trim_mode != "fast":
        return None
    loads = list(task.gather_tensors.arguments().values())
    if {load.model for load in loads} != set(task.model_order):
        return None
    sources, shapes, largest = [], set(), 0
    for load in loads:
        found = _source(load)
        meta = headers.get(*found) if found else None
        if meta is None or meta[1] not in _FLOAT:
            return None
        shape, dtype = meta
        shapes.add(tuple(shape))
        largest = max(largest, int(torch.Size(shape).numel()) * torch.empty(0, dtype=getattr(torch, dtype)).element_size())
        sources.append((load.model, *found, load.dtype))
    if len(shapes) != 1:
        return None
    (shape,) = shapes
    if len(shape) < 1 or shape[0] < 2 or largest <= chunk_bytes or (task.method_name in PER_ROW and len(shape) != 2):
        return None
    fusion = task.method_name in FUSED_THRESHOLD
    if fusion and len(shape) < 2:
        return None  # a 1-D tensor's softmax spans the whole tensor
    rows_per_chunk = max(2 if fusion else 1, chunk_bytes * shape[0] // largest)
    random = task.method_name in RANDOM
    return ChunkedMerge(inner=task, sources=tuple(sources), shape=shape, rows_per_chunk=rows_per_chunk,
                        streamed_trim=streamed_trim, random_seed=seed if random else None,
                        rescaled=random and bool(params.get("rescale", True)), counted=task.method_name in COUNTED,
                        out_name=out_name, out_dtype=out_dtype, slerp=task.method_name in STREAMED_SLERP,
                        fusion=fusion, stats=task.method_name in STREAMED_STATS)


def _streamed_stats_case(task: Any) -> bool:
    """The variants :mod:`streamed_stats` mirrors: model_stock without ``filter_wise``; nuslerp flattened, two inputs."""
    params = dict(task.parameters.items())
    others = [m for m in task.model_order if m != task.base_model]
    if task.method_name == "model_stock":
        return not params.get("filter_wise", False) and task.base_model in task.model_order and len(others) >= 2
    return (bool(params.get("nuslerp_flatten", True)) and len(others) == 2
            and (task.base_model is None or task.base_model in task.model_order)
            and all("weight" in task.input_parameters[m] for m in others))


def chunk_plan(chunk_bytes: int, trim_mode: str, names: list[str]) -> Callable[..., list[tuple[Any, Any]]]:
    """The plan transform that merges tensors above ``chunk_bytes`` in row chunks (see module doc).

    Applied by the one planner hook (:func:`~hpc_merge.mergekit_adapter.patches.planner_hook`) after
    a split part's restriction; appends the names of the chunked tensors to ``names`` (for the
    report and tests).
    """

    def chunk(planned: list[tuple[Any, Any]], out_dtype: str | None = None) -> list[tuple[Any, Any]]:
        headers = _Headers()
        out = []
        for weight, task in planned:
            replacement = chunked(task, chunk_bytes, trim_mode, headers, weight.name, weight.force_dtype or out_dtype)
            if replacement is not None:
                names.append(weight.name)
            out.append((weight, task if replacement is None else replacement))
        return out

    return chunk
