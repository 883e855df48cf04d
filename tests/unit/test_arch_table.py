"""The architecture support table: complete, in the README, and what validation enforces.

The matrix itself (every cell merged and loaded) is ``tests/integration/test_arch_matrix.py``;
here: the README block equals the table rendered by ``scripts/arch_matrix.py``, every
architecture mergekit and transformers both know is in the table, the adapter's fixes change
exactly what they should, and the variants the table cannot merge are refused at validation with
one line naming the architecture — before any folder is made.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from hpc_merge.config import compose
from hpc_merge.errors import ConfigError
from hpc_merge.jobs import merge as merge_job
from hpc_merge.mergekit_adapter import archsupport, run_mergekit
from hpc_merge.models.tiny import ARCHS, build_tiny

ROOT = Path(__file__).resolve().parents[2]


def _script():
    spec = importlib.util.spec_from_file_location("arch_matrix", ROOT / "scripts" / "arch_matrix.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_readme_table_is_the_rendered_support_table() -> None:
    script = _script()
    block = script.readme_block((ROOT / "README.md").read_text())
    assert block is not None, "README.md lacks the generated architecture block"
    assert block == script.render(script.expected_cells()), \
        "README table differs from the support table: run the matrix test, then scripts/arch_matrix.py --write"


def test_script_refuses_results_that_disagree(tmp_path: Path) -> None:
    script = _script()
    cells = script.expected_cells()
    cells["llama"]["ties"] = {"status": "refused", "detail": "made up"}
    del cells["mixtral"]["slerp"]
    results = tmp_path / "results.json"
    results.write_text(json.dumps({"cells": cells}))
    assert script.main(["--results", str(results)]) == 1
    assert {p.split(":")[0] for p in script.disagreements(cells)} == {"llama × ties", "mixtral × slerp"}


def _shared_decoder_archs() -> set[str]:
    """model_types of the decoder-only text LMs that mergekit 0.1.5 has a table for and transformers builds."""
    import mergekit
    import transformers
    from transformers import CONFIG_MAPPING

    found = set()
    for f in (Path(mergekit.__file__).parent / "_data" / "architectures").glob("*.json"):
        d = json.loads(f.read_text())
        arch = (d.get("architectures") or [""])[0]
        if "layer_templates" in d and arch.endswith(("ForCausalLM", "LMHeadModel")) \
                and d.get("model_type") in CONFIG_MAPPING and hasattr(transformers, arch):
            found.add(d["model_type"])
    return found


def test_table_covers_every_architecture_both_libraries_know() -> None:
    shared = _shared_decoder_archs()
    assert {"llama", "gemma3_text", "phi3", "mixtral", "qwen3_moe", "gpt_neox", "cohere"} <= shared
    assert shared - set(archsupport.SUPPORT) == set()
    assert set(archsupport.SUPPORT) <= set(ARCHS), "every supported architecture needs a tiny recipe"


def _names(info, config) -> set[str]:
    return {w.name for w in info.all_weights(config)}


def test_fixes_drop_only_what_transformers_does_not_write() -> None:
    from mergekit.architecture import arch_info_for_config

    from hpc_merge.models.tiny import tiny_config

    neox = tiny_config("gpt_neox")
    neox.architectures = ["GPTNeoXForCausalLM"]
    raw = arch_info_for_config(neox)
    dropped = _names(raw, neox) - _names(archsupport.fix_architecture(raw, neox), neox)
    assert dropped and all(n.endswith(("attention.bias", "masked_bias", "rotary_emb.inv_freq")) for n in dropped)
    for qk_norm, expect_dropped in ((False, True), (True, False)):
        cohere = tiny_config("cohere", use_qk_norm=qk_norm)
        cohere.architectures = ["CohereForCausalLM"]
        raw = arch_info_for_config(cohere)
        dropped = _names(raw, cohere) - _names(archsupport.fix_architecture(raw, cohere), cohere)
        assert bool(dropped) == expect_dropped
        assert all("_norm." in n for n in dropped)


def test_cohere_with_qk_norm_keeps_its_norms(tmp_path: Path) -> None:
    """The Cohere fix is conditional: with qk-norm on, the norms are merged (identity is exact)."""
    from safetensors import safe_open
    from transformers import AutoModelForCausalLM

    base = build_tiny(tmp_path / "base", arch="cohere", use_qk_norm=True)
    run_mergekit({"merge_method": "linear", "models": [{"model": str(base), "parameters": {"weight": 1.0}}]},
                 tmp_path / "out", {})
    with safe_open(str(tmp_path / "out" / "model.safetensors"), "pt") as f:
        assert any(".q_norm." in k for k in f.keys())
    ids = torch.arange(3, 15)[None]
    logits = [AutoModelForCausalLM.from_pretrained(str(p), dtype=torch.float32)(ids).logits
              for p in (base, tmp_path / "out")]
    assert torch.equal(*logits)


def _validate(model: Path, tmp_path: Path) -> None:
    cfg = compose(["logger=none"])
    cfg.merge = OmegaConf.create({"merge_method": "linear", "dtype": "bfloat16",
                                  "models": [{"model": str(model), "parameters": {"weight": 1.0}}]})
    cfg.output = str(tmp_path / "out")
    merge_job.validate(cfg)


@pytest.mark.parametrize("name, arch, overrides, says", [
    # mergekit's Falcon table describes the 40B/180B layout only (ln_attn + ln_mlp)
    ("falcon-7b layout", "falcon", {"new_decoder_architecture": False}, "asks for tensor transformer.h.0.ln_attn"),
    # ... and has no bias entries: a Falcon with biases would lose them
    ("falcon with biases", "falcon", {"bias": True}, "does not cover"),
    # StableLM 2 12B's per-head qk layer norms are not in mergekit's table: they would be left out
    ("stablelm qk-norm", "stablelm", {"qk_layernorm": True}, "does not cover"),
])
def test_variants_the_table_cannot_merge_are_refused(name: str, arch: str, overrides: dict, says: str,
                                                     tmp_path: Path) -> None:
    model = build_tiny(tmp_path / "m", arch=arch, **overrides)
    with pytest.raises(ConfigError) as err:
        _validate(model, tmp_path)
    msg = str(err.value)
    assert f"architecture {arch}" in msg and says in msg and "\n" not in msg, msg
    assert not (tmp_path / "out").exists()


def test_architecture_without_any_table_is_refused(tmp_path: Path) -> None:
    """OLMoE: transformers knows it, mergekit 0.1.5 has no table (it would guess), and we never tested it."""
    from transformers import AutoConfig, AutoModelForCausalLM

    from hpc_merge.models.tokenizer import build_tokenizer

    cfg = AutoConfig.for_model("olmoe", vocab_size=320, hidden_size=64, intermediate_size=32, num_hidden_layers=2,
                               num_attention_heads=4, num_key_value_heads=2, num_experts=4, num_experts_per_tok=2)
    AutoModelForCausalLM.from_config(cfg).save_pretrained(tmp_path / "olmoe")
    build_tokenizer(tmp_path / "olmoe")
    with pytest.raises(ConfigError, match="architecture olmoe has no mergekit 0.1.5 table"):
        _validate(tmp_path / "olmoe", tmp_path)


def test_a_refused_cell_is_refused_by_validation_and_shown_in_the_table(tmp_path: Path, monkeypatch) -> None:
    """A cell the table marks refused stops the job at validation, and the README shows the reason."""
    row = archsupport.SUPPORT["gemma2"]
    monkeypatch.setitem(archsupport.SUPPORT, "gemma2", dataclasses.replace(row, refused={"slerp": "made up for the test"}))
    cfg = compose(["logger=none", "merge=slerp", "models=tiny"] +
                  [f"models.{n}=tiny:gemma2/{n}" for n in ("math", "science")])
    cfg.output = str(tmp_path / "out")
    with pytest.raises(ConfigError, match=r"gemma2 \(Gemma 2\): slerp is not supported: made up for the test"):
        merge_job.validate(cfg)
    script = _script()
    assert "| refused: made up for the test |" in script.render(script.expected_cells())


def test_dry_run_names_the_architecture_and_its_fix(tmp_path: Path) -> None:
    cfg = compose(["logger=none", "merge=linear", "models=tiny"] +
                  [f"models.{n}=tiny:gpt_neox/{n}" for n in ("math", "coder")])
    cfg.output = str(tmp_path / "out")
    plan = merge_job.validate(cfg)
    text = merge_job.describe(cfg, plan)
    assert "architecture gpt_neox (GPT-NeoX / Pythia): supported; adapter fix:" in text
