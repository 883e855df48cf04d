"""Data-flow space: the genotype -> path -> passthrough recipe map, its realisation of the transition
scale (checked against the scaled stream itself), and DFS candidates of another depth in the worker."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from hpc_merge.evolve.cache import candidate_key
from hpc_merge.evolve.dfs import START_OFF, START_ON, DfsSpace

A, B = "zoo-test:math", "zoo-test:coder"


def _space(**kw) -> DfsSpace:
    return DfsSpace(**{"models": (A, B), "layers": 4, "io_model": A, "repeats": 2, "max_layers": 6,
                       "scale_bounds": (0.5, 1.5), "extra": {"dtype": "float32"}, **kw})


def _genotype(space: DfsSpace, on: dict[int, float], scales: dict[int, float] | None = None) -> list[float]:
    t = len(space.slots)
    x = [0.1] * t + [0.5] * t  # scale gene 0.5 -> 1.0 on [0.5, 1.5]
    for i, v in on.items():
        x[i] = v
    for i, v in (scales or {}).items():
        x[t + i] = v
    return x


def _path(recipe: dict) -> list[tuple[str, int, float]]:
    out = []
    for sl in recipe["slices"][1:-1]:
        (src,) = sl["sources"]
        scale = src.get("parameters", {}).get("scale", [{"value": 1.0}])[0]["value"]
        out.append((src["model"], src["layer_range"][0], scale))
    return out


def test_slots_are_layer_major_and_the_start_is_the_io_model() -> None:
    space = _space()
    slots = space.slots
    assert len(slots) == 2 * 4 * 2 and space.dim == 32 and len(space.labels()) == 32
    assert [(s.model, s.layer, s.rep) for s in slots[:3]] == [(A, 0, 0), (B, 0, 0), (A, 1, 0)]
    assert (slots[8].rep, slots[8].layer) == (1, 0)
    x0 = space.start()
    assert sorted(set(x0[:16])) == [START_OFF, START_ON]
    recipe = space.decode(x0)
    assert _path(recipe) == [(A, layer, 1.0) for layer in range(4)]  # the io model, as it is
    io = {"sources": [{"model": A, "layer_range": [0, 0]}]}
    assert recipe["slices"][0] == recipe["slices"][-1] == io and recipe["merge_method"] == "passthrough"


def test_transition_scales_are_cumulative_and_only_used_at_transitions() -> None:
    space = _space()
    # path: A0, A1 (slot 2), B1 (slot 3), B2 (slot 5), A3 (slot 6); scale genes 0.2 -> 0.7, 1.0 -> 1.5
    x = _genotype(space, {0: 0.9, 2: 0.9, 3: 0.9, 5: 0.9, 6: 0.9}, {3: 0.2, 6: 1.0, 2: 0.0})
    path = _path(space.decode(x))
    s1, s2 = 0.7, 1.5
    assert path == [(A, 0, 1.0), (A, 1, 1.0), (B, 1, round(1 / s1, 4)), (B, 2, round(1 / s1, 4)),
                    (A, 3, round(1 / s1 / s2, 4))]
    # the scale gene of a slot entered from the same model is unused: same recipe, same cache key
    y = list(x)
    y[len(space.slots) + 5] = 0.9
    assert candidate_key(space.decode(x)) == candidate_key(space.decode(y))


def test_at_most_max_layers_keeps_the_strongest_genes_in_slot_order() -> None:
    space = _space(max_layers=3)
    x = _genotype(space, {0: 0.6, 1: 0.95, 4: 0.7, 9: 0.99, 12: 0.55})
    assert [(m, layer) for m, layer, _ in _path(space.decode(x))] == [(B, 0), (A, 2), (B, 0)]
    assert space.decode(x) == space.decode(list(x))  # a pure function


def test_from_config_checks_the_dfs_fields() -> None:
    from hpc_merge.errors import ConfigError

    ok = DfsSpace.from_config({"dfs": {"repeats": 1}}, [A, B], 4)
    assert ok.max_layers == 8 and ok.io_model == A and ok.dim == 16
    bad = [({"repeats": 0}, "evolve.dfs.repeats"), ({"max_layers": 99}, "evolve.dfs.max_layers"),
           ({"scale_bounds": [1.5, 0.5]}, "evolve.dfs.scale_bounds"), ({"io_model": "zoo:x"}, "evolve.dfs.io_model")]
    for dfs, field in bad:
        with pytest.raises(ConfigError, match=field.replace(".", r"\.")):
            DfsSpace.from_config({"dfs": dfs}, [A, B], 4)


def test_the_scale_realises_scaling_the_stream_entering_the_layer(test_zoo) -> None:
    """Path A0 A1 | B2 B3 with input scale s at the switch, merged by mergekit, equals the unscaled
    path with the hidden state entering layer 2 multiplied by s (a forward pre-hook), to float error."""
    from hpc_merge.evolve.fitness import FitnessSpec
    from hpc_merge.evolve.worker import CandidateEvaluator, WorkerSpec
    from hpc_merge.mergekit_adapter import to_mergekit
    from hpc_merge.mergekit_adapter.inmemory import load_into, merge_in_memory

    paths = {A: str(test_zoo.experts["complement"]), B: str(test_zoo.experts["sorting"])}
    space = _space()
    t = len(space.slots)
    on = {2 * layer + (0 if layer < 2 else 1): 0.9 for layer in range(4)}  # A0 A1 B2 B3
    plain, scaled = (_genotype(space, on, {5: g}) for g in (0.5, 0.2))  # slot 5 = B2: scale 1.0, 0.7
    switch = _path(space.decode(scaled))[2]
    assert switch == (B, 2, round(1 / 0.7, 4))
    spec = WorkerSpec(sources=paths, donor=A, fitness=FitnessSpec(tasks=("zoo:sorting",), size="test"))
    ev = CandidateEvaluator(spec)
    ids = ev.tokenizer(["sort: c a b ->", "complement: 1 2 ="], return_tensors="pt", padding=True)

    def logits(x: list[float], hook_scale: float | None = None) -> torch.Tensor:
        merged = merge_in_memory(to_mergekit(space.decode(x), paths), ev.sources, {"device": "cpu"}, seed=0)
        model = ev._skeleton(merged)
        load_into(model, merged)
        handle = None
        if hook_scale is not None:
            handle = model.model.layers[2].register_forward_pre_hook(
                lambda _m, args, kwargs: ((args[0] * hook_scale, *args[1:]), kwargs) if args else
                (args, {**kwargs, "hidden_states": kwargs["hidden_states"] * hook_scale}), with_kwargs=True)
        with torch.no_grad():
            out = model(**ids).logits
        if handle is not None:
            handle.remove()
        return out

    # the recipe carries 1/s rounded to the space's decimals (1.4286): the hook scales by what it realises
    realised, unscaled = logits(scaled), logits(plain)
    reference = logits(plain, hook_scale=1 / switch[2])
    effect, error = (realised - unscaled).abs().max().item(), (realised - reference).abs().max().item()
    print(f"effect of the scale {effect:.3g}, realised vs scaled stream {error:.3g}, logits up to "
          f"{reference.abs().max().item():.3g}")
    assert effect > 1e-2  # the scale changes the model ...
    # ... exactly as the scaled stream, to float error: the two compute the same function in another
    # order (weights scaled vs activations scaled; RMSNorm's eps), whose rounding depends on the CPU's
    # kernels (1.1e-4 was seen on one CPU kind with logits of ~10), so the bound is relative to the logits
    torch.testing.assert_close(realised, reference, rtol=1e-4, atol=1e-4 * max(1.0, reference.abs().max().item()))
    assert error < effect / 100
    assert t == 16


def test_a_dfs_candidate_of_another_depth_scores_the_same_in_memory_and_from_disk(test_zoo, tmp_path: Path) -> None:
    from hpc_merge.evolve.fitness import FitnessSpec
    from hpc_merge.evolve.worker import CandidateEvaluator, WorkerSpec

    paths = {A: str(test_zoo.experts["complement"]), B: str(test_zoo.experts["sorting"])}
    space = _space()
    x = _genotype(space, {0: 0.9, 1: 0.9, 3: 0.9, 5: 0.9, 7: 0.9, 10: 0.9}, {1: 0.2})  # 6 layers, 2 models
    recipe = space.decode(x)
    assert len(_path(recipe)) == 6
    fit = FitnessSpec(tasks=("zoo:sorting", "zoo:complement"), size="test", limit=20)
    outs = [CandidateEvaluator(WorkerSpec(sources=paths, donor=A, fitness=fit, in_memory=mem,
                                          scratch=str(tmp_path))).safe_evaluate({"key": "k", "recipe": recipe, "seed": 0})
            for mem in (True, False)]
    assert [o["status"] for o in outs] == ["ok", "ok"], outs
    assert outs[0]["metrics"] == outs[1]["metrics"]  # what loads from disk (stock transformers) is what was scored
