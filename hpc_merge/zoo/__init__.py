"""The skills zoo: a tiny base LM and experts fine-tuned from it on distinct synthetic skills.

It is the project's offline ground truth for merging: models that really have different skills,
with seeded held-out test sets, built in minutes on a laptop CPU and cached by recipe hash.
``zoo:<name>`` (and ``zoo-test:<name>`` for the small unit-test zoo) model references resolve here.
"""

from hpc_merge.zoo.build import (
    ZooInfo,
    canonical_name,
    ensure_model,
    ensure_ref,
    ensure_tasks,
    ensure_zoo,
    parse_ref,
    zoo_root,
)
from hpc_merge.zoo.spec import ALIASES, EXPERT_TASKS, SIZES, ZooSpec, get_spec

#: Parameters of each zoo skill (the full zoo's), for callers that draw their own prompts.
TASK_PARAMS: dict[str, dict] = SIZES["full"].task_params

__all__ = [
    "ALIASES", "EXPERT_TASKS", "SIZES", "TASK_PARAMS", "ZooInfo", "ZooSpec", "canonical_name", "ensure_model", "ensure_ref",
    "ensure_tasks", "ensure_zoo", "get_spec", "parse_ref", "zoo_root",
]
