"""The built-in evaluator against a hand computation, and its in-memory / batching invariances."""

from __future__ import annotations

import json
import math

import pytest
import torch

from hpc_merge.evaluate import evaluate_model, load_model, load_tasks, load_tokenizer
from hpc_merge.models.tokenizer import split_pair
from hpc_merge.zoo.tasks import read_jsonl


def _greedy_by_hand(model, tok, prompt: str, max_new: int = 16) -> str:
    """One prompt, no padding, no KV cache: argmax token by token until end-of-text."""
    ids = tok(prompt, add_special_tokens=False)["input_ids"]
    out: list[int] = []
    for _ in range(max_new):
        nxt = int(model(input_ids=torch.tensor([ids + out])).logits[0, -1].argmax())
        if nxt == tok.eos_token_id:
            break
        out.append(nxt)
    return tok.decode(out, skip_special_tokens=True)


def _answer_loglik_by_hand(model, tok, prompt: str, answer: str) -> float:
    ctx, cont = split_pair(tok, prompt, answer)
    logp = torch.log_softmax(model(input_ids=torch.tensor([ctx + cont])).logits[0], dim=-1)
    return sum(float(logp[len(ctx) - 1 + i, t]) for i, t in enumerate(cont)) / len(cont)


@pytest.fixture(scope="module")
def sorting_expert(test_zoo):
    path = test_zoo.experts["sorting"]
    return path, load_model(path), load_tokenizer(path)


@torch.inference_mode()
def test_accuracy_and_loglik_match_a_hand_computation(sorting_expert, test_zoo, tmp_path):
    path, model, tok = sorting_expert
    rows = read_jsonl(test_zoo.tasks["sorting"]["test"])[:4] + read_jsonl(test_zoo.tasks["reversal"]["test"])[:2]
    # Answers we know the truth of: the model's own greedy output (right) or that output changed (wrong).
    outputs = [_greedy_by_hand(model, tok, r["prompt"]) for r in rows]
    made = [{"prompt": r["prompt"], "answer": " " + o.strip() if i % 2 == 0 else o.strip() + " z"}
            for i, (r, o) in enumerate(zip(rows, outputs, strict=True))]
    task_file = tmp_path / "known.jsonl"
    task_file.write_text("".join(json.dumps(m) + "\n" for m in made))
    scores = evaluate_model(path, [str(task_file)], batch_size=4)["known"]
    assert scores["n"] == 6
    assert scores["accuracy"] == pytest.approx(3 / 6)
    expected_ll = sum(_answer_loglik_by_hand(model, tok, m["prompt"], m["answer"]) for m in made) / 6
    assert scores["loglik"] == pytest.approx(expected_ll, abs=1e-4)

    # The real references: accuracy = share of hand-decoded outputs equal to them.
    real = evaluate_model(path, load_tasks(["zoo:sorting"], size="test"), limit=4)["sorting"]
    hand = sum(o.strip() == r["answer"].strip() for o, r in zip(outputs[:4], rows[:4], strict=True)) / 4
    assert real["accuracy"] == pytest.approx(hand)


def test_in_memory_model_equals_path_and_batch_size_does_not_matter(sorting_expert):
    path, model, tok = sorting_expert
    tasks = load_tasks(["zoo:sorting", "zoo:shift"], size="test")
    from_path = evaluate_model(path, tasks, limit=24)
    in_memory = evaluate_model(model, tasks, tokenizer=tok, limit=24)
    one_by_one = evaluate_model(model, tasks, tokenizer=tok, limit=24, batch_size=1)
    for name in ("sorting", "shift"):
        assert in_memory[name] == from_path[name]
        assert one_by_one[name]["accuracy"] == from_path[name]["accuracy"]
        assert one_by_one[name]["loglik"] == pytest.approx(from_path[name]["loglik"], abs=1e-4)
        assert from_path[name]["n"] == 24
    assert from_path["sorting"]["accuracy"] > from_path["shift"]["accuracy"]  # it is the sorting expert


