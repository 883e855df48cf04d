"""Routing on the trained skills zoo: an MoE of the zoo's experts sends held-out prompts of each
expert's skill mostly to that expert, and the smoke test and evaluator run on it.

Gate prompts are the first prompts of each skill's draw; the held-out prompts are later, disjoint
prompts of the same draw (``make_splits`` deals distinct prompts into disjoint splits).
Run: ``.venv/bin/pytest -m integration tests/integration/test_moe_routing.py -s``.
"""

from __future__ import annotations

from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

N_GATE, N_HELD_OUT = 12, 50
#: Skill parameters used if the zoo does not publish its own.
DEFAULT_PARAMS = {"addition": {"max_operand": 99}, "reversal": {"min_len": 3, "max_len": 6},
                  "sorting": {"min_len": 3, "max_len": 6}, "shift": {"min_len": 3, "max_len": 6}}


@pytest.fixture(scope="module")
def zoo_experts() -> dict[str, tuple[Path, str]]:
    """``{expert: (folder, task)}`` plus ``"base"``, from the trained zoo."""
    zoo = pytest.importorskip("hpc_merge.zoo")
    if not hasattr(zoo, "EXPERT_TASKS"):
        pytest.skip("hpc_merge.zoo has no EXPERT_TASKS yet")
    from hpc_merge.resolve import resolve_model

    if hasattr(zoo, "ensure_zoo"):
        zoo.ensure_zoo()
    out = {"base": (resolve_model("zoo:base", "test"), "")}
    for name, task in zoo.EXPERT_TASKS.items():
        out[name] = (resolve_model(f"zoo:{name}", "test"), task)
    return out


def _prompts(task: str) -> tuple[list[str], list[str]]:
    from hpc_merge import zoo
    from hpc_merge.zoo.tasks import make_splits

    params = (getattr(zoo, "TASK_PARAMS", None) or DEFAULT_PARAMS)[task]
    rows = make_splits(task, 7, {"train": N_GATE, "validation": 0, "test": N_HELD_OUT}, params)
    return [r["prompt"] for r in rows["train"]], [r["prompt"] for r in rows["test"]]


@pytest.fixture(scope="module")
def built(zoo_experts, tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, dict]]:
    """One MoE per gate mode, with its routing report on held-out prompts."""
    from hpc_merge.moe import build_moe, validate_recipe
    from hpc_merge.moe.routing import routing_report

    experts = [(name, path, task) for name, (path, task) in zoo_experts.items() if name != "base"]
    prompts = {task: _prompts(task) for _, _, task in experts}
    out = {}
    for mode in ("hidden", "hidden_mergekit"):
        recipe = {"base_model": str(zoo_experts["base"][0]), "gate_mode": mode, "experts_per_token": 2,
                  "experts": [{"source_model": str(p), "positive_prompts": prompts[t][0]} for _, p, t in experts]}
        folder = tmp_path_factory.mktemp("moe") / mode
        build_moe(validate_recipe(recipe), folder)
        report = routing_report(folder, [prompts[t][1] for _, _, t in experts])
        per = {experts[e["expert"]][0]: round(e["accuracy"], 3) for e in report["per_expert"]}
        print(f"\nrouting gate_mode={mode}: {report['accuracy']:.1%} of {report['n_prompts']} held-out prompts "
              f"routed mostly to their expert; per expert {per}")
        out[mode] = (folder, report)
    return out


def test_hidden_routes_held_out_prompts(built) -> None:
    """The claim: with gate_mode=hidden, >= 90 % of each expert's held-out prompts go mostly to it."""
    _, report = built["hidden"]
    assert report["min_expert_accuracy"] >= 0.9, report


def test_mergekit_hidden_routing_figure(built) -> None:
    """mergekit's own ``hidden`` vectors (``hidden_mergekit``), measured the same way: printed, and
    worse than ours on at least one expert (why ``hidden`` fits the router instead)."""
    _, ours = built["hidden"]
    _, theirs = built["hidden_mergekit"]
    assert theirs["min_expert_accuracy"] < ours["min_expert_accuracy"], (theirs, ours)


def test_smoke_and_evaluator_run_on_the_moe(built) -> None:
    from hpc_merge.smoke import smoke_test

    folder, _ = built["hidden"]
    res = smoke_test(folder, ["add: 1 2 + 3 4 =", "reverse: a b c ->"], max_new_tokens=6)
    assert res["perplexity"] > 1 and len(res["samples"]) == 2
    evaluate = pytest.importorskip("hpc_merge.evaluate")
    scores = evaluate.evaluate_model(str(folder), evaluate.load_tasks(["zoo"], size="full"))
    assert scores, "the evaluator returned no scores for the MoE"
