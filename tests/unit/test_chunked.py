"""Row-chunked merging of large tensors (``mergekit_adapter/chunked.py``) equals whole-tensor merging."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from hpc_merge import mergekit_adapter as mk
from hpc_merge.errors import ConfigError
from hpc_merge.mergekit_adapter import chunked
from hpc_merge.mergekit_adapter.chunk_trim import ChunkRecorded, StreamingTrim, streaming
from hpc_merge.mergekit_adapter.patches import magnitude_trim
from hpc_merge.mergekit_adapter.reader import PreadSafetensors
from hpc_merge.mergekit_adapter.trim import exact_magnitude, magnitude_mask
from hpc_merge.mergekit_adapter.writer import StreamingTensorWriter


def _streamed_masks(vectors: list[torch.Tensor], densities: list[float], rows: int) -> list[torch.Tensor]:
    """Masks from the streamed trim fed ``rows`` rows at a time, the way a chunked TIES feeds it."""
    state = StreamingTrim(n_vectors=len(vectors), numel=vectors[0].numel())
    bounds = [(a, min(a + rows, vectors[0].shape[0])) for a in range(0, vectors[0].shape[0], rows)]
    with magnitude_trim("fast"), streaming(state):
        passes = 0
        while state.needs_pass():
            passes += 1
            for a, b in bounds:
                with pytest.raises(ChunkRecorded):
                    for v, d in zip(vectors, densities, strict=True):
                        exact_magnitude(v[a:b], d)
            state.end_pass()
        assert passes == (2 if vectors[0].dtype == torch.float32 else 1)
        outs = [[] for _ in vectors]
        for a, b in bounds:
            for i, (v, d) in enumerate(zip(vectors, densities, strict=True)):
                outs[i].append(exact_magnitude(v[a:b], d) != 0)
    return [torch.cat(o) for o in outs]


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
@pytest.mark.parametrize("rows", [1, 3, 40])
def test_streamed_trim_keeps_the_whole_tensor_mask(dtype: torch.dtype, rows: int) -> None:
    """Same kept set as the whole-tensor exact trim, ties at the threshold spread over many chunks."""
    g = torch.Generator().manual_seed(1)
    vectors = [(torch.randn(40, 33, generator=g) * 0.02).to(dtype),
               torch.randint(1, 6, (40, 33), generator=g).to(dtype) * 0.25]  # 5 values: ties everywhere
    for v in vectors:
        v[v == 0] = 1e-3  # kept = non-zero in the output
    densities = [0.37, 0.5]
    masks = _streamed_masks(vectors, densities, rows)
    for v, d, m in zip(vectors, densities, masks, strict=True):
        assert torch.equal(m, magnitude_mask(v, d)), (dtype, rows, d)
        assert int(m.sum()) == max(1, int(d * v.numel()))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
@pytest.mark.parametrize("rows", [1, 7, 40])
@pytest.mark.parametrize("density,gamma", [(0.5, 0.1), (0.9, 0.01), (0.95, 0.2), (1e-3, 0.0)])
def test_streamed_breadcrumbs_keep_the_whole_tensor_band(dtype: torch.dtype, rows: int, density: float,
                                                         gamma: float) -> None:
    """Breadcrumbs' two thresholds streamed over row chunks keep exactly what ``exact_outliers`` keeps whole."""
    from hpc_merge.mergekit_adapter.trim import exact_outliers

    g = torch.Generator().manual_seed(rows)
    vectors = [(torch.randn(40, 33, generator=g) * 0.02).to(dtype),
               torch.randint(1, 6, (40, 33), generator=g).to(dtype) * 0.25]  # ties at both thresholds
    bounds = [(a, min(a + rows, 40)) for a in range(0, 40, rows)]
    state = StreamingTrim(n_vectors=2, numel=40 * 33)
    with magnitude_trim("fast"), streaming(state):
        while state.needs_pass():
            for a, b in bounds:
                with pytest.raises(ChunkRecorded):
                    for v in vectors:
                        exact_outliers(v[a:b], density, gamma=gamma)
            state.end_pass()
        got = [[] for _ in vectors]
        for a, b in bounds:
            for i, v in enumerate(vectors):
                got[i].append(exact_outliers(v[a:b], density, gamma=gamma))
    for v, parts in zip(vectors, got, strict=True):
        want = exact_outliers(v, density, gamma=gamma)
        assert torch.equal(torch.cat(parts), want), (dtype, rows, density, gamma)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("rows", [7, 100, 400])
