"""Bad input is caught before any merge, as one ConfigError naming the field."""

from __future__ import annotations

from pathlib import Path

import pytest
from omegaconf import OmegaConf

from hpc_merge.app import prepare
from hpc_merge.config import compose
from hpc_merge.errors import ConfigError
from tests.recipes import recipe_for


def _cfg(recipe: dict | None = None, *overrides: str):
    cfg = compose(["logger=none", *overrides])
    if recipe is not None:
        cfg.merge = OmegaConf.create(recipe)
    return cfg


def _error(cfg) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        prepare(cfg)
    assert "\n" not in str(info.value)
    return info.value


def test_valid_recipe_passes(tiny_pool) -> None:
    kind, plan, run_dir = prepare(_cfg(recipe_for("ties")))
    assert kind == "merge" and plan["stages"][0]["paths"]["tiny:math"] == str(tiny_pool["math"])
    assert run_dir.parent.name == "default"


def test_unknown_method(tiny_pool) -> None:
    err = _error(_cfg({**recipe_for("ties"), "merge_method": "tie"}))
    assert err.field == "merge.merge_method" and "did you mean 'ties'" in str(err)


def test_typo_in_parameter_name_is_not_ignored(tiny_pool) -> None:
    r = recipe_for("dare_ties")
    r["models"][0]["parameters"] = {"weight": 0.5, "densty": 0.5}
    err = _error(_cfg(r))
    assert err.field == "merge.models[0].parameters.densty" and "density" in str(err)


def test_typo_in_recipe_key(tiny_pool) -> None:
    err = _error(_cfg({**recipe_for("linear"), "dtpye": "bfloat16"}))
    assert err.field == "merge.dtpye" and "dtype" in str(err)


def test_missing_base_model(tiny_pool) -> None:
    r = recipe_for("ties")
    del r["base_model"]
    err = _error(_cfg(r))
    assert err.field == "merge.base_model" and "needs a base model" in str(err)


def test_missing_required_weight(tiny_pool) -> None:
    r = recipe_for("linear")
    del r["models"][1]["parameters"]
    err = _error(_cfg(r))
    assert err.field == "merge.models[1].parameters.weight"


def test_base_model_that_linear_would_merge_without_a_weight(tiny_pool) -> None:
    """mergekit adds an unlisted base_model to linear's inputs and then fails on its missing weight, mid-merge."""
    r = recipe_for("linear")
    r["base_model"] = "tiny:base"
    err = _error(_cfg(r))
    assert err.field == "merge.base_model" and "weight" in str(err)
    r["parameters"] = {"weight": 0.5}  # a global weight covers the base too: mergekit merges it in
    prepare(_cfg(r))


def test_missing_model(tiny_pool, tmp_path: Path) -> None:
    r = recipe_for("linear")
    r["models"][0]["model"] = str(tmp_path / "nope")
    err = _error(_cfg(r))
    assert err.field == "merge.models[0].model" and "not found" in str(err)


def test_hub_model_not_cached_fails_fast(tiny_pool) -> None:
    r = recipe_for("linear")
    r["models"][0]["model"] = "no-such-org/no-such-model-xyz"
    err = _error(_cfg(r))
    assert "hpc-merge fetch" in str(err)


def test_bad_layer_range(tiny_pool) -> None:
    r = recipe_for("passthrough")
    r["slices"][1]["sources"][0]["layer_range"] = [2, 9]
    err = _error(_cfg(r))
    assert err.field == "merge.slices[1].sources[0].layer_range" and "4 layers" in str(err)


def test_slerp_takes_two_models(tiny_pool) -> None:
    r = recipe_for("slerp")
    r["models"].append({"model": "tiny:coder"})
    err = _error(_cfg(r))
    assert err.field == "merge.models"


def test_della_density_epsilon(tiny_pool) -> None:
    r = recipe_for("della")
    r["models"][0]["parameters"]["density"] = 0.95
    err = _error(_cfg(r))
    assert err.field == "merge.models[0].parameters.density"


def test_shape_mismatch(tiny_pool) -> None:
    r = recipe_for("linear")
    r["models"][1]["model"] = "tiny:llama/coder"
    err = _error(_cfg(r))
    assert "architecture llama differs" in str(err)


def test_donor_without_tokenizer(tiny_pool, tmp_path: Path) -> None:
    import shutil

    donor = tmp_path / "notok"
    shutil.copytree(tiny_pool["math"], donor)
    for f in donor.glob("tokenizer*"):
        f.unlink()
    r = recipe_for("linear")
    r["models"][0]["model"] = str(donor)
    err = _error(_cfg(r))
    assert "no tokenizer files" in str(err)


def test_existing_output_needs_force(tiny_pool, tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / "x").write_text("keep me")
    err = _error(_cfg(recipe_for("linear"), f"output={out}"))
    assert err.field == "output"


def test_bad_option(tiny_pool) -> None:
    err = _error(_cfg(None, "job.options.out_shard_size=lots"))
    assert err.field == "job.options.out_shard_size"
    err = _error(_cfg(None, "job.options.chunk_size=-5"))
    assert err.field == "job.options.chunk_size" and "0 to merge whole tensors" in err.fix


def test_multistage_references_earlier_stage(tiny_pool) -> None:
    _, plan, _ = prepare(_cfg(None, "merge=experimental_multi"))
    assert [s["name"] for s in plan["stages"]] == ["stem", "final"]
    assert "stem" not in plan["stages"][1]["paths"]


def test_run_id_is_config_hash(tiny_pool) -> None:
    _, _, a = prepare(_cfg(recipe_for("linear")))
    _, _, b = prepare(_cfg(recipe_for("linear"), "cluster=local", "logger=none"))
    r = recipe_for("linear")
    r["models"][0]["parameters"]["weight"] = 0.7
    _, _, c = prepare(_cfg(r))
    assert a == b and a != c
