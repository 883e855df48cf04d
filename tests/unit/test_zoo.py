"""The test-size skills zoo: deterministic builds, correct held-out tasks, experts that differ."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from hpc_merge import zoo
from hpc_merge.zoo.tasks import LETTERS, make_splits, read_jsonl


def _weights_hash(folder: Path) -> str:
    return hashlib.sha256((folder / "model.safetensors").read_bytes()).hexdigest()


def _chars(text: str) -> str:
    return text.replace(" ", "")


def test_splits_are_seeded_disjoint_and_correct():
    spec = zoo.get_spec("test")
    for task, params in spec.task_params.items():
        a = make_splits(task, 7, spec.split_sizes, params)
        assert a == make_splits(task, 7, spec.split_sizes, params)
        assert a != make_splits(task, 8, spec.split_sizes, params)
        prompts = {s: {r["prompt"] for r in rows} for s, rows in a.items()}
        assert not prompts["train"] & prompts["test"] and not prompts["validation"] & prompts["test"]
        assert {s: len(r) for s, r in a.items()} == spec.split_sizes
    for row in make_splits("reversal", 0, {"train": 20, "validation": 0, "test": 0}, spec.task_params["reversal"])["train"]:
        word = _chars(row["prompt"].split(":", 1)[1].removesuffix("->"))
        assert _chars(row["answer"]) == word[::-1]
    for row in make_splits("sorting", 0, {"train": 20, "validation": 0, "test": 0}, spec.task_params["sorting"])["train"]:
        word = _chars(row["prompt"].split(":", 1)[1].removesuffix("->"))
        assert _chars(row["answer"]) == "".join(sorted(word))
    for row in make_splits("shift", 0, {"train": 20, "validation": 0, "test": 0}, spec.task_params["shift"])["train"]:
        word = _chars(row["prompt"].split(":", 1)[1].removesuffix("->"))
        assert _chars(row["answer"]) == "".join(LETTERS[(LETTERS.index(c) + 1) % len(LETTERS)] for c in word)
    for row in make_splits("complement", 0, {"train": 20, "validation": 0, "test": 0},
                           spec.task_params["complement"])["train"]:
        n = _chars(row["prompt"].split(":", 1)[1].removesuffix("="))
        assert int(_chars(row["answer"])) == 10 ** len(n) - 1 - int(n)


def test_zoo_layout_aliases_and_refs(test_zoo):
    assert set(test_zoo.experts) == set(zoo.EXPERT_TASKS) and len(test_zoo.experts) >= 3
    assert set(test_zoo.tasks) == set(zoo.EXPERT_TASKS.values())
    for name, alias in zoo.ALIASES.items():
        assert zoo.ensure_model(name, "test") == test_zoo.experts[alias]
    assert zoo.ensure_ref("zoo-test:base") == test_zoo.base
    assert zoo.parse_ref("zoo:math@llama") == ("math", "full", "llama")
    assert zoo.parse_ref("tiny:math") is None
    with pytest.raises(KeyError):
        zoo.ensure_model("poetry", "test")
    for split_files in test_zoo.tasks.values():
        assert all(read_jsonl(p) for p in split_files.values())


def test_tokenizer_loads_and_splits_answers_per_character(test_zoo):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(test_zoo.experts["sorting"]))
    assert len(tok) <= zoo.get_spec("test").vocab_size
    row = read_jsonl(test_zoo.tasks["sorting"]["test"])[0]
    ids = tok(row["answer"], add_special_tokens=False)["input_ids"]
    assert tok.decode(ids) == row["answer"]
    assert len(ids) >= len(_chars(row["answer"]))  # no two answer characters share a token


def test_same_seed_gives_the_same_weights(test_zoo, tmp_path, monkeypatch):
    monkeypatch.setenv("HPC_MERGE_CACHE", str(tmp_path))
    rebuilt = zoo.ensure_model("sorting", "test")
    assert rebuilt != test_zoo.experts["sorting"]
    assert _weights_hash(rebuilt.parent / "base") == _weights_hash(test_zoo.base)
    assert _weights_hash(rebuilt) == _weights_hash(test_zoo.experts["sorting"])
    assert _weights_hash(test_zoo.base) != _weights_hash(test_zoo.experts["sorting"])
    assert not (rebuilt.parent / "shift").exists()  # only what was asked for is built


def test_each_expert_clearly_beats_base_and_other_experts_on_its_task(zoo_scores):
    margin = 0.1
    for expert, task in zoo.EXPERT_TASKS.items():
        own = zoo_scores[expert][task]["accuracy"]
        others = {m: s[task]["accuracy"] for m, s in zoo_scores.items() if m != expert}
        assert all(own >= acc + margin for acc in others.values()), (expert, own, others)
