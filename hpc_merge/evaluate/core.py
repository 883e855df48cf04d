"""``evaluate_model``: one entry point over both back ends, for a path or an in-memory model."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from hpc_merge.evaluate.tasks import LMEVAL, Task, load_tasks


def load_model(path: str | Path):
    """A causal LM from a folder, float32 on CPU (tiny models: exact and deterministic)."""
    import torch
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(str(path), dtype=torch.float32)


def load_tokenizer(path: str | Path):
    """The tokenizer saved beside a model, padding on the left (what batched generation needs)."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(path))
    tok.padding_side = "left"
    return tok


def _tokenizer_for(model, tokenizer) -> Any:
    if tokenizer is None:
        source = getattr(model, "name_or_path", None) or getattr(model.config, "_name_or_path", None)
        if not source or not Path(source).is_dir():
            raise ValueError("an in-memory model needs tokenizer= (it has no folder to load one from)")
        return load_tokenizer(source)
    if isinstance(tokenizer, str | Path):
        return load_tokenizer(tokenizer)
    return tokenizer


def evaluate_model(model: Any, tasks: list[Task] | list[str], tokenizer: Any = None, split: str = "test",
                   limit: int | None = None, batch_size: int = 32) -> dict[str, dict[str, float]]:
    """Score ``model`` on ``tasks``: ``{task: {"accuracy", "loglik", "n"}}``.

    ``model`` is a model folder or a ``PreTrainedModel`` already in memory (evolution merges in
    memory: nothing is reloaded and the task files are tokenized once per tokenizer). ``tasks``
    are :class:`Task` objects or specs for :func:`load_tasks`. The model is put in eval mode.
    """
    import torch

    if tasks and isinstance(tasks[0], str):
        tasks = load_tasks(list(tasks))
    path = None
    if isinstance(model, str | Path):
        path = Path(model)
        tokenizer = tokenizer if tokenizer is not None else path
        model = load_model(path)
    tokenizer = _tokenizer_for(model, tokenizer)
    model.eval()
    results: dict[str, dict[str, float]] = {}
    builtin = [t for t in tasks if t.backend != LMEVAL]
    if builtin:
        from hpc_merge.evaluate.builtin import evaluate_file

        with torch.inference_mode():
            for task in builtin:
                results[task.name] = evaluate_file(model, tokenizer, task.file(split), limit, batch_size)
    lm_tasks = [t for t in tasks if t.backend == LMEVAL]
    if lm_tasks:
        from hpc_merge.evaluate.lmeval import evaluate_lmeval

        results.update(evaluate_lmeval(model, tokenizer, lm_tasks, limit=limit, batch_size=batch_size))
    return {t.name: results[t.name] for t in tasks}
