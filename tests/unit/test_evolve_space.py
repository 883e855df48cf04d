"""Search space: genotype <-> recipe round trip, bounds, and config errors that name the field."""

from __future__ import annotations

import random

import pytest

from hpc_merge import mergekit_adapter as mk
from hpc_merge.errors import ConfigError
from hpc_merge.evolve.space import GRANULARITIES, METHOD_PARAMS, SearchSpace


def _space(method: str, granularity: str = "model", **kw) -> SearchSpace:
    models = ["tiny:math"] if method == "slerp" else ["tiny:math", "tiny:coder"]
    ev = {"method": method, "base_model": "tiny:base", "models": models, "granularity": granularity,
          "layer_groups": 3, "dtype": "bfloat16", **kw}
    return SearchSpace.from_config(ev)


@pytest.mark.parametrize("granularity", GRANULARITIES)
@pytest.mark.parametrize("method", sorted(METHOD_PARAMS))
def test_round_trip_and_mergekit_accepts(method: str, granularity: str) -> None:
    space = _space(method, granularity)
    rng = random.Random(f"{method}{granularity}")
    for _ in range(3):
        x = [rng.random() for _ in range(space.dim)]
        recipe = space.decode(x)
        mk.check_recipe(recipe)  # our schema check
        mk.validate_with_mergekit(mk.to_mergekit(recipe, {}))  # and mergekit's own
        x2 = space.encode(recipe)
        step = max(10 ** -space.decimals / (g.hi - g.lo) for g in space.genes)
        assert max(abs(a - b) for a, b in zip(x, x2, strict=True)) <= step
        assert space.decode(x2) == recipe


def test_dimensions_follow_granularity() -> None:
    # ties: weight + density for 2 models
    assert _space("ties", "model").dim == 2 * 2
    assert _space("ties", "layer").dim == 2 * 2 * 3
    assert _space("ties", "filter").dim == 2 * 2 * 3
    assert _space("ties", "filter_layer").dim == 2 * 2 * 3 * 3
    assert _space("slerp", "layer").dim == 3  # t is shared: one gradient, no per-model genes


def test_values_stay_within_bounds_and_clip_outside_the_cube() -> None:
    space = _space("della", "filter", parameters={"weight": [0.2, 0.7], "density": [0.5, 0.9], "epsilon": [0.01, 0.05]})
    recipe = space.decode([-3.0, 7.0] * (space.dim // 2) + [0.5] * (space.dim % 2))
    for entry in recipe["models"]:
        for name, items in entry["parameters"].items():
            lo, hi = {"weight": (0.2, 0.7), "density": (0.5, 0.9), "epsilon": (0.01, 0.05)}[name]
            assert [i["filter"] for i in items[:2]] == ["self_attn", "mlp"]
            assert all(lo <= i["value"] <= hi for i in items)
    corners = space.decode([0.0] * space.dim)
    assert corners["models"][0]["parameters"]["weight"][0]["value"] == 0.2


def test_gradients_and_shared_slerp_t() -> None:
    recipe = _space("slerp", "layer").decode([0.0, 0.5, 1.0])
    assert recipe["parameters"] == {"t": [0.0, 0.5, 1.0]}
    assert recipe["models"] == [{"model": "tiny:base"}, {"model": "tiny:math"}]


def test_linear_leaves_an_unlisted_base_out() -> None:
    recipe = _space("linear").decode([0.5, 0.5])
    assert "base_model" not in recipe


@pytest.mark.parametrize(("change", "field"), [
    ({"method": "passthrough"}, "evolve.method"),
    ({"method": "tie"}, "evolve.method"),
    ({"parameters": {"weight": [0.8, 0.2]}}, "evolve.parameters.weight"),
    ({"parameters": {"density": [0.0, 1.5]}}, "evolve.parameters.density"),
    ({"parameters": {"t": [0, 1]}}, "evolve.parameters.t"),
    ({"granularity": "per_layer"}, "evolve.granularity"),
    ({"granularity": "layer", "layer_groups": 1}, "evolve.layer_groups"),
    ({"fixed": {"weight": 0.5}}, "evolve.fixed.weight"),
    ({"models": ["tiny:base", "tiny:math"]}, "evolve.models"),
    ({"fixed": {"densty": 0.5}}, "evolve.parameters.densty"),
])
def test_config_errors_name_the_field(change: dict, field: str) -> None:
    ev = {"method": "ties", "base_model": "tiny:base", "models": ["tiny:math", "tiny:coder"], **change}
    with pytest.raises(ConfigError) as err:
        SearchSpace.from_config(ev)
    assert err.value.field == field


def test_a_scalar_recipe_seeds_a_finer_space_and_foreign_recipes_are_refused() -> None:
    """A per-model recipe (a hand preset) is the point of a per-filter / per-layer space that has
    its values everywhere; a recipe without a searched model is not in the space at all."""
    coarse = _space("ties", "model")
    recipe = coarse.decode([0.2, 0.7, 0.4, 0.9])
    for granularity in ("filter", "layer", "filter_layer"):
        fine = _space("ties", granularity)
        x = fine.encode(recipe)
        assert len(x) == fine.dim > coarse.dim
        assert sorted({round(v, 6) for v in x}) == sorted({round(v, 6) for v in coarse.encode(recipe)})
    recipe["models"] = recipe["models"][:1]
    with pytest.raises(ValueError, match="no value"):
        _space("ties", "filter").encode(recipe)
