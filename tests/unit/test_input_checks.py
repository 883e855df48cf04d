"""Input models are checked for what would run code or fail late: pickle weights, remote code, empty tokenizers.

Every input here is a real tiny model copied into the test's folder and changed the way such
models come in the wild; merges are real mergekit merges, outputs are loaded by transformers.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import pytest

from hpc_merge.app import main_guarded, run
from hpc_merge.config import compose
from hpc_merge.run.outputs import finish_output


def _copy(src: Path, dest: Path) -> Path:
    shutil.copytree(src, dest)
    return dest


def _refused(overrides: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    cfg = compose(["logger=none", "models=tiny", *overrides])
    capsys.readouterr()
    with pytest.raises(SystemExit) as info:
        main_guarded(cfg)
    assert info.value.code == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), lines
    return lines[0]


@pytest.fixture
def wordlevel_math(tiny_pool, tmp_path: Path) -> Path:
    """The tiny math model (Qwen2) with a WordLevel tokenizer.json: transformers 5 loads it as Qwen2Tokenizer,
    which keeps the vocabulary but drops every word of it (it re-reads it as byte-level BPE)."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    dest = _copy(tiny_pool["math"], tmp_path / "wordlevel_math")
    words = ["12", "34", "12+34=", "the", "quick", "brown", "fox", "reverse:", "abc", "->"]
    tok = Tokenizer(models.WordLevel({"[UNK]": 0, "<|endoftext|>": 1, **{w: i + 2 for i, w in enumerate(words)}},
                                     unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", eos_token="<|endoftext|>").save_pretrained(str(dest))
    return dest


def test_empty_tokenizer_refused_before_merging(wordlevel_math: Path, _logs_dir: Path,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    from transformers import AutoTokenizer

    assert AutoTokenizer.from_pretrained(str(wordlevel_math)).encode("12+34=", add_special_tokens=False) == []
    t0 = time.monotonic()
    # linear has no base: the first model (models.math) is the tokenizer donor
    line = _refused([f"models.math={wordlevel_math}", f"output={wordlevel_math.parent / 'out'}"], capsys)
    assert line.startswith("error: merge.models[0].model: the tokenizer of") and "loads in transformers as empty" in line
    assert "'12+34='" in line
    assert not _logs_dir.exists() and not (wordlevel_math.parent / "out").exists()
    print(f"refused in {time.monotonic() - t0:.1f} s (no weights read)")


def test_empty_tokenizer_of_an_moe_base_refused(wordlevel_math: Path, capsys: pytest.CaptureFixture[str]) -> None:
    line = _refused(["+experiment=moe_demo", f"models.base={wordlevel_math}"], capsys)
    assert line.startswith("error: moe.base_model: the tokenizer of") and "empty" in line


@pytest.fixture
def pickle_math(tiny_pool, tmp_path: Path) -> Path:
    """The tiny math model saved as ``pytorch_model.bin`` (a pickle) instead of safetensors."""
    import torch
    from safetensors.torch import load_file

    dest = _copy(tiny_pool["math"], tmp_path / "pickle_math")
    torch.save(load_file(dest / "model.safetensors"), dest / "pytorch_model.bin")
    (dest / "model.safetensors").unlink()
    return dest


def test_pickle_weights_refused_unless_allowed(pickle_math: Path, tmp_path: Path,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "out"
    line = _refused([f"models.math={pickle_math}", f"output={out}"], capsys)
    assert line.startswith("error: merge.models[0].model: ") and "pickle weights (pytorch_model.bin)" in line
    assert "safetensors" in line and "job.allow_pickle=true" in line
    assert not out.exists()
    result = run(compose(["logger=none", "models=tiny", f"models.math={pickle_math}", f"output={out}",
                          "job.allow_pickle=true"]))
    assert result["status"] == "ok" and (out / "model.safetensors").is_file()


def test_moe_expert_with_pickle_weights_refused(pickle_math: Path, capsys: pytest.CaptureFixture[str]) -> None:
    line = _refused(["+experiment=moe_demo", f"models.math={pickle_math}"], capsys)
    assert ".source_model: " in line and "pickle weights" in line


@pytest.fixture
def remote_code_math(tiny_pool, tmp_path: Path) -> Path:
    """The tiny math model with remote-code pointers (auto_map) in its config and tokenizer config."""
    dest = _copy(tiny_pool["math"], tmp_path / "remote_math")
    for name, auto_map in (("config.json", {"AutoModelForCausalLM": "modeling_evil.EvilForCausalLM"}),
                           ("tokenizer_config.json", {"AutoTokenizer": ["tokenization_evil.EvilTokenizer", None]})):
        data = json.loads((dest / name).read_text())
        (dest / name).write_text(json.dumps({**data, "auto_map": auto_map}))
    (dest / "modeling_evil.py").write_text("raise SystemExit('remote code ran')\n")
    return dest


def test_auto_map_is_not_copied_into_the_output(remote_code_math: Path, tmp_path: Path,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "out"
    result = run(compose(["logger=none", "models=tiny", f"models.math={remote_code_math}", f"output={out}"]))
    assert result["status"] == "ok"  # the smoke test loaded it with stock transformers
    assert "removed remote code from the output" in capsys.readouterr().out
    for name in ("config.json", "tokenizer_config.json"):
        assert "auto_map" not in json.loads((out / name).read_text()), name
        assert "auto_map" in json.loads((remote_code_math / name).read_text())  # the input is untouched
    assert not list(out.glob("*.py"))
    # asked for (job.options.trust_remote_code=true), the same finishing step keeps it
    kept = _copy(remote_code_math, tmp_path / "kept")
    finish_output(kept, tmp_path / "run", trust_remote_code=True)
    assert "auto_map" in json.loads((kept / "config.json").read_text())
