"""Evaluation: exact-match accuracy and answer log-likelihood of a model on task sets.

Two back ends: the built-in one (JSONL ``{"prompt", "answer"}`` files, the zoo's skills or a
user's) and lm-eval-harness (optional extra ``eval``). Knows nothing about Hydra or SLURM.
"""

from hpc_merge.evaluate.core import evaluate_model, load_model, load_tokenizer
from hpc_merge.evaluate.tasks import Task, load_tasks

__all__ = ["Task", "evaluate_model", "load_model", "load_tasks", "load_tokenizer"]