def test_streamed_trims_through_the_kernels_keep_the_whole_tensor_selection(dtype: torch.dtype, rows: int) -> None:
    """Chunks large enough for the compiled trim (100 or 400 rows of 1000; 7 rows go through torch): TIES' top-k
    and breadcrumbs' band of real-looking task vectors (a few ulps: runs of equal magnitudes at every threshold)
    equal ``x * mask`` of the whole tensor's masks, bit for bit."""
    from hpc_merge.mergekit_adapter.topk import top_k_mask
    from hpc_merge.mergekit_adapter.trim import exact_outliers

    g = torch.Generator().manual_seed(rows)
    base = (torch.randn(2, 400, 1000, generator=g) * 0.02).to(dtype)
    vectors = list((base.float() + torch.randn(base.shape, generator=g) * 0.0002).to(dtype) - base)
    n, bounds = 400 * 1000, [(a, min(a + rows, 400)) for a in range(0, 400, rows)]
    for trim in ("ties", "breadcrumbs"):
        state = StreamingTrim(n_vectors=2, numel=n)
        call = (lambda x: exact_magnitude(x, 0.37)) if trim == "ties" else (lambda x: exact_outliers(x, 0.9, gamma=0.05))
        with magnitude_trim("fast"), streaming(state):
            while state.needs_pass():
                for a, b in bounds:
                    with pytest.raises(ChunkRecorded):
                        for v in vectors:
                            call(v[a:b])
                state.end_pass()
            parts: list[list[torch.Tensor]] = [[] for _ in vectors]
            for a, b in bounds:  # chunk by chunk, the vectors in input order (as the merge calls the trim)
                for i, v in enumerate(vectors):
                    parts[i].append(call(v[a:b]))
        for v, out in zip(vectors, map(torch.cat, parts), strict=True):
            if trim == "ties":
                keep = top_k_mask(v, int(0.37 * n))
            else:
                target = int(0.9 * n)
                bottom = max(0, n - target - int(0.05 * n))
                keep = top_k_mask(v, n - bottom) & ~top_k_mask(v, n - bottom - target)
            assert torch.equal(out.view(torch.int16), (v * keep.to(dtype)).view(torch.int16)), (trim, rows)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
@pytest.mark.parametrize("rows", [1, 7, 60])
def test_ramplus_in_row_chunks_equals_the_whole_tensor(dtype: torch.dtype, rows: int) -> None:
    """ramplus_tl's whole-tensor counts summed over row chunks, then its arithmetic per chunk: mergekit's
    result on the whole tensor bit for bit, with counts where the ratio lies inside (0, alpha) and at its clamps."""
    from mergekit.merge_methods.base import TensorEntry, TensorGroup
    from mergekit.merge_methods.ram import ramplus_tl_merge

    from hpc_merge.mergekit_adapter import ram_counts

    real = ramplus_tl_merge.implementation
    g = torch.Generator().manual_seed(rows)
    base = (torch.randn(60, 37, generator=g) * 0.02).to(dtype)
    for changed, alpha in (((0.3, 0.05, 0.05), 0.5), ((0.9, 0.9, 0.9), 0.2), ((0.05, 0.0, 0.5), 0.9)):
        models = [(base.float() + torch.randn(base.shape, generator=g) * 1e-3
                   * (torch.rand(base.shape, generator=g) < p)).to(dtype) for p in changed]
        entries = [TensorEntry("base", base, is_base=True)] + [TensorEntry(f"m{i}", m) for i, m in enumerate(models)]
        want = real(TensorGroup(entries), r=0.3, alpha=alpha, epsilon=1e-5)
        bounds = [(a, min(a + rows, 60)) for a in range(0, 60, rows)]

        def chunk(a: int, b: int, entries: list[TensorEntry] = entries) -> TensorGroup:
            return TensorGroup([TensorEntry(e.id, e.tensor[a:b], is_base=e.is_base) for e in entries])

        with ram_counts.counting(ram_counts.Counts()) as counts:
            for a, b in bounds:
                with pytest.raises(ChunkRecorded):
                    ram_counts.merge(real, chunk(a, b), r=0.3, alpha=alpha, epsilon=1e-5)
            counts.recording = False
            got = torch.cat([ram_counts.merge(real, chunk(a, b), r=0.3, alpha=alpha, epsilon=1e-5) for a, b in bounds])
        assert got.dtype == want.dtype and torch.equal(got, want), (changed, alpha)


