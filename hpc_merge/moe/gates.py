"""Router (gate) vectors for every layer, through mergekit's ``get_gate_params``.

mergekit's ``build`` computes these inside a function that calls ``sys.exit`` on bad configs;
calling ``get_gate_params`` directly keeps its maths (hidden states or cheap embeddings of each
expert's prompts, or random) and leaves validation to :mod:`hpc_merge.moe.recipe`.
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
