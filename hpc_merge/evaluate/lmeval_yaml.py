"""lm-eval task YAMLs for the zoo's skills: plain data, no lm-eval import.

Kept apart from :mod:`hpc_merge.evaluate.lmeval` so that task resolution
(:mod:`hpc_merge.evaluate.tasks`) can write these files without importing the back end that
itself depends on :class:`~hpc_merge.evaluate.tasks.Task` (which made an import circle).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import yaml

#: Generated tokens allowed per answer in the lm-eval YAML (answers are a few tokens long).
MAX_GEN_TOKS = 32


def zoo_task_config(skill: str, files: dict[str, Path], eos: str = "<|endoftext|>") -> list[dict[str, Any]]:
    """The two lm-eval task configs (generation, log-likelihood) for a zoo skill's JSONL splits."""
    common = {
        "dataset_path": "json",
        "dataset_kwargs": {"data_files": {split: str(Path(p).resolve()) for split, p in files.items()}},
        "test_split": "test" if "test" in files else next(iter(files)),
        "doc_to_text": "{{prompt}}",
        "metadata": {"version": 1.0},
    }
    if "validation" in files:
        common["validation_split"] = "validation"
    gen = {
        "task": f"zoo_{skill}",
        **common,
        "output_type": "generate_until",
        "doc_to_target": "{{answer | trim}}",
        "generation_kwargs": {"until": [eos], "do_sample": False, "max_gen_toks": MAX_GEN_TOKS},
        "filter_list": [{"name": "strip", "filter": [{"function": "remove_whitespace"},
                                                     {"function": "take_first"}]}],
        "metric_list": [{"metric": "exact_match", "aggregation": "mean", "higher_is_better": True}],
    }
    ll = {
        "task": f"zoo_{skill}_ll",
        **common,
        "output_type": "loglikelihood",
        "doc_to_target": "{{answer}}",
        "target_delimiter": "",
        "metric_list": [{"metric": "perplexity", "aggregation": "perplexity", "higher_is_better": False},
                        {"metric": "acc", "aggregation": "mean", "higher_is_better": True}],
    }
    return [gen, ll]


def write_zoo_task_yaml(skill: str, files: dict[str, Path], out_dir: str | Path | None = None) -> Path:
    """Write ``zoo_<skill>.yaml`` (and its ``_ll`` twin) for lm-eval; returns the generation YAML.

    By default they go beside the skill's JSONL files, in ``lmeval/``.
    """
    out_dir = Path(out_dir) if out_dir is not None else Path(next(iter(files.values()))).parent / "lmeval"
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for cfg in zoo_task_config(skill, files):
        path = out_dir / f"{cfg['task']}.yaml"
        text = yaml.safe_dump(cfg, sort_keys=False)
        if not path.exists() or path.read_text() != text:
            tmp = path.with_suffix(f".tmp{os.getpid()}")
            tmp.write_text(text)
            os.replace(tmp, path)
        paths.append(path)
    return paths[0]