def _tiny_recipe(pool: dict[str, Path], method: str, dtype: str) -> dict:
    models = [{"model": str(pool[m]), "parameters": {"weight": w, "density": d}}
              for m, w, d in (("math", 0.6, 0.35), ("coder", 0.5, 0.6), ("science", 0.4, 0.5))]
    if method == "linear":
        models = [{"model": str(pool["base"]), "parameters": {"weight": 0.3}}] + [
            {"model": m["model"], "parameters": {"weight": m["parameters"]["weight"]}} for m in models]
        return {"merge_method": "linear", "dtype": dtype, "models": models}
    if method == "nearswap":
        return {"merge_method": "nearswap", "base_model": str(pool["base"]), "dtype": dtype,
                "parameters": {"t": 0.001}, "models": [{"model": str(pool["math"])}]}
    if method == "slerp":  # a gradient: each layer its own t, resolved by mergekit's planner
        return {"merge_method": "slerp", "base_model": str(pool["base"]), "dtype": dtype,
                "parameters": {"t": [0.1, 0.5, 0.9]}, "models": [{"model": str(pool["base"])}, {"model": str(pool["math"])}]}
    if method == "model_stock":
        return {"merge_method": "model_stock", "base_model": str(pool["base"]), "dtype": dtype,
                "models": [{"model": str(pool[m])} for m in ("math", "coder", "science")]}
    if method == "nuslerp":
        return {"merge_method": "nuslerp", "base_model": str(pool["base"]), "dtype": dtype,
                "models": [{"model": str(pool[m]), "parameters": {"weight": w}} for m, w in (("math", 0.7), ("coder", 0.4))]}
    if method == "nuslerp-no-base":
        return {"merge_method": "nuslerp", "dtype": dtype,
                "models": [{"model": str(pool[m]), "parameters": {"weight": w}} for m, w in (("math", 0.7), ("coder", 0.4))]}
    if method == "arcee_fusion":
        return {"merge_method": "arcee_fusion", "base_model": str(pool["base"]), "dtype": dtype,
                "models": [{"model": str(pool["base"])}, {"model": str(pool["math"])}]}
    if method == "task_arithmetic":
        models = [{"model": m["model"], "parameters": {"weight": m["parameters"]["weight"]}} for m in models]
    if method in ("ram", "ramplus_tl"):  # per-element masks and overlap counts: no weights or densities
        models = [{"model": m["model"]} for m in models]
    return {"merge_method": method, "base_model": str(pool["base"]), "dtype": dtype, "models": models}


@pytest.mark.parametrize("method,dtype", [("linear", "bfloat16"), ("task_arithmetic", "bfloat16"),
                                          ("ties", "bfloat16"), ("ties", "float32"), ("nearswap", "float32"),
                                          ("breadcrumbs", "bfloat16"), ("breadcrumbs_ties", "bfloat16"),
                                          ("breadcrumbs", "float32"), ("ram", "bfloat16"),
                                          ("ramplus_tl", "bfloat16"), ("ramplus_tl", "float32"),
                                          ("linear", "float32+out_bfloat16"), ("slerp", "bfloat16"),
                                          ("slerp", "float32"), ("slerp", "bfloat16+out_float32"),
                                          ("arcee_fusion", "bfloat16"), ("arcee_fusion", "float32"),
                                          ("model_stock", "bfloat16"), ("model_stock", "float32+out_bfloat16"),
                                          ("nuslerp", "bfloat16"), ("nuslerp", "float32"),
                                          ("nuslerp-no-base", "bfloat16")])
