"""The model card (README.md) and the recipe file written into every MoE output.

A folder found on shared storage months later must say what it is: which experts, how they are
routed, which transformers class loads it, and the recipe that rebuilds it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from hpc_merge.moe.plan import MoePlan

RECIPE_FILE = "mergekit_moe_config.yml"  # the name mergekit-moe uses, so its tools recognise it
#: First line of a recipe file whose ``gate_mode: hidden`` is ours (the fitted router): read back
#: through ``mergekit_yaml=`` it keeps that meaning, while a plain mergekit-moe YAML's ``hidden``
#: means mergekit's vectors (``hidden_mergekit``, written back as ``hidden``: mergekit's own name).
OURS_HEADER = "# hpc_merge recipe: gate_mode hidden = hpc_merge's fitted router (mergekit-moe's is hidden_mergekit)"
CLASSES = {"mixtral": "MixtralForCausalLM", "qwen2_moe": "Qwen2MoeForCausalLM", "qwen3_moe": "Qwen3MoeForCausalLM"}


def card_text(plan: MoePlan, info: dict[str, Any]) -> str:
    """Markdown model card for the MoE built from ``plan``."""
    lines = [
        "---",
        "library_name: transformers",
        "tags: [moe, mergekit, hpc_merge]",
        f"base_model: {plan.base_ref}",
        "---",
        "",
        f"# Mixture of experts ({CLASSES[plan.output_arch]})",
        "",
        f"Built by hpc_merge from {len(plan.experts)} {plan.source_type} experts; "
        f"{plan.experts_per_token} experts per token; router from `gate_mode: {plan.gate_mode}`. "
        f"Attention, embeddings and norms come from the base model `{plan.base_ref}`. "
        "Loads with stock transformers (`trust_remote_code=False`).",
        "",
        "| # | expert | positive prompts |",
        "|---|---|---|",
    ]
    for i, e in enumerate(plan.experts):
        prompts = "; ".join(e.positive_prompts[:3]) + (" ..." if len(e.positive_prompts) > 3 else "")
        lines.append(f"| {i} | `{e.ref}` | {prompts.replace('|', '/')} |")
    for e in plan.shared_experts:
        gate = "always on" if plan.shared_expert_gate == "always_on" else "sigmoid gate from its prompts"
        lines.append(f"| shared | `{e.ref}` | {gate} |")
    if plan.writer == "own":
        lines += ["", "Written by hpc_merge's own writer (mergekit cannot build this output): "
                  + ("Qwen2-MoE with an empty shared expert (intermediate size 0), so the model is exactly "
                     "the routed mixture." if plan.output_arch == "qwen2_moe" else
                     "Phi-3 blocks re-expressed as Mixtral blocks (qkv_proj split; gate_up_proj kept).")]
    if plan.findings:
        lines += ["", "Notes:"] + [f"- {f}" for f in plan.findings]
    lines += ["", f"Recipe: `{RECIPE_FILE}`.", ""]
    return "\n".join(lines)


def write_card(folder: Path, plan: MoePlan, info: dict[str, Any]) -> None:
    """Write README.md and the recipe into ``folder``."""
    (folder / "README.md").write_text(card_text(plan, info))
    recipe = plan.recipe()
    header = ""
    if recipe.get("gate_mode") == "hidden_mergekit":
        recipe["gate_mode"] = "hidden"  # a mergekit-moe config again, exactly
    elif recipe.get("gate_mode") == "hidden":
        header = OURS_HEADER + "\n"
    (folder / RECIPE_FILE).write_text(header + yaml.safe_dump(recipe, sort_keys=False, allow_unicode=True))
