"""The CMA-ES loop on a real objective (distance of the in-memory merge to a target merge).

The evaluator's interface is ``evaluate(jobs, on_result) -> outcomes``; here it merges each
candidate for real with mergekit and scores how close its weights come to a hidden target recipe,
which is fast enough to run whole searches in a unit test.
"""

from __future__ import annotations

import pickle
from pathlib import Path

import pytest
import torch

from hpc_merge.evolve.search import WORST, SearchSettings, best_candidate, run_search
from hpc_merge.evolve.space import SearchSpace
from hpc_merge.evolve.state import STATE_FILE, load_state, save_state
from hpc_merge.evolve.worker import failed
from hpc_merge.mergekit_adapter import to_mergekit
from hpc_merge.mergekit_adapter.inmemory import load_tensors, merge_in_memory

OPTIONS = {"device": "cpu"}


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny tensors: one thread is fastest, and the machine is shared."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def pool(tiny_pool) -> tuple[dict[str, str], dict[str, dict[str, torch.Tensor]]]:
    paths = {f"tiny:{n}": str(p) for n, p in tiny_pool.items()}
    return paths, {p: load_tensors(p) for p in paths.values()}


def _space(**kw) -> SearchSpace:
    ev = {"method": "ties", "base_model": "tiny:base", "models": ["tiny:math", "tiny:coder"],
          "parameters": {"weight": [0.0, 1.0], "density": [0.2, 1.0]}, "fixed": {"normalize": False},
          "dtype": "float32", **kw}
    return SearchSpace.from_config(ev)


class Objective:
    """Negative mean squared distance to the merge of ``target`` (a recipe); records every job."""

    def __init__(self, pool, target: dict, stop_after: int | None = None):
        self.paths, self.tensors = pool
        self.target = merge_in_memory(to_mergekit(target, self.paths), self.tensors, OPTIONS)
        self.calls: list[str] = []
        self.stop_after = stop_after

    def __call__(self, jobs, on_result):
        outs = []
        for i, job in enumerate(jobs):
            if self.stop_after is not None and len(self.calls) >= self.stop_after:
                raise KeyboardInterrupt("killed")  # what a SIGINT in the middle of a generation does
            self.calls.append(job["key"])
            try:
                merged = merge_in_memory(to_mergekit(job["recipe"], self.paths), self.tensors, OPTIONS, seed=job["seed"])
                mse = sum(float(((merged[k] - self.target[k]) ** 2).mean()) for k in self.target)
                out = {"status": "ok", "fitness": -mse, "scores": {"mse": mse}}
            except Exception as exc:
                out = failed(f"{type(exc).__name__}: {exc}")
            on_result(i, out)
            outs.append(out)
        return outs


def test_search_moves_towards_the_target(pool, tmp_path: Path) -> None:
    space = _space()
    target = space.decode([0.9, 0.1, 0.8, 0.3])
    settings = SearchSettings(population=6, sigma0=0.3, seed=1, max_evaluations=42)
    obj = Objective(pool, target)
    state, reason = run_search(space, settings, tmp_path, obj)
    assert reason == "max_evaluations" and state.evaluations <= 42 and state.generation == 7
    centre = obj(
        [{"key": "c", "recipe": space.decode([0.5] * 4), "seed": 0}], lambda i, o: None)[0]["fitness"]
    best = best_candidate(state.candidates)
    assert best["fitness"] > centre
    history = [h["best_so_far"] for h in state.history]
    assert history == sorted(history) and history[-1] > history[0]
    assert (tmp_path / STATE_FILE).is_file() and (tmp_path / "cache.jsonl").is_file()


def test_the_start_point_is_the_first_candidate(pool, tmp_path: Path) -> None:
    """x0 (a hand recipe to refine) is evaluated as is in generation 0: the best never loses to it."""
    space = _space()
    x0 = (0.05, 0.9, 0.3, 0.97)  # near the bounds, where cma's bound transform would move it
    settings = SearchSettings(population=4, sigma0=0.3, seed=2, max_evaluations=8, x0=x0)
    state, _ = run_search(space, settings, tmp_path, Objective(pool, space.decode([0.5] * 4)))
    first = state.candidates[0]
    assert first["generation"] == 0 and first["index"] == 0
    assert first["recipe"] == space.decode(list(x0))
    assert best_candidate(state.candidates)["fitness"] >= first["fitness"]


