"""Export the best candidate: a mergekit YAML, and an experiment file the CLI runs as a merge.

``best_mergekit.yaml`` has local paths and runs with ``mergekit-yaml`` (or ``mergekit_yaml=``);
``best_experiment.yaml`` keeps the model references (``zoo:math``, Hub ids) so it runs wherever
those resolve. Hydra finds experiments only in config dirs, so the same file is also written to
``<run_dir>/conf/experiment/<name>.yaml`` and the command to run it is::

    python -m hpc_merge +experiment=<name> 'hydra.searchpath=[file://<run_dir>/conf]'
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from hpc_merge.atomic import write_text
from hpc_merge.mergekit_adapter import check_recipe, to_mergekit


def run_command(run_dir: Path, name: str) -> str:
    """The exact command that runs the exported experiment."""
    return f"python -m hpc_merge +experiment={name} 'hydra.searchpath=[file://{Path(run_dir).resolve() / 'conf'}]'"


def experiment_text(recipe: dict[str, Any], name: str, header: str) -> str:
    """A ``# @package _global_`` experiment that runs ``recipe`` as a merge job."""
    body = {"defaults": [{"override /job": "merge"}, {"override /merge": None}], "name": name,
            "merge": {**recipe, "name": name}}
    comment = "".join(f"# {line}\n" for line in header.splitlines())
    return "# @package _global_\n" + comment + yaml.safe_dump(body, sort_keys=False)


def export_best(run_dir: Path, recipe: dict[str, Any], paths: dict[str, str], name: str,
                summary: str) -> dict[str, str]:
    """Write both files (the recipe is checked first); returns their paths and the run command."""
    run_dir = Path(run_dir)
    check_recipe(recipe, "evolve.best")
    mk = yaml.safe_dump(to_mergekit(recipe, paths), sort_keys=False)
    write_text(run_dir / "best_mergekit.yaml", f"# {summary}\n# run: mergekit-yaml best_mergekit.yaml OUT_DIR\n{mk}")
    command = run_command(run_dir, name)
    text = experiment_text(recipe, name, f"{summary}\nrun: {command}")
    write_text(run_dir / "best_experiment.yaml", text)
    write_text(run_dir / "conf" / "experiment" / f"{name}.yaml", text)
    return {"mergekit_yaml": str(run_dir / "best_mergekit.yaml"),
            "experiment": str(run_dir / "best_experiment.yaml"), "command": command}
