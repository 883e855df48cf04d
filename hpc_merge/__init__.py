"""hpc_merge: merge, MoE and evolve LLMs on SLURM with Hydra, submitit and mergekit."""

__version__ = "0.1.0"
