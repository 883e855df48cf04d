"""Router (gate) vectors for every layer.

mergekit's modes (hidden, hidden_avg, hidden_last, cheap_embed, random, uniform_random) go through
its ``get_gate_params`` directly: ``scripts.moe.build`` would ``sys.exit`` on bad configs, and
validation is :mod:`hpc_merge.moe.recipe`'s job.

``hidden_centered`` is ours. mergekit's ``hidden`` takes the residual stream at each layer's
*input* and the last prompt token; the router instead sees the post-attention-norm MLP input of
*every* token, and with un-centered vectors the direction all prompts share decides the winner.
So here each expert's vector is the mean router input over all tokens of its prompts (minus the
negative prompts' mean), centered across experts, unit-normalised. On random tiny models this
routed 90 % of held-out zoo-task prompts mostly to the right expert against 47 % for ``hidden``.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from hpc_merge.moe.recipe import PROMPT_GATE_MODES, ExpertSpec, MoePlan

if TYPE_CHECKING:
    import torch

log = logging.getLogger(__name__)


def mergekit_expert(spec: ExpertSpec, residual_factor: float = 1.0):
    """Our :class:`ExpertSpec` as a ``mergekit.moe.config.Expert`` (folder path as the model).

    ``residual_factor`` multiplies ``residual_scale`` (used for the always-on shared expert).
    """
    from mergekit.moe.config import Expert

    scale = spec.residual_scale
    if residual_factor != 1.0:
        scale = (scale if scale is not None else 1.0) * residual_factor
    return Expert(source_model=spec.path, positive_prompts=list(spec.positive_prompts) or None,
                  negative_prompts=list(spec.negative_prompts) or None,
                  noise_scale=spec.noise_scale, residual_scale=scale)


def prompt_tokenizer(base_path: str):
    """The base model's tokenizer set up as mergekit does for prompts: left padding, a pad token."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(base_path)
    tok.padding_side = "left"
    if tok.pad_token_id is None:
        tok.pad_token = tok.bos_token if tok.bos_token is not None else tok.eos_token
    return tok


def gate_vectors(plan: MoePlan, device: str = "cpu", seed: int = 0) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``(router, shared)``: router ``(layers, experts, hidden)``; shared ``(layers, 1, hidden)`` or None.

    An ``always_on`` shared expert gets a zero gate vector (sigmoid(0) = 1/2; the writer doubles
    its output projection so it contributes with weight exactly 1).
    """
    import torch
    from mergekit.common import ModelReference
    from mergekit.moe.router import get_gate_params, warn_degenerate_gates

    torch.manual_seed(seed)  # random / uniform_random gates and noise_scale use the global RNG
    if plan.gate_mode == "hidden_centered":
        return centered_gates(plan, device)
    need = [mergekit_expert(e) for e in plan.experts]
    gated_shared = bool(plan.shared_experts) and plan.shared_expert_gate == "prompts"
    if gated_shared:
        need += [mergekit_expert(e) for e in plan.shared_experts]
    tokenizer = prompt_tokenizer(plan.base_path) if plan.gate_mode in PROMPT_GATE_MODES else None
    vecs = get_gate_params(ModelReference.parse(plan.base_path), tokenizer, need, mode=plan.gate_mode,
                           lazy_unpickle=False, trust_remote_code=False, device=device)
    vecs = vecs.float()
    if plan.gate_mode in PROMPT_GATE_MODES:
        warn_degenerate_gates(vecs)
    n = len(plan.experts)
    router = vecs[:, :n, :].contiguous()
    shared = None
    if plan.shared_experts:
        shared = (vecs[:, n:, :].contiguous() if gated_shared
                  else torch.zeros(vecs.shape[0], len(plan.shared_experts), vecs.shape[2]))
    return router, shared


def _router_inputs(model, tokenizer, prompts: tuple[str, ...], batch_size: int = 32):
    """``(layers, hidden)``: mean input of every layer's MLP (the router's input) over all prompt tokens.

    Batched with right padding; padding positions are masked out of the mean.
    """
    import torch

    layers = model.model.layers
    sums = torch.zeros(len(layers), model.config.hidden_size)
    mask: list[torch.Tensor] = []

    def hook(i: int):
        def grab(_module, args):
            x = args[0].reshape(-1, args[0].shape[-1]).float()
            sums[i] += x[mask[0].to(x.device)].sum(0).cpu()
        return grab

    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "right"
    handles = [layer.mlp.register_forward_pre_hook(hook(i)) for i, layer in enumerate(layers)]
    count = 0
    try:
        with torch.no_grad():
            for start in range(0, len(prompts), batch_size):
                enc = tokenizer(list(prompts[start:start + batch_size]), return_tensors="pt", padding=True)
                mask[:] = [enc["attention_mask"].reshape(-1).bool()]
                model(**enc.to(model.device))
                count += int(mask[0].sum())
    finally:
        for h in handles:
            h.remove()
    return sums / max(count, 1)


def centered_gates(plan: MoePlan, device: str = "cpu") -> tuple[torch.Tensor, torch.Tensor | None]:
    """``hidden_centered`` gate vectors (see the module docstring); shared experts are not centered."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    dtype = torch.float32 if device == "cpu" else torch.bfloat16
    model = AutoModelForCausalLM.from_pretrained(plan.base_path, dtype=dtype, device_map=device).eval()
    tok = AutoTokenizer.from_pretrained(plan.base_path)

    def direction(e: ExpertSpec) -> torch.Tensor:
        v = _router_inputs(model, tok, e.positive_prompts)
        if e.negative_prompts:
            v = v - _router_inputs(model, tok, e.negative_prompts)
        return v

    router = torch.stack([direction(e) for e in plan.experts], dim=1)  # (layers, experts, hidden)
    router = router - router.mean(dim=1, keepdim=True)
    router = router / router.norm(dim=-1, keepdim=True).clamp(min=1e-8)
    shared = None
    if plan.shared_experts:
        if plan.shared_expert_gate == "always_on":
            shared = torch.zeros(router.shape[0], len(plan.shared_experts), router.shape[2])
        else:
            shared = torch.stack([direction(e) for e in plan.shared_experts], dim=1)
            shared = shared / shared.norm(dim=-1, keepdim=True).clamp(min=1e-8)
    return router.cpu(), shared.cpu() if shared is not None else None
