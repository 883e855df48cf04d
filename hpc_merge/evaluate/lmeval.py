"""lm-eval-harness back end (optional extra ``eval``), run offline on local task YAMLs.

lm-eval is imported only here and only when an ``lmeval:`` task is asked for. A zoo skill becomes
two local tasks over the same JSONL: ``zoo_<skill>`` (greedy generation, exact match after
stripping, like the built-in back end) and ``zoo_<skill>_ll`` (log-likelihood of the answer), so
both back ends measure the same two things and can be compared.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

import yaml

from hpc_merge.evaluate.tasks import Task

_OFFLINE = {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}


def _task_name(spec: str) -> str:
    if spec.endswith((".yaml", ".yml")):
        return yaml.safe_load(Path(spec).read_text())["task"]
    return spec


def _accuracy(metrics: dict[str, Any]) -> float:
    for key in ("exact_match,strip", "exact_match,none", "acc,none", "exact_match,remove_whitespace"):
        if key in metrics:
            return float(metrics[key])
    for key, value in metrics.items():
        if key.startswith(("exact_match,", "acc,")) and isinstance(value, int | float):
            return float(value)
    return math.nan


def _per_token_loglik(samples: list[dict], tokenizer) -> float:
    """Mean over docs of the answer's mean token log-prob (the built-in back end's measure)."""
    from hpc_merge.models.tokenizer import split_pair

    per_doc = []
    for s in samples:
        prompt, answer = s["arguments"][0] if isinstance(s["arguments"][0], list | tuple) else (
            s["arguments"]["gen_args_0"]["arg_0"], s["arguments"]["gen_args_0"]["arg_1"])
        n = len(split_pair(tokenizer, prompt, answer)[1])
        ll = s["resps"][0][0][0] if isinstance(s["resps"][0][0], list | tuple) else s["resps"][0][0]
        if n:
            per_doc.append(float(ll) / n)
    return sum(per_doc) / len(per_doc) if per_doc else math.nan


def evaluate_lmeval(model: Any, tokenizer: Any, tasks: list[Task], limit: int | None = None,
                    batch_size: int = 32) -> dict[str, dict[str, float]]:
    """Run ``tasks`` through ``lm_eval.simple_evaluate`` offline on an in-memory model.

    A task whose YAML has a ``_ll`` twin beside it (the zoo's) also gets ``loglik``; others get
    NaN there. ``accuracy`` is the task's exact_match (or acc) metric.
    """
    for key, value in _OFFLINE.items():
        os.environ.setdefault(key, value)
    try:
        import lm_eval
        from lm_eval.models.huggingface import HFLM
        from lm_eval.tasks import TaskManager
    except ImportError as exc:  # the optional extra
        raise ImportError("lmeval: tasks need lm-eval-harness: pip install 'hpc_merge[eval]'") from exc

    include, names, twins = set(), {}, {}
    for task in tasks:
        spec = task.lmeval or task.name
        if spec.endswith((".yaml", ".yml")):
            include.add(str(Path(spec).resolve().parent))
            twin = Path(spec).with_name(Path(spec).stem + "_ll.yaml")
            if twin.exists():
                twins[task.name] = _task_name(str(twin))
        names[task.name] = _task_name(spec)
    manager = TaskManager(include_path=sorted(include) or None)
    lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=batch_size, device=str(model.device))
    wanted = list(names.values()) + list(twins.values())
    out = lm_eval.simple_evaluate(model=lm, tasks=wanted, task_manager=manager, limit=limit,
                                  log_samples=bool(twins), verbosity="ERROR")
    results = {}
    for name, lm_name in names.items():
        metrics = out["results"][lm_name]
        n = out.get("n-samples", {}).get(lm_name, {}).get("effective", math.nan)
        loglik = _per_token_loglik(out["samples"][twins[name]], tokenizer) if name in twins else math.nan
        results[name] = {"accuracy": _accuracy(metrics), "loglik": loglik, "n": n}
    return results
