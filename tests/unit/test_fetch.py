"""``hpc-merge fetch``: which refs are Hub models, and offline behaviour against a real HF cache."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from hpc_merge.cli.fetch import _resolved_sections, hub_id, model_refs
from hpc_merge.config import compose

QWEN = ["Qwen/Qwen2.5-32B", "Qwen/Qwen2.5-32B-Instruct", "Qwen/QwQ-32B", "Qwen/Qwen2.5-Coder-32B-Instruct",
        "simplescaling/s1-32B"]


def _fetch(*args: str, hf_home: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HOME": str(hf_home)}
    return subprocess.run([sys.executable, "-m", "hpc_merge", "fetch", *args], capture_output=True, text=True,
                          timeout=120, env=env)


@pytest.mark.parametrize(("ref", "expected"), [
    ("Qwen/Qwen2.5-32B", ("Qwen/Qwen2.5-32B", None)),
    ("org/name@v1.0", ("org/name", "v1.0")),
    ("org/base+org/lora", ("org/base", None)),
    ("tiny:base", None), ("zoo:math", None), ("/abs/path/model", None), ("./rel/model", None),
    ("bfloat16", None), ("base", None),
])
def test_hub_id(ref: str, expected: tuple | None) -> None:
    assert hub_id(ref) == expected


def test_existing_local_path_is_not_a_hub_id(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "org" / "model").mkdir(parents=True)
    monkeypatch.chdir(tmp_path)
    assert hub_id("org/model") is None


def test_refs_of_a_preset_on_the_qwen_pool() -> None:
    refs = model_refs(_resolved_sections(compose(["+experiment=stem_focused"])))
    assert [r for r, _ in refs] == QWEN


def test_refs_in_recipes_outside_the_pool() -> None:
    cfg = {"models": {"base": "tiny:base"},
           "merge": {"base_model": "org/base", "dtype": "bfloat16", "merge_method": "ties",
                     "models": [{"model": "org/a@rev", "parameters": {"weight": 0.5}}]},
           "moe": {"experts": [{"source_model": "org/expert", "positive_prompts": ["a/b is a ratio"]}]},
           "evolve": {"models": ["org/a@rev", "org/c"], "fitness": {"tasks": ["data/x.jsonl"]}}}
    assert model_refs(cfg) == [("org/base", None), ("org/a", "rev"), ("org/expert", None), ("org/c", None)]


def test_offline_missing_model_fails_fast_in_one_line(tmp_path: Path) -> None:
    t0 = time.monotonic()
    proc = _fetch("+experiment=stem_focused", hf_home=tmp_path / "hf")
    assert proc.returncode == 1
    assert proc.stderr.strip().count("\n") == 0
    assert "Qwen/Qwen2.5-32B is not in the cache" in proc.stderr and "HF_HUB_OFFLINE=1" in proc.stderr
    assert time.monotonic() - t0 < 60


def test_offline_cached_models_are_found(tmp_path: Path) -> None:
    """A cache laid out the way huggingface_hub writes it (refs/main -> snapshots/<commit>)."""
    hf_home = tmp_path / "hf"
    for repo in QWEN:
        root = hf_home / "hub" / f"models--{repo.replace('/', '--')}"
        (root / "refs").mkdir(parents=True)
        (root / "refs" / "main").write_text("0" * 40)
        (root / "snapshots" / ("0" * 40)).mkdir(parents=True)
        (root / "snapshots" / ("0" * 40) / "config.json").write_text("{}")
    proc = _fetch("+experiment=stem_focused", "cluster=slurm", f"cluster.hf_home={hf_home}", hf_home=tmp_path / "x")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.count("\nok ") + proc.stdout.startswith("ok ") == len(QWEN)


def test_nothing_to_fetch_for_built_in_models(tmp_path: Path) -> None:
    proc = _fetch("models=tiny", hf_home=tmp_path)
    assert proc.returncode == 0 and "nothing to fetch" in proc.stdout