def test_a_genotype_is_never_evaluated_twice(pool, tmp_path: Path) -> None:
    space = _space(decimals=1)  # coarse rounding: many candidates decode to the same recipe
    obj = Objective(pool, space.decode([1.0, 0.0, 1.0, 0.0]))
    settings = SearchSettings(population=8, sigma0=0.2, seed=3, max_evaluations=100, max_generations=10)
    state, _ = run_search(space, settings, tmp_path, obj)
    assert len(obj.calls) == len(set(obj.calls)) == state.evaluations
    assert len(state.candidates) == 10 * 8 > state.evaluations  # repeats were served from the cache
    assert any(c["repeat"] for c in state.candidates)


def test_failed_candidates_get_the_worst_fitness_and_the_search_goes_on(pool, tmp_path: Path) -> None:
    # della needs density ± epsilon inside (0, 1): these bounds make part of the box fail in mergekit
    space = SearchSpace.from_config({"method": "della", "base_model": "tiny:base", "models": ["tiny:math", "tiny:coder"],
                                     "parameters": {"weight": [0.2, 1.0], "density": [0.6, 0.98], "epsilon": [0.01, 0.3]},
                                     "dtype": "float32"})
    obj = Objective(pool, space.decode([0.5] * space.dim))
    state, reason = run_search(space, SearchSettings(population=6, seed=0, max_evaluations=36, max_generations=4),
                               tmp_path, obj)
    assert state.generation == 4 and reason == "max_generations"
    bad = [c for c in state.candidates if c["status"] == "failed"]
    good = [c for c in state.candidates if c["status"] == "ok"]
    assert bad and good
    assert all("Epsilon" in c["reason"] or "epsilon" in c["reason"] for c in bad)
    assert best_candidate(state.candidates)["status"] == "ok"
    assert max(h["failed"] for h in state.history) > 0
    last = state.candidates[-6:]  # CMA-ES was told WORST for the failures of the last generation
    told = sorted(state.es.fit.fit)
    assert (WORST in told) == any(c["status"] == "failed" for c in last)


def test_killed_and_resumed_equals_uninterrupted(pool, tmp_path: Path) -> None:
    space = _space()
    target = space.decode([0.2, 0.7, 0.4, 0.9])
    settings = SearchSettings(population=5, sigma0=0.3, seed=11, max_evaluations=30)
    full, _ = run_search(space, settings, tmp_path / "full", Objective(pool, target))

    killed = Objective(pool, target, stop_after=12)  # dies in the middle of generation 3
    with pytest.raises(KeyboardInterrupt):
        run_search(space, settings, tmp_path / "resumed", killed)
    assert load_state(tmp_path / "resumed").generation == 2
    resumed_obj = Objective(pool, target)
    resumed, _ = run_search(space, settings, tmp_path / "resumed", resumed_obj)
    assert not set(resumed_obj.calls) & set(killed.calls)  # finished candidates came from the cache
    assert [c["key"] for c in resumed.candidates] == [c["key"] for c in full.candidates]
    assert best_candidate(resumed.candidates) == best_candidate(full.candidates)
    assert resumed.evaluations == full.evaluations


def test_state_is_written_atomically(pool, tmp_path: Path) -> None:
    space = _space()
    run_search(space, SearchSettings(population=4, seed=0, max_evaluations=8), tmp_path, Objective(pool, space.decode([0.5] * 4)))
    before = (tmp_path / STATE_FILE).read_bytes()
    state = load_state(tmp_path)
    state.history.append({"unpicklable": lambda: None})  # pickling fails part-way through the write
    with pytest.raises((pickle.PicklingError, AttributeError, TypeError)):
        save_state(tmp_path, state)
    assert (tmp_path / STATE_FILE).read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cache.jsonl", STATE_FILE]


def test_resume_with_other_settings_is_refused(pool, tmp_path: Path) -> None:
    space = _space()
    obj = Objective(pool, space.decode([0.5] * 4))
    run_search(space, SearchSettings(population=4, seed=0, max_evaluations=8), tmp_path, obj)
    with pytest.raises(RuntimeError, match="other settings"):
        run_search(space, SearchSettings(population=4, seed=1, max_evaluations=8), tmp_path, obj)
