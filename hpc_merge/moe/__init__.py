"""Mixture-of-Experts builder: dense experts -> an MoE model stock transformers loads.

``validate_recipe`` checks a mergekit-moe recipe without reading weights; ``build_moe`` writes the
model (mergekit's MoE writers where they are right, our own for Qwen2-MoE without a shared expert
and for Phi-3 experts); ``routing`` measures where a built model sends prompts.
"""

from hpc_merge.moe.arch import OUTPUT_ARCHS
from hpc_merge.moe.build import BuildOptions, build_moe
from hpc_merge.moe.plan import ExpertSpec, MoePlan
from hpc_merge.moe.recipe import GATE_MODES, validate_recipe

__all__ = ["GATE_MODES", "OUTPUT_ARCHS", "BuildOptions", "ExpertSpec", "MoePlan", "build_moe", "validate_recipe"]