def test_chunked_merge_is_bit_identical_to_whole_tensors(tiny_pool, tmp_path: Path, method: str, dtype: str,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """A 1 KB chunk size splits every matrix into many row chunks, each written straight into its
    tensor's place in the shard (cast to ``out_dtype`` first where set); the saved model is the same bytes."""
    calls: list[tuple[int, ...]] = []
    slots: list[str] = []
    real = chunked.ChunkedMerge.execute
    real_slot = StreamingTensorWriter.open_slot

    def counting(self, **kw):
        calls.append(self.shape)
        return real(self, **kw)

    def slot(self, name, shape, dtype):
        slots.append(name)
        return real_slot(self, name, shape, dtype)

    monkeypatch.setattr(chunked.ChunkedMerge, "execute", counting)
    monkeypatch.setattr(StreamingTensorWriter, "open_slot", slot)
    if method == "slerp":  # mergekit's pieces (and so the streamed ones) of 100 elements: many per tensor
        import mergekit.merge_methods.slerp as mk_slerp

        monkeypatch.setattr(mk_slerp, "_CHUNK_ELEMENTS", 100)
    dtype, _, out_dtype = dtype.partition("+out_")
    recipe = _tiny_recipe(tiny_pool, method, dtype)
    if out_dtype:
        recipe["out_dtype"] = out_dtype
    mk.run_mergekit(recipe, tmp_path / "whole", {"device": "cpu", "chunk_size": 0})
    assert calls == [] and slots == []
    mk.run_mergekit(recipe, tmp_path / "chunked", {"device": "cpu", "chunk_size": "1K"})
    assert any(shape[0] >= 64 for shape in calls)  # the embedding and the MLP matrices went through
    assert len(slots) == len(calls) and "model.embed_tokens.weight" in slots  # streamed, not assembled
    whole, parts = (load_file(tmp_path / d / "model.safetensors") for d in ("whole", "chunked"))
    assert whole.keys() == parts.keys()
    for key in whole:
        assert torch.equal(whole[key], parts[key]), key


def test_chunked_arcee_fusion_draws_the_same_sample(tiny_pool, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """With mergekit's quantile sample cut to 50 elements, every large tensor's threshold comes from
    drawn elements: the chunked merge draws the same indices from the seeded stream (same calls, in
    the same order) and writes the same bytes; another seed draws others."""
    import mergekit.merge_methods.arcee_fusion as fusion

    monkeypatch.setattr(fusion, "_QUANTILE_SAMPLE_SIZE", 50)
    draws: list[torch.Tensor] = []
    real_randint = torch.randint

    def randint(*args, **kwargs):
        drawn = real_randint(*args, **kwargs)
        draws.append(drawn)
        return drawn

    monkeypatch.setattr(torch, "randint", randint)
    recipe = _tiny_recipe(tiny_pool, "arcee_fusion", "bfloat16")
    runs = {}
    for name, chunk, seed in (("whole", 0, 0), ("chunked", "1K", 0), ("other-seed", "1K", 1)):
        draws.clear()
        mk.run_mergekit(recipe, tmp_path / name, {"device": "cpu", "chunk_size": chunk, "random_seed": seed})
        runs[name] = (list(draws), load_file(tmp_path / name / "model.safetensors"))
    (whole_draws, whole), (chunk_draws, parts), (other_draws, _) = runs["whole"], runs["chunked"], runs["other-seed"]
    assert len(whole_draws) >= 4 and len(chunk_draws) == len(whole_draws)
    assert all(torch.equal(a, b) for a, b in zip(whole_draws, chunk_draws, strict=True))
    assert not all(torch.equal(a, b) for a, b in zip(whole_draws, other_draws, strict=True))
    assert whole.keys() == parts.keys()
    for key in whole:
        assert torch.equal(whole[key], parts[key]), key


def test_methods_needing_the_whole_tensor_are_not_chunked(tiny_pool, tmp_path: Path,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """multislerp (torch's own reduction order over the whole tensor), model_stock with ``filter_wise``
    (a variant streamed_stats does not mirror) and TIES with mergekit's own trim keep whole-tensor merges."""
    calls: list[str] = []
    monkeypatch.setattr(chunked.ChunkedMerge, "execute", lambda self, **kw: calls.append("x"))
    multi = {"merge_method": "multislerp", "base_model": str(tiny_pool["base"]), "dtype": "bfloat16",
             "models": [{"model": str(tiny_pool[m]), "parameters": {"weight": 0.5}} for m in ("math", "coder")]}
    mk.run_mergekit(multi, tmp_path / "multislerp", {"device": "cpu", "chunk_size": "1K"})
    stock = {**_tiny_recipe(tiny_pool, "model_stock", "bfloat16"), "parameters": {"filter_wise": True}}
    mk.run_mergekit(stock, tmp_path / "model_stock", {"device": "cpu", "chunk_size": "1K"})  # per-row cosines: whole
    ties = _tiny_recipe(tiny_pool, "ties", "bfloat16")
    mk.run_mergekit(ties, tmp_path / "ties", {"device": "cpu", "chunk_size": "1K", "sparsify": "mergekit"})
    assert calls == []


def test_get_rows_reads_row_ranges(tmp_path: Path) -> None:
    """Any row range of any dtype equals the slice of the whole tensor."""
    from safetensors.torch import save_file

    g = torch.Generator().manual_seed(0)
    tensors = {"a": torch.randn(9, 4, 3, generator=g).to(torch.bfloat16), "b": torch.randn(5, generator=g)}
    save_file(tensors, str(tmp_path / "t.safetensors"))
    reader = PreadSafetensors(str(tmp_path / "t.safetensors"))
    for key, t in tensors.items():
        for a, b in ((0, 1), (2, 5), (0, t.shape[0]), (3, 100)):
            assert torch.equal(reader.get_rows(key, a, b), t[a:b]), (key, a, b)
    reader.close()


def test_bad_chunk_size_is_one_error() -> None:
    with pytest.raises(ConfigError, match="job.options.chunk_size"):
        mk.merge_options({"chunk_size": "lots"})
