"""Where does a built MoE send a prompt? The measurement behind the routing claim.

For one prompt, every (layer, token) pair makes one top-1 router choice; an expert's *share* is
the fraction of those choices it wins. A prompt is "routed mostly to" the expert with the largest
share. Padding positions are left out of the counts.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any


def _batches(prompts: list[str], size: int):
    for i in range(0, len(prompts), size):
        yield prompts[i:i + size]


def routing_shares(model: Any, tokenizer: Any, prompts: list[str], batch_size: int = 32):
    """``(len(prompts), n_experts)`` tensor of top-1 router shares, one row per prompt.

    Prompts are batched with right padding; padding positions are masked out of the counts.
    """
    import torch

    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "right"
    rows = []
    with torch.no_grad():
        for batch in _batches(list(prompts), batch_size):
            enc = tokenizer(batch, return_tensors="pt", padding=True)
            out = model(**enc, output_router_logits=True)
            mask = enc["attention_mask"].reshape(-1).bool()
            n_exp = out.router_logits[0].shape[-1]
            counts = torch.zeros(len(batch), n_exp)
            row_of = torch.arange(len(batch)).repeat_interleave(enc["input_ids"].shape[1])[mask]
            for lg in out.router_logits:
                top1 = lg.reshape(-1, n_exp)[mask].argmax(dim=-1)
                counts.index_put_((row_of, top1), torch.ones_like(top1, dtype=counts.dtype), accumulate=True)
            rows.append(counts / counts.sum(dim=-1, keepdim=True))
    return torch.cat(rows)


def routing_report(model_dir: str | Path, prompts_by_expert: list[list[str]]) -> dict[str, Any]:
    """For each expert's prompts: the fraction routed mostly to it, and its mean share.

    ``prompts_by_expert[i]`` are prompts that should go to expert ``i``. ``accuracy`` is over all
    prompts; ``min_expert_accuracy`` is the worst expert's figure (the one a claim must rest on).
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(model_dir))
    model = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32).eval()
    per_expert, hits, total = [], 0, 0
    for i, prompts in enumerate(prompts_by_expert):
        if not prompts:
            continue
        shares = routing_shares(model, tok, list(prompts))
        mostly = (shares.argmax(dim=-1) == i).float()
        per_expert.append({"expert": i, "n_prompts": len(prompts), "accuracy": mostly.mean().item(),
                           "mean_share": shares[:, i].mean().item()})
        hits += int(mostly.sum().item())
        total += len(prompts)
    return {"accuracy": hits / max(total, 1), "n_prompts": total,
            "min_expert_accuracy": min((e["accuracy"] for e in per_expert), default=0.0),
            "per_expert": per_expert}
