"""The end of a run on the terminal: what was done, the report table, the output, the run dir.

A screenful at most (the issue that asked for it measured ~100 lines of JSON here before): every
metric stays in ``result.json``; this says where. The caller prints ``run_dir: PATH`` last, the
line scripts and tests read.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from hpc_merge.console import duration
from hpc_merge.report import format_table
from hpc_merge.run.files import REPORT_MD, REPORT_PNG, RESULT_FILE
from hpc_merge.smoke import describe


def _size(nbytes: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if nbytes < 1000 or unit == "TB":
            return f"{nbytes:.0f} {unit}" if unit == "B" else f"{nbytes:.1f} {unit}"
        nbytes /= 1000
    return f"{nbytes:.1f} TB"


def _params(n: int) -> str:
    return f"{n / 1e9:.2f} B" if n >= 1e9 else f"{n / 1e6:.1f} M" if n >= 1e5 else str(n)


def _what(kind: str, cfg: DictConfig, result: dict[str, Any]) -> str:
    """``merged 5 models with task_arithmetic`` and the like."""
    if kind == "merge":
        recipe = cfg.get("merge") or {}
        stages = recipe.get("stages") or [recipe]
        method = " then ".join(str(s.get("merge_method")) for s in stages)
        refs = {str(m.get("model")) for s in stages for m in (s.get("models") or [])}
        refs |= {str(s["base_model"]) for s in stages if s.get("base_model")}
        return f"merged {len(refs)} models with {method}" if refs else f"merged with {method}"
    if kind == "moe":
        moe = result.get("moe") or {}
        return (f"built a {moe.get('output_arch', 'MoE')} model from {moe.get('n_experts', '?')} experts "
                f"({moe.get('gate_mode', '?')} gates)")
    if kind == "evolve":
        return (f"evolved a recipe: {result.get('evaluations')} evaluations in {result.get('generations')} "
                f"generations ({result.get('stop_reason')})")
    return kind


def summary_lines(kind: str, cfg: DictConfig, result: dict[str, Any], run_dir: Path, elapsed_s: float) -> list[str]:
    """The lines printed after the last progress bar (``run_dir:`` excluded)."""
    metrics = result.get("metrics") or {}
    lines = [f"done: {_what(kind, cfg, result)} in {duration(elapsed_s)}"]
    rows = metrics.get("report")
    if rows:
        lines += ["", format_table(rows), ""]
    routing = metrics.get("routing_own_prompts")
    if routing:
        lines.append(f"routing: {100 * routing['accuracy']:.0f} % of the experts' own prompts go mostly to their "
                     "expert (in-sample)")
    if "samples" in metrics:
        lines += describe({**metrics.get("smoke", {"prompts_from": "user"}), **metrics})
    out = result.get("output_model")
    if out:
        size = sum(f.stat().st_size for f in Path(out).glob("*.safetensors")) if Path(out).is_dir() else 0
        check = (f"{_params(metrics['n_params'])} params, loads with transformers: ok" if "n_params" in metrics
                 else "load check skipped (job.smoke.enabled=false)")
        lines.append(f"output: {out} ({_size(size)}; {check})")
    details = [f"{RESULT_FILE} (every metric)"]
    if rows:
        details.append(f"{REPORT_MD}, {REPORT_PNG}")
    lines.append(f"details: {', '.join(details)} in the run dir")
    return lines
