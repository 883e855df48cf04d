"""Tiny-model recipes per architecture: the shape and the quirks each ``model_type`` must keep.

A merge that works on a Qwen2-shaped model proves little about Gemma 3 (tied embeddings,
sliding-window layer pattern, qk-norm, soft-capping) or GPT-NeoX (partial rotary, parallel
residual, biases). Each entry below is the smallest config that still switches those quirks
on, so the architecture matrix (``tests/integration/test_arch_matrix.py``) exercises the code
paths a real checkpoint of that family takes. Sliding windows (4 tokens) are shorter than the
test sequences, so a window that does not survive a merge changes the logits.

The five original pool architectures (qwen2, qwen3, llama, mistral, phi3) keep their historic
config (empty quirks): their cached pools and the zoo are keyed on it.
"""

from __future__ import annotations

from typing import Any

WINDOW = 4  # tokens; shorter than any test sequence
_LAYERS = 4

#: model_type -> config fields on top of the common tiny shape (``tiny_config``'s defaults).
QUIRKS: dict[str, dict[str, Any]] = {
    "qwen2": {}, "qwen3": {}, "llama": {}, "mistral": {}, "phi3": {},
    # tied embeddings, GeGLU, head_dim != hidden/heads
    "gemma": {"head_dim": 32, "tie_word_embeddings": True},
    # + attention/final logit soft-capping, sliding/full alternation, pre/post norms
    "gemma2": {"head_dim": 16, "tie_word_embeddings": True, "sliding_window": WINDOW,
               "attn_logit_softcapping": 50.0, "final_logit_softcapping": 30.0, "query_pre_attn_scalar": 16,
               "layer_types": ["sliding_attention", "full_attention"] * (_LAYERS // 2)},
    # + qk-norm, local/global rope, a 3:1 sliding pattern
    "gemma3_text": {"head_dim": 16, "tie_word_embeddings": True, "sliding_window": WINDOW, "query_pre_attn_scalar": 16,
                    "layer_types": ["sliding_attention"] * (_LAYERS - 1) + ["full_attention"]},
    # muP-style multipliers on embeddings, residuals, attention and logits
    "granite": {"embedding_multiplier": 6.0, "residual_multiplier": 0.3, "attention_multiplier": 0.1,
                "logits_scaling": 4.0},
    # qk-norm over the whole projection, post-attention/post-MLP norms
    "olmo2": {},
    # LayerNorm with biases everywhere, plain GELU MLP, sliding window
    "starcoder2": {"sliding_window": WINDOW, "use_bias": True},
    # parallel attention+MLP, tied embeddings, logit scale; qk-norm OFF (transformers' default)
    "cohere": {"use_qk_norm": False, "logit_scale": 0.5},
    # + 3:1 sliding pattern
    "cohere2": {"sliding_window": WINDOW, "logit_scale": 0.5,
                "layer_types": ["sliding_attention"] * (_LAYERS - 1) + ["full_attention"]},
    # partial rotary (25 %), qkv biases
    "stablelm": {"use_qkv_bias": True},
    # partial rotary, parallel residual, biases, fused qkv
    "gpt_neox": {},
    # partial rotary, fused gate_up, post norms
    "glm4": {"head_dim": 16},
    # relu^2 MLP without gate
    "arcee": {"head_dim": 16},
    # xIELU activation, qk-norm
    "apertus": {},
    # partial rotary, biases, dense
    "phi": {},
    # MoE blocks
    "mixtral": {"num_local_experts": 4, "num_experts_per_tok": 2, "sliding_window": None},
    "qwen2_moe": {"num_experts": 4, "num_experts_per_tok": 2, "moe_intermediate_size": 32,
                  "shared_expert_intermediate_size": 64, "decoder_sparse_step": 1, "mlp_only_layers": []},
    "qwen3_moe": {"num_experts": 4, "num_experts_per_tok": 2, "moe_intermediate_size": 32, "head_dim": 16,
                  "decoder_sparse_step": 1, "mlp_only_layers": []},
    "glm4_moe": {"n_routed_experts": 4, "num_experts_per_tok": 2, "moe_intermediate_size": 32, "n_shared_experts": 1,
                 "first_k_dense_replace": 1, "head_dim": 16},
    # Falcon-40B/180B layout (new decoder: ln_attn + ln_mlp, grouped kv), parallel attention
    "falcon": {"new_decoder_architecture": True, "num_kv_heads": 2, "parallel_attn": True, "bias": False},
    # learned positions, Conv1D layers, tied embeddings
    "gpt2": {"tie_word_embeddings": True},
    # + multi-query attention
    "gpt_bigcode": {"tie_word_embeddings": True, "multi_query": True},
    # selective state space, no attention
    "mamba": {"state_size": 8, "time_step_rank": 8, "tie_word_embeddings": True},
    # short convolutions + attention layers, tied
    "lfm2": {"layer_types": ["conv", "full_attention"] * (_LAYERS // 2), "block_auto_adjust_ff_dim": False,
             "tie_word_embeddings": True},
    # Mamba-2 + attention layers, MoE with shared expert, Granite multipliers
    "granitemoehybrid": {"layer_types": ["mamba", "attention"] * (_LAYERS // 2), "num_local_experts": 4,
                         "num_experts_per_tok": 2, "shared_intermediate_size": 64, "mamba_n_heads": 8,
                         "mamba_d_head": 16, "mamba_d_state": 16, "mamba_chunk_size": 16,
                         "embedding_multiplier": 2.0, "residual_multiplier": 0.5, "logits_scaling": 2.0},
}

#: Archs whose config names the shape differently (GPT-2 style) or has no attention heads.
_GPT2_STYLE = ("gpt2", "gpt_bigcode")


def shape_fields(arch: str, layers: int, hidden: int, intermediate: int, heads: int, kv_heads: int) -> dict[str, Any]:
    """The config fields that set the tiny shape, under the names ``arch`` uses."""
    if arch in _GPT2_STYLE:
        return dict(n_embd=hidden, n_inner=intermediate, n_layer=layers, n_head=heads, n_positions=256)
    if arch == "mamba":
        return dict(hidden_size=hidden, intermediate_size=intermediate, num_hidden_layers=layers)
    return dict(hidden_size=hidden, intermediate_size=intermediate, num_hidden_layers=layers,
                num_attention_heads=heads, num_key_value_heads=kv_heads)


def quirks(arch: str, layers: int) -> dict[str, Any]:
    """``QUIRKS[arch]`` with per-layer lists fitted to ``layers`` (the pattern repeats)."""
    out = dict(QUIRKS[arch])
    types = out.get("layer_types")
    if types and len(types) != layers:
        out["layer_types"] = [types[i % len(types)] for i in range(layers)]
    return out
