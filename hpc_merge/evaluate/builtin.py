"""The built-in back end: exact match by greedy generation and answer log-likelihood.

Kept lean because evolution calls it on in-memory models many times: no reload, task files are
read and tokenized once per (file, tokenizer), and the two measures share one loop over batches.
Tokenization of (prompt, answer) pairs follows lm-eval-harness (trailing spaces move from the
prompt to the answer; the answer's tokens are the tail of the tokenized whole), so our
log-likelihoods are the ones lm-eval computes.

Greedy generation stops a row as soon as its continuation can no longer equal its reference
(:class:`CannotMatch`), and a batch as soon as every row has stopped, ended or matched as far as
it can: a model that gets a prompt wrong usually does so at its first token, so most of the
decoding steps an exact-match score used to pay for decided nothing. The rows still running see
the same forwards as before, so every accuracy is unchanged (tested against full-length decoding).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import torch

from hpc_merge.models.tokenizer import split_pair
from hpc_merge.zoo.tasks import read_jsonl

#: Tokens generated beyond the longest answer of a batch: room to show that a model does not stop.
GEN_MARGIN = 4


@dataclass(frozen=True)
class Encoded:
    """A task file tokenized once: prompt ids, answer ids (the continuation) and the references."""

    prompts: tuple[tuple[int, ...], ...]
    answers: tuple[tuple[int, ...], ...]
    references: tuple[str, ...]


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


def _visible(text: str) -> str:
    """``text`` without any whitespace (what exact match after ``strip`` cannot ignore)."""
    return "".join(text.split())


def may_match(text: str, reference: str, open_tail: int | None = None) -> bool:
    """Can a continuation that starts with ``text`` (decoded so far) still equal ``reference`` after strip?

    Decoding more tokens only appends characters, except that tokenizers may drop or add spaces
    (clean-up of ``" ."``, SentencePiece's leading space) and that bytes of an unfinished character
    show as U+FFFD until the character is complete. So compare the non-whitespace characters, the
    trailing U+FFFD that may still change left out (``open_tail`` of them, every one when None): if
    the rest is not a prefix of the reference's, no continuation can match.
    """
    seen = _visible(text)
    tail = len(seen) - len(seen.rstrip(FFFD))
    if tail:
        seen = seen[:-min(tail, open_tail if open_tail is not None else tail)]
    return _visible(reference).startswith(seen)


FFFD = "\ufffd"


def open_tail(tokenizer) -> int | None:
    """How many trailing U+FFFD of a decoded prefix more tokens can still turn into characters.

    1 for a byte-level BPE decoder (GPT-2, Qwen, Llama 3): it decodes all bytes as lossy UTF-8, so
    only a truncated last character shows as (one) U+FFFD and every earlier one is final. None (all
    of them) for any other decoder: SentencePiece's byte fallback shows every byte of an unfinished
    run as U+FFFD, and unknown decoders are not guessed at.
    """
    import json

    backend = getattr(tokenizer, "backend_tokenizer", None)
    try:
        decoder = json.loads(backend.to_str()).get("decoder") if backend is not None else None
    except Exception:  # a tokenizer we cannot inspect: stay conservative
        return None
    while isinstance(decoder, dict) and decoder.get("type") == "Sequence" and len(decoder.get("decoders") or []) == 1:
        decoder = decoder["decoders"][0]
    return 1 if isinstance(decoder, dict) and decoder.get("type") == "ByteLevel" else None


def _stop_when_decided(tokenizer, start: int, references: tuple[str, ...]):
    """A ``StoppingCriteria`` that ends each row whose continuation (tokens after ``start``) cannot match."""
    from transformers import StoppingCriteria

    tail = open_tail(tokenizer)

    class CannotMatch(StoppingCriteria):
        def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor, **kwargs) -> torch.Tensor:
            texts = tokenizer.batch_decode(input_ids[:, start:], skip_special_tokens=True)
            done = [not may_match(t, r, tail) for t, r in zip(texts, references, strict=True)]
            return torch.tensor(done, dtype=torch.bool, device=input_ids.device)

    return CannotMatch()


def greedy_answers(model, tokenizer, enc: Encoded, batch_size: int, stop_early: bool = True) -> list[str]:
    """Greedy continuations of every prompt (left-padded batches), decoded without specials.

    With ``stop_early`` a row stops as soon as it can no longer equal its reference: its text is
    then a prefix of the full continuation (enough to score exact match, not to show the answer).
    """
    from transformers import StoppingCriteriaList

    eos = tokenizer.eos_token_id
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos
    texts: list[str] = []
    for start in range(0, len(enc.prompts), batch_size):
        prompts = list(enc.prompts[start:start + batch_size])
        longest = max(len(a) for a in enc.answers[start:start + batch_size])
        ids, mask = _left_pad(prompts, pad)
        stop = StoppingCriteriaList([_stop_when_decided(tokenizer, ids.shape[1],
                                                        enc.references[start:start + batch_size])]
                                    if stop_early else [])
        gen = model.generate(
            input_ids=ids.to(model.device), attention_mask=mask.to(model.device),
            max_new_tokens=longest + GEN_MARGIN, do_sample=False, num_beams=1,
            pad_token_id=pad, eos_token_id=eos, stopping_criteria=stop,
        )
        texts.extend(tokenizer.batch_decode(gen[:, ids.shape[1]:], skip_special_tokens=True))
    return texts


def evaluate_file(model, tokenizer, path: Path, limit: int | None, batch_size: int, stop_early: bool = True) -> dict:
    """``{"accuracy", "loglik", "n"}`` on one JSONL file.

    accuracy: share of rows whose stripped greedy continuation equals the stripped answer.
    loglik: per row, the mean log-prob of the answer's tokens; then the mean over rows.
    """
    enc = encode_file(path, tokenizer, limit)
    if not enc.prompts:
        return {"accuracy": math.nan, "loglik": math.nan, "n": 0}
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    texts = greedy_answers(model, tokenizer, enc, batch_size, stop_early)
    hits = sum(t.strip() == r.strip() for t, r in zip(texts, enc.references, strict=True))
    lls = answer_logliks(model, enc, batch_size, pad)
    per_token = [s / n for s, n in lls if n]
    return {
        "accuracy": hits / len(texts),
        "loglik": sum(per_token) / len(per_token) if per_token else math.nan,
        "n": len(texts),
    }
