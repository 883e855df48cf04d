"""A small, deterministic training loop for the zoo (AdamW, warm-up then linear decay).

The loss is on the answer tokens and the end-of-text token only: the prompts are random strings,
so learning to predict them would spend the few seconds of training on noise.
"""

from __future__ import annotations

import random
from collections.abc import Sequence

import torch

Example = tuple[list[int], list[int]]  # (input ids, labels with -100 where no loss)


def encode(tokenizer, rows: Sequence[dict[str, str]]) -> list[Example]:
    """Tokenize ``{"prompt", "answer"}`` rows into training examples ending in end-of-text."""
    from hpc_merge.evaluate.builtin import split_pair

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


def train(model, examples: Sequence[Example], steps: int, lr: float, batch_size: int, seed: int,
          pad: int, warmup: int = 20) -> float:
    """Train ``model`` in place for ``steps`` batches drawn (seeded) from ``examples``; last loss."""
    rng = random.Random(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / warmup) * max(0.0, 1.0 - s / steps))
    model.train()
    loss = torch.tensor(float("nan"))
    for _ in range(steps):
        ids, mask, labels = collate(rng.sample(list(examples), min(batch_size, len(examples))), pad)
        loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
    model.eval()
    return float(loss)