def test_load_tasks_specs(test_zoo, tmp_path):
    names = [t.name for t in load_tasks(["zoo", "zoo:sorting"], size="test")]
    assert names == list(test_zoo.tasks)  # the duplicate is dropped, order kept
    user = tmp_path / "mine.jsonl"
    user.write_text('{"prompt": "sort: b a ->", "answer": " a b"}\n')
    (task,) = load_tasks([str(user)])
    assert task.name == "mine" and task.file("test") == task.file("validation") == user.resolve()
    with pytest.raises(KeyError):
        load_tasks(["zoo:nope"], size="test")
    with pytest.raises(FileNotFoundError):
        load_tasks([str(tmp_path / "missing.jsonl")])
    (lm,) = load_tasks(["lmeval:zoo:sorting"], size="test")
    assert lm.backend == "lmeval" and lm.lmeval.endswith("zoo_sorting.yaml")


def test_split_pair_moves_trailing_space_to_the_answer(sorting_expert):
    _, _, tok = sorting_expert
    ctx, cont = split_pair(tok, "sort: b a -> ", "a b")
    assert tok.decode(ctx) == "sort: b a ->" and tok.decode(cont) == " a b"


def test_empty_file_gives_nan(sorting_expert, tmp_path):
    path, _, _ = sorting_expert
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    scores = evaluate_model(path, [str(empty)])["empty"]
    assert scores["n"] == 0 and math.isnan(scores["accuracy"])


def test_may_match_compares_visible_characters_and_keeps_unfinished_bytes_open():
    from hpc_merge.evaluate.builtin import may_match

    assert may_match("", " a b c")
    assert may_match(" a", " a b c") and may_match("a b", " a b c")
    assert may_match(" a b c ", " a b c") and may_match("abc", " a b c")  # spaces may still move (clean-up)
    assert not may_match(" a c", " a b c") and not may_match(" a b c d", " a b c")
    # byte-level BPE: only the last U+FFFD is an unfinished character, earlier ones are final
    assert may_match(" a\ufffd", " a€", open_tail=1)
    assert not may_match("\ufffd\ufffd", " a", open_tail=1)
    assert not may_match("\ufffdq", " a", open_tail=None)
    # other decoders (byte fallback): every trailing U+FFFD may still become a character
    assert may_match("\ufffd\ufffd", " a", open_tail=None)


def test_open_tail_reads_the_decoder(sorting_expert):
    from hpc_merge.evaluate.builtin import open_tail

    _, _, tok = sorting_expert
    assert open_tail(tok) == 1  # the zoo's byte-level BPE
    assert open_tail(object()) is None


@torch.inference_mode()
def test_stopping_undecidable_rows_early_changes_no_score(sorting_expert):
    """Early stop saves decoding steps and gives the very same metrics as decoding every token."""
    from hpc_merge.evaluate.builtin import encode_file, evaluate_file, greedy_answers

    path, model, tok = sorting_expert
    calls = []
    hook = model.register_forward_hook(lambda *a: calls.append(1))
    try:
        for task in load_tasks(["zoo"], size="test"):
            for batch in (5, 32):
                full = evaluate_file(model, tok, task.file("test"), 24, batch, stop_early=False)
                n_full = len(calls)
                fast = evaluate_file(model, tok, task.file("test"), 24, batch, stop_early=True)
                assert fast == full, (task.name, batch)
                assert len(calls) - n_full <= n_full  # never more forwards
                calls.clear()
        enc = encode_file(load_tasks(["zoo:shift"], size="test")[0].file("test"), tok, 24)
        texts = greedy_answers(model, tok, enc, 32)
        full = greedy_answers(model, tok, enc, 32, stop_early=False)
        assert [t.strip() == r.strip() for t, r in zip(texts, enc.references, strict=True)] == \
               [t.strip() == r.strip() for t, r in zip(full, enc.references, strict=True)]
        assert sum(map(len, texts)) < sum(map(len, full))  # the wrong rows really stopped early
    finally:
        hook.remove()
