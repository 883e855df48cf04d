"""Where does a built MoE send a prompt? The measurement behind the routing claim.

For one prompt, every (layer, token) pair makes one top-1 router choice; an expert's *share* is
the fraction of those choices it wins. A prompt is "routed mostly to" the expert with the largest
share. Prompts run one at a time, so no padding token is ever routed.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any


def routing_shares(model: Any, tokenizer: Any, prompts: list[str]):
    """``(len(prompts), n_experts)`` tensor of top-1 router shares, one row per prompt."""
    import torch

    rows = []
    with torch.no_grad():
        for prompt in prompts:
            ids = tokenizer(prompt, return_tensors="pt")
            out = model(**ids, output_router_logits=True)
            logits = torch.cat([lg.reshape(-1, lg.shape[-1]) for lg in out.router_logits])
            top1 = logits.argmax(dim=-1)
            rows.append(torch.bincount(top1, minlength=logits.shape[-1]).float() / top1.numel())
    return torch.stack(rows)


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
