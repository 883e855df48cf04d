"""A small, deterministic training loop for the zoo (AdamW, warm-up then linear decay).

The loss is on the answer tokens and the end-of-text token only: the prompts are random strings,
so learning to predict them would spend the few seconds of training on noise.

An expert's fine-tune can be *anchored*: a KL term keeps its next-token distributions on the other
skills' examples equal to the base's. The expert then changes only what its own skill needs, so its
task vector barely acts on other prompts, and task vectors add up in a merge instead of colliding.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence

import torch

from hpc_merge.models.tokenizer import split_pair

Example = tuple[list[int], list[int]]  # (input ids, labels with -100 where no loss)


def encode(tokenizer, rows: Sequence[dict[str, str]]) -> list[Example]:
    """Tokenize ``{"prompt", "answer"}`` rows into training examples ending in end-of-text."""
    eos = tokenizer.eos_token_id
    out = []
    for row in rows:
        prompt, answer = split_pair(tokenizer, row["prompt"], row["answer"])
        answer = answer + [eos]
        out.append((prompt + answer, [-100] * len(prompt) + answer))
    return out


def collate(examples: Sequence[Example], pad: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Right-padded (input_ids, attention_mask, labels)."""
    width = max(len(ids) for ids, _ in examples)
    ids = torch.full((len(examples), width), pad, dtype=torch.long)
    labels = torch.full((len(examples), width), -100, dtype=torch.long)
    mask = torch.zeros((len(examples), width), dtype=torch.long)
    for i, (x, y) in enumerate(examples):
        ids[i, :len(x)] = torch.tensor(x)
        labels[i, :len(y)] = torch.tensor(y)
        mask[i, :len(x)] = 1
    return ids, mask, labels


def _anchor_kl(model, reference, examples: Sequence[Example], pad: int) -> torch.Tensor:
    """Mean KL(reference || model) of next-token distributions over the non-pad positions."""
    ids, mask, _ = collate(examples, pad)
    with torch.no_grad():
        ref = torch.log_softmax(reference(input_ids=ids, attention_mask=mask).logits, dim=-1)
    cur = torch.log_softmax(model(input_ids=ids, attention_mask=mask).logits, dim=-1)
    kl = (ref.exp() * (ref - cur)).sum(-1)
    return (kl * mask).sum() / mask.sum()


def train(model, examples: Sequence[Example], steps: int, lr: float, batch_size: int, seed: int,
          pad: int, warmup: int = 20, anchor=None, anchor_examples: Sequence[Example] = (),
          anchor_weight: float = 1.0, on_step: Callable[[int, float], None] | None = None) -> float:
    """Train ``model`` in place for ``steps`` batches drawn (seeded) from ``examples``; last loss.

    With ``anchor`` (a frozen model), each step adds ``anchor_weight`` times the KL from the anchor
    on a batch of ``anchor_examples`` (half the batch size). ``on_step(steps_done, loss)`` reports
    progress (the zoo build's bar).
    """
    rng = random.Random(seed)
    examples, anchor_examples = list(examples), list(anchor_examples)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / warmup) * max(0.0, 1.0 - s / steps))
    model.train()
    loss = torch.tensor(float("nan"))
    for step in range(steps):
        ids, mask, labels = collate(rng.sample(examples, min(batch_size, len(examples))), pad)
        loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
        if anchor is not None and anchor_examples:
            batch = rng.sample(anchor_examples, min(max(1, batch_size // 2), len(anchor_examples)))
            loss = loss + anchor_weight * _anchor_kl(model, anchor, batch, pad)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        if on_step is not None:
            on_step(step + 1, float(loss.detach()))
    model.eval()
    return float(loss.detach())
