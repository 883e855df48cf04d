"""Router (gate) vectors for every layer.

``hidden`` is ours: the router is *fitted* to the prompts. For every layer, the router's real input
(the post-attention-norm MLP input) is collected at every token of every expert's positive prompts,
and the gate matrix is the multinomial logistic regression (no bias, like the router) that tells
those tokens' experts apart; an expert's negative prompts push its logit down. That is what a
trained router would learn from these prompts, in a few seconds of L-BFGS.

Why not mergekit's vectors: mergekit's ``hidden`` takes the residual stream at each layer's
*input*, at the last prompt token, averaged per expert. The router instead sees the normalised MLP
input of *every* token, and the averaged states of all experts point mostly the same way, so the
direction every prompt shares decides the winner. On the skills zoo, mergekit's vectors sent 0 % of
the sorting expert's held-out prompts mostly to it (67 % over all experts); the fitted router 100 %
(``tests/integration/test_moe_routing.py``). mergekit's computation stays available, unchanged, as
``hidden_mergekit`` (and ``hidden_avg``, ``hidden_last``); a mergekit-moe YAML run through
``mergekit_yaml=`` gets it for ``hidden``, so such a file means what it meant under mergekit-moe.

``cheap_embed``, ``random``, ``uniform_random`` go through mergekit's ``get_gate_params`` directly:
``scripts.moe.build`` would ``sys.exit`` on bad configs, and validation is
:mod:`hpc_merge.moe.recipe`'s job.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from hpc_merge import console
from hpc_merge.moe.plan import ExpertSpec, MoePlan
from hpc_merge.moe.recipe import PROMPT_GATE_MODES

if TYPE_CHECKING:
    import torch

log = logging.getLogger(__name__)

#: our gate-mode names -> mergekit's ``get_gate_params`` mode (the rest are passed as they are)
MERGEKIT_MODES = {"hidden_mergekit": "hidden"}
#: L2 penalty of the fitted router (features scaled to unit mean norm): keeps the fit well-posed.
#: Measured: 1e-4 routes 100 % of held-out prompts on the zoo and on random tiny models; 1e-2 and
#: above pull every expert's row towards the direction all tokens share (25 % on random models).
FIT_L2 = 1e-4
FIT_MAX_ITER = 200


def mergekit_expert(spec: ExpertSpec, residual_factor: float = 1.0):
    """Our :class:`ExpertSpec` as a ``mergekit.moe.config.Expert`` (folder path as the model).

    ``residual_factor`` multiplies ``residual_scale`` (used for the always-on shared expert).
    """
    from hpc_merge.mergekit_adapter.moe import expert

    scale = spec.residual_scale
    if residual_factor != 1.0:
        scale = (scale if scale is not None else 1.0) * residual_factor
    return expert(spec.path, positive_prompts=list(spec.positive_prompts) or None,
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

    from hpc_merge.mergekit_adapter.moe import gate_params, warn_degenerate_gates

    torch.manual_seed(seed)  # random / uniform_random gates and noise_scale use the global RNG
    if plan.gate_mode == "hidden":
        return fitted_gates(plan, device)
    need = [mergekit_expert(e) for e in plan.experts]
    gated_shared = bool(plan.shared_experts) and plan.shared_expert_gate == "prompts"
    if gated_shared:
        need += [mergekit_expert(e) for e in plan.shared_experts]
    tokenizer = prompt_tokenizer(plan.base_path) if plan.gate_mode in PROMPT_GATE_MODES else None
    mode = MERGEKIT_MODES.get(plan.gate_mode, plan.gate_mode)
    vecs = gate_params(plan.base_path, tokenizer, need, mode, device)
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


def _router_inputs(model, tokenizer, prompts: tuple[str, ...], batch_size: int = 32) -> list[torch.Tensor]:
    """Per layer, ``(tokens, hidden)``: the input of that layer's MLP (the router's input) at every
    real (non-padding) token of ``prompts``."""
    import torch

    layers = model.model.layers
    feats: list[list[torch.Tensor]] = [[] for _ in layers]
    mask: list[torch.Tensor] = []

    def hook(i: int):
        def grab(_module, args):
            x = args[0].reshape(-1, args[0].shape[-1]).float()
            feats[i].append(x[mask[0].to(x.device)].cpu())
        return grab

    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "right"
    handles = [layer.mlp.register_forward_pre_hook(hook(i)) for i, layer in enumerate(layers)]
    try:
        with torch.no_grad():
            for start in range(0, len(prompts), batch_size):
                enc = tokenizer(list(prompts[start:start + batch_size]), return_tensors="pt", padding=True)
                mask[:] = [enc["attention_mask"].reshape(-1).bool()]
                model(**enc.to(model.device))
    finally:
        for h in handles:
            h.remove()
    return [torch.cat(f) for f in feats]


def fit_router(positives: list[torch.Tensor], negatives: list[torch.Tensor | None]) -> torch.Tensor:
    """``(experts, hidden)`` gate matrix for one layer from each expert's token features.

    Minimises the cross-entropy of "which expert's prompt is this token from" plus, for an
    expert's negative-prompt tokens, ``-log(1 - p_expert)``. Features are scaled by their mean norm
    for the fit (well-conditioned L-BFGS) and the weights scaled back, so the gate applies to the
    raw router input. Deterministic: fixed start (zeros), full-batch L-BFGS.
    """
    import torch
    import torch.nn.functional as F

    x = torch.cat(positives)
    y = torch.cat([torch.full((len(p),), i, dtype=torch.long) for i, p in enumerate(positives)])
    scale = x.norm(dim=-1).mean().clamp(min=1e-8)
    x = x / scale
    negs = [(i, n / scale) for i, n in enumerate(negatives) if n is not None and len(n)]
    w = torch.zeros(len(positives), x.shape[1], requires_grad=True)
    opt = torch.optim.LBFGS([w], max_iter=FIT_MAX_ITER, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = F.cross_entropy(x @ w.T, y) + FIT_L2 * (w ** 2).sum()
        for i, n in negs:
            p = torch.softmax(n @ w.T, dim=-1)[:, i]
            loss = loss - torch.log1p(-p.clamp(max=1 - 1e-6)).mean()
        loss.backward()
        return loss

    with torch.enable_grad():
        opt.step(closure)
    return (w.detach() / scale).contiguous()


def fitted_gates(plan: MoePlan, device: str = "cpu") -> tuple[torch.Tensor, torch.Tensor | None]:
    """``hidden`` gates (see the module docstring); a prompt-gated shared expert gets the unit mean
    direction of its prompts' router inputs (its sigmoid gate opens on text like them)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    dtype = torch.float32 if device == "cpu" else torch.bfloat16
    model = AutoModelForCausalLM.from_pretrained(plan.base_path, dtype=dtype, device_map=device).eval()
    tok = AutoTokenizer.from_pretrained(plan.base_path)
    n_neg = sum(1 for e in plan.experts if e.negative_prompts)
    with console.task("MoE: fitting gates", total=len(plan.experts) + n_neg, unit="step") as bar:
        pos, neg = [], []
        for i, e in enumerate(plan.experts):  # the router inputs of every expert's prompts, then one fit per layer
            pos.append(_router_inputs(model, tok, e.positive_prompts))
            bar.update(advance=1, info=f"expert {i} prompts ({len(e.positive_prompts)})")
        for i, e in enumerate(plan.experts):
            neg.append(_router_inputs(model, tok, e.negative_prompts) if e.negative_prompts else None)
            if e.negative_prompts:
                bar.update(advance=1, info=f"expert {i} negative prompts ({len(e.negative_prompts)})")
        n_layers = len(pos[0])  # the layers the router inputs were taken from (not a config field)
        bar.update(total=len(plan.experts) + n_neg + n_layers)
        gates = []
        for layer in range(n_layers):
            gates.append(fit_router([p[layer] for p in pos], [n[layer] if n else None for n in neg]))
            bar.update(advance=1, info=f"layer {layer + 1}/{n_layers} fitted")
    router = torch.stack(gates)  # (layers, experts, hidden)
    _warn_unseparated(router, pos)
    shared = None
    if plan.shared_experts:
        if plan.shared_expert_gate == "always_on":
            shared = torch.zeros(n_layers, len(plan.shared_experts), router.shape[2])
        else:
            means = [[f.mean(0) for f in _router_inputs(model, tok, e.positive_prompts)] for e in plan.shared_experts]
            shared = torch.stack([torch.stack(m) for m in means], dim=1)  # (layers, shared, hidden)
            shared = shared / shared.norm(dim=-1, keepdim=True).clamp(min=1e-8)
    return router, shared


def _warn_unseparated(router: torch.Tensor, pos: list[list[torch.Tensor]]) -> None:
    """Warn when, even on its own prompts, an expert wins fewer than half of the last layer's tokens
    (its prompts look like another expert's: routing will not tell them apart)."""
    for e, feats in enumerate(pos):
        won = ((feats[-1] @ router[-1].T).argmax(dim=-1) == e).float().mean().item()
        if won < 0.5:
            log.warning("gate_mode=hidden: expert %d wins only %.0f%% of its own prompts' tokens; "
                        "give it more distinctive positive_prompts", e, 100 * won)
