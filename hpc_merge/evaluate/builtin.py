"""The built-in back end: exact match by greedy generation and answer log-likelihood.

Kept lean because evolution calls it on in-memory models many times: no reload, task files are
read and tokenized once per (file, tokenizer), and the two measures share one loop over batches.
Tokenization of (prompt, answer) pairs follows lm-eval-harness (trailing spaces move from the
prompt to the answer; the answer's tokens are the tail of the tokenized whole), so our
log-likelihoods are the ones lm-eval computes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import torch

from hpc_merge.zoo.tasks import read_jsonl

#: Tokens generated beyond the longest answer of a batch: room to show that a model does not stop.
GEN_MARGIN = 4


@dataclass(frozen=True)
class Encoded:
    """A task file tokenized once: prompt ids, answer ids (the continuation) and the references."""

    prompts: tuple[tuple[int, ...], ...]
    answers: tuple[tuple[int, ...], ...]
    references: tuple[str, ...]


def split_pair(tokenizer, prompt: str, answer: str) -> tuple[list[int], list[int]]:
    """(prompt ids, answer ids) exactly as lm-eval's ``_encode_pair`` makes them."""
    n = len(prompt) - len(prompt.rstrip())
    if n:
        prompt, answer = prompt[:-n], prompt[-n:] + answer
    whole = tokenizer(prompt + answer, add_special_tokens=False)["input_ids"]
    ctx = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    return ctx, whole[len(ctx):]


#: (id(tokenizer), file, mtime, limit) -> Encoded; the tokenizer is kept alive with its entry so
#: its id cannot be reused by another object.
_ENCODED: dict[tuple, tuple[object, Encoded]] = {}


def encode_file(path: Path, tokenizer, limit: int | None = None) -> Encoded:
    """Tokenized rows of ``path``, cached while the file and the tokenizer object stay the same."""
    key = (id(tokenizer), str(path), Path(path).stat().st_mtime_ns, limit)
    if key not in _ENCODED:
        rows = read_jsonl(path)
        rows = rows[:limit] if limit is not None else rows
        pairs = [split_pair(tokenizer, r["prompt"], r["answer"]) for r in rows]
        enc = Encoded(tuple(tuple(p) for p, _ in pairs), tuple(tuple(a) for _, a in pairs),
                      tuple(r["answer"] for r in rows))
        if len(_ENCODED) > 256:
            _ENCODED.clear()
        _ENCODED[key] = (tokenizer, enc)
    return _ENCODED[key][1]


def _left_pad(seqs: list[tuple[int, ...]], pad: int) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for i, s in enumerate(seqs):
        ids[i, width - len(s):] = torch.tensor(s, dtype=torch.long)
        mask[i, width - len(s):] = 1
    return ids, mask


def answer_logliks(model, enc: Encoded, batch_size: int, pad: int) -> list[tuple[float, int]]:
    """(sum of answer-token log-probs, answer length) per row, one forward per batch.

    Rows are right-padded, so positions match an unpadded forward (what lm-eval does).
    """
    out: list[tuple[float, int]] = []
    device = model.device
    for start in range(0, len(enc.prompts), batch_size):
        seqs = [p + a for p, a in zip(enc.prompts[start:start + batch_size], enc.answers[start:start + batch_size], strict=True)]
        width = max(len(s) for s in seqs)
        ids = torch.full((len(seqs), width), pad, dtype=torch.long)
        mask = torch.zeros_like(ids)
        for i, s in enumerate(seqs):
            ids[i, :len(s)] = torch.tensor(s, dtype=torch.long)
            mask[i, :len(s)] = 1
        logits = model(input_ids=ids.to(device), attention_mask=mask.to(device)).logits.float()
        logp = torch.log_softmax(logits, dim=-1)
        batch = zip(enc.prompts[start:start + batch_size], enc.answers[start:start + batch_size], strict=True)
        for i, (p, a) in enumerate(batch):
            if not a:
                out.append((0.0, 0))
                continue
            pos = torch.arange(len(p) - 1, len(p) + len(a) - 1, device=logp.device)
            tgt = torch.tensor(a, dtype=torch.long, device=logp.device)
            out.append((float(logp[i, pos, tgt].sum()), len(a)))
    return out


def greedy_answers(model, tokenizer, enc: Encoded, batch_size: int) -> list[str]:
    """Greedy continuations of every prompt (left-padded batches), decoded without specials."""
    eos = tokenizer.eos_token_id
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos
    texts: list[str] = []
    for start in range(0, len(enc.prompts), batch_size):
        prompts = list(enc.prompts[start:start + batch_size])
        longest = max(len(a) for a in enc.answers[start:start + batch_size])
        ids, mask = _left_pad(prompts, pad)
        gen = model.generate(
            input_ids=ids.to(model.device), attention_mask=mask.to(model.device),
            max_new_tokens=longest + GEN_MARGIN, do_sample=False, num_beams=1,
            pad_token_id=pad, eos_token_id=eos,
        )
        texts.extend(tokenizer.batch_decode(gen[:, ids.shape[1]:], skip_special_tokens=True))
    return texts


def evaluate_file(model, tokenizer, path: Path, limit: int | None, batch_size: int) -> dict:
    """``{"accuracy", "loglik", "n"}`` on one JSONL file.

    accuracy: share of rows whose stripped greedy continuation equals the stripped answer.
    loglik: per row, the mean log-prob of the answer's tokens; then the mean over rows.
    """
    enc = encode_file(path, tokenizer, limit)
    if not enc.prompts:
        return {"accuracy": math.nan, "loglik": math.nan, "n": 0}
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    texts = greedy_answers(model, tokenizer, enc, batch_size)
    hits = sum(t.strip() == r.strip() for t, r in zip(texts, enc.references, strict=True))
    lls = answer_logliks(model, enc, batch_size, pad)
    per_token = [s / n for s, n in lls if n]
    return {
        "accuracy": hits / len(texts),
        "loglik": sum(per_token) / len(per_token) if per_token else math.nan,
        "n": len(texts),
    }
