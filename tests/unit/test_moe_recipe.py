"""Bad MoE recipes fail with one-line ConfigErrors naming the field, before any weight is read.

The models here are real configs and tokenizers with a *garbage* ``model.safetensors``: if
validation opened a weight file it would fail with a parse error instead of the ConfigError
asserted, so every passing case also proves no weight was read.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest

from hpc_merge.errors import ConfigError
from hpc_merge.models.tiny import ensure_tiny
from hpc_merge.moe import validate_recipe


@pytest.fixture(scope="module")
def fake(tmp_path_factory: pytest.TempPathFactory):
    """``fake(arch, name, **config_changes)`` -> folder with a real config/tokenizer and garbage weights."""
    root = tmp_path_factory.mktemp("fake")

    def make(arch: str, name: str, tokenizer: bool = True, **changes: Any) -> str:
        src = ensure_tiny("base", arch)
        out = root / f"{arch}-{name}"
        if not out.exists():
            out.mkdir()
            cfg = json.loads((src / "config.json").read_text())
            cfg.update(changes)
            (out / "config.json").write_text(json.dumps(cfg))
            (out / "model.safetensors").write_bytes(b"these are not weights")
            if tokenizer:
                for f in ("tokenizer.json", "tokenizer_config.json"):
                    shutil.copy(src / f, out / f)
        return str(out)

    return make


def recipe(fake, arch: str = "qwen2", n: int = 3, **changes: Any) -> dict[str, Any]:
    r = {"base_model": fake(arch, "base"), "gate_mode": "hidden", "experts_per_token": 2,
         "experts": [{"source_model": fake(arch, f"e{i}"), "positive_prompts": [f"topic {i} question"]}
                     for i in range(n)]}
    r.update(changes)
    return r


def fails(r: dict[str, Any], field: str, words: str) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        validate_recipe(r)
    err = info.value
    assert "\n" not in str(err)
    assert err.field == field, str(err)
    assert words.lower() in str(err).lower(), str(err)
    assert err.fix, "every error says how to fix it"
    return err


@pytest.mark.parametrize("arch, changes, output, writer", [
    ("llama", {}, "mixtral", "mergekit"),
    ("mistral", {}, "mixtral", "mergekit"),
    ("qwen2", {}, "qwen2_moe", "own"),
    ("qwen3", {}, "qwen3_moe", "mergekit"),
    ("phi3", {}, "mixtral", "own"),
    ("llama", {"output_arch": "qwen2_moe"}, "qwen2_moe", "own"),
    ("qwen2", {"architecture": "qwen"}, "qwen2_moe", "own"),  # mergekit's name prefix, as in its YAMLs
])
def test_good_recipes_pick_output_and_writer(fake, arch: str, changes: dict, output: str, writer: str) -> None:
    plan = validate_recipe(recipe(fake, arch, **changes))
    assert (plan.output_arch, plan.writer, plan.source_type) == (output, writer, arch)
    assert len(plan.experts) == 3


def test_shared_expert_uses_mergekit_and_always_on_needs_no_prompts(fake) -> None:
    with_prompts = recipe(fake, shared_experts=[{"source_model": fake("qwen2", "s"), "positive_prompts": ["anything"]}])
    assert validate_recipe(with_prompts).writer == "mergekit"
    always = recipe(fake, shared_experts=[{"source_model": fake("qwen2", "s")}], shared_expert_gate="always_on")
    assert validate_recipe(always).shared_expert_gate == "always_on"


def test_plan_round_trips_through_a_dict(fake) -> None:
    from hpc_merge.moe import MoePlan

    r = recipe(fake)
    r["experts"][0]["negative_prompts"] = ["not this"]
    r["experts"][1]["residual_scale"] = 0.5
    plan = validate_recipe(r)
    assert MoePlan.from_dict(json.loads(json.dumps(plan.to_dict()))) == plan


def test_experts_of_different_shapes(fake) -> None:
    r = recipe(fake)
    r["experts"][1]["source_model"] = fake("qwen2", "wide", hidden_size=128)
    fails(r, "moe.experts[1].source_model", "hidden_size=128")


def test_experts_of_different_architectures(fake) -> None:
    r = recipe(fake)
    r["experts"][2]["source_model"] = fake("llama", "other")
    fails(r, "moe.experts[2].source_model", "llama model but the base is qwen2")


def test_unknown_gate_mode(fake) -> None:
    fails(recipe(fake, gate_mode="hiden"), "moe.gate_mode", "did you mean 'hidden'")


@pytest.mark.parametrize("mode", ["hidden", "cheap_embed"])
def test_prompts_missing_where_the_gate_needs_them(fake, mode: str) -> None:
    r = recipe(fake, gate_mode=mode)
    del r["experts"][1]["positive_prompts"]
    fails(r, "moe.experts[1].positive_prompts", "routes by prompts")


def test_random_gates_need_no_prompts(fake) -> None:
    r = recipe(fake, gate_mode="random")
    for e in r["experts"]:
        del e["positive_prompts"]
    assert validate_recipe(r).gate_mode == "random"


@pytest.mark.parametrize("k", [0, 4, "two", True, 1.5])
def test_bad_experts_per_token(fake, k: Any) -> None:
    fails(recipe(fake, experts_per_token=k), "moe.experts_per_token", "between 1 and the 3 experts")


def test_unknown_keys_are_errors_not_ignored(fake) -> None:
    fails(recipe(fake, gate_mod="hidden"), "moe.gate_mod", "did you mean 'gate_mode'")
    r = recipe(fake)
    r["experts"][0]["positive_prompt"] = r["experts"][0].pop("positive_prompts")
    fails(r, "moe.experts[0].positive_prompt", "did you mean 'positive_prompts'")


def test_shared_expert_without_prompts_under_hidden_gates(fake) -> None:
    r = recipe(fake, shared_experts=[{"source_model": fake("qwen2", "s")}])
    fails(r, "moe.shared_experts[0].positive_prompts", "always_on")


def test_shared_expert_rules(fake) -> None:
    shared = [{"source_model": fake("llama", "s"), "positive_prompts": ["x"]}]
    fails(recipe(fake, "llama", shared_experts=shared), "moe.shared_experts", "mixtral has no shared experts")
    two = [{"source_model": fake("qwen2", f"s{i}"), "positive_prompts": ["x"]} for i in range(2)]
    fails(recipe(fake, shared_experts=two), "moe.shared_experts", "holds exactly one")
    fails(recipe(fake, shared_expert_gate="sometimes"), "moe.shared_expert_gate", "unknown value")


def test_identical_experts_or_prompts(fake) -> None:
    same = recipe(fake)
    for e in same["experts"]:
        e["source_model"] = fake("qwen2", "e0")
    fails(same, "moe.experts", "same model")
    assert validate_recipe({**same, "allow_identical_experts": True}).experts[0].path == fake("qwen2", "e0")
    prompts = recipe(fake)
    for e in prompts["experts"]:
        e["positive_prompts"] = ["the same prompt"]
    fails(prompts, "moe.experts", "same prompts")


def test_outputs_that_cannot_reproduce_the_source(fake) -> None:
    fails(recipe(fake, "llama", output_arch="qwen3_moe"), "moe.output_arch", "cannot reproduce llama")
    fails(recipe(fake, output_arch="mixtrl"), "moe.output_arch", "did you mean 'mixtral'")
    fails(recipe(fake, architecture="mixtral"), "moe.architecture", "cannot hold qwen2 experts")
    fails(recipe(fake, architecture="deepseek"), "moe.architecture", "no MoE output named")


def test_source_features_the_output_cannot_hold(fake) -> None:
    phi = recipe(fake, "phi3")
    phi["base_model"] = fake("phi3", "partial", rope_parameters={"rope_theta": 1e4, "rope_type": "default",
                                                                 "partial_rotary_factor": 0.75})
    fails(phi, "moe.base_model", "partial_rotary_factor=0.75")
    llama = recipe(fake, "llama")
    llama["base_model"] = fake("llama", "biased", attention_bias=True)
    fails(llama, "moe.base_model", "attention_bias")
    qwen3 = recipe(fake, "qwen3")
    qwen3["base_model"] = fake("qwen3", "windowed", layer_types=["sliding_attention"] + ["full_attention"] * 3)
    fails(qwen3, "moe.base_model", "sliding")


def test_models_that_are_missing_or_incomplete(fake, tmp_path: Path) -> None:
    fails(recipe(fake, base_model=str(tmp_path / "nope")), "moe.base_model", "not found")
    fails(recipe(fake, base_model=fake("qwen2", "notok", tokenizer=False)), "moe.base_model", "no tokenizer")
    empty = tmp_path / "noweights"
    empty.mkdir()
    shutil.copy(fake("qwen2", "base") + "/config.json", empty / "config.json")
    r = recipe(fake)
    r["experts"][0]["source_model"] = str(empty)
    fails(r, "moe.experts[0].source_model", "no weights")
    fails({**recipe(fake), "experts": []}, "moe.experts", "non-empty list")
    fails({k: v for k, v in recipe(fake).items() if k != "base_model"}, "moe.base_model", "missing")
    fails(recipe(fake, dtype="int4"), "moe.dtype", "unknown dtype")
