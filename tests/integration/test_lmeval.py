"""lm-eval-harness back end: offline, on a local task YAML over a zoo skill's JSONL.

Relation to the built-in evaluator: the same greedy exact match (lm-eval's ``exact_match`` after
stripping) must give the same accuracy, and lm-eval's log-likelihoods, taken per document from its
samples and divided by the answer's token count, must give our mean per-token log-likelihood.
"""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.integration

lm_eval = pytest.importorskip("lm_eval", reason="the optional extra 'eval' (lm-eval) is not installed")


def test_lmeval_matches_builtin_on_a_zoo_task(test_zoo, tmp_path):
    import yaml

    from hpc_merge.evaluate import evaluate_model, load_model, load_tasks, load_tokenizer
    from hpc_merge.evaluate.lmeval_yaml import write_zoo_task_yaml

    path = test_zoo.experts["sorting"]
    model, tok = load_model(path), load_tokenizer(path)
    gen_yaml = write_zoo_task_yaml("sorting", test_zoo.tasks["sorting"], tmp_path / "lmeval")
    cfg = yaml.safe_load(gen_yaml.read_text())
    assert cfg["dataset_path"] == "json" and cfg["output_type"] == "generate_until"
    assert cfg["dataset_kwargs"]["data_files"]["test"] == str(test_zoo.tasks["sorting"]["test"].resolve())
    assert (tmp_path / "lmeval" / "zoo_sorting_ll.yaml").exists()

    builtin = evaluate_model(model, load_tasks(["zoo:sorting"], size="test"), tokenizer=tok)["sorting"]
    via_lmeval = evaluate_model(model, load_tasks([f"lmeval:{gen_yaml}"], size="test"), tokenizer=tok)
    result = via_lmeval["zoo_sorting"]
    assert result["n"] == builtin["n"]
    assert result["accuracy"] == pytest.approx(builtin["accuracy"])
    assert result["loglik"] == pytest.approx(builtin["loglik"], abs=1e-4)
    assert 0.0 < builtin["accuracy"]  # the comparison is not between two zeros


def test_lmeval_zoo_spec_runs_from_a_path(test_zoo):
    from hpc_merge.evaluate import evaluate_model, load_tasks

    scores = evaluate_model(test_zoo.experts["shift"], load_tasks(["lmeval:zoo:shift"], size="test"), limit=10)
    assert scores["zoo_shift"]["n"] == 10 and 0.0 <= scores["zoo_shift"]["accuracy"] <= 1.0
