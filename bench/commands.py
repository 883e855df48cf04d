"""The command lines the benchmarks compare, built in one place so every table runs the same.

- ``hpc_merge``: the product's CLI on a mergekit YAML (``mergekit_yaml=``), W&B off and the
  inference smoke test off, so it does the same work as ``mergekit-yaml`` plus its own checks;
- ``mergekit-yaml``: mergekit's CLI with its defaults (what a user would otherwise run);
- ``floor``: ``bench/floor.py``.
"""

from __future__ import annotations

import os
from pathlib import Path

from bench.proc import PY, ROOT, Cmd


def _mergekit_yaml_argv() -> list[str]:
    """mergekit's console script beside this interpreter, else its entry point run by this interpreter."""
    script = Path(PY).parent / "mergekit-yaml"
    if os.access(script, os.X_OK):
        return [str(script)]
    return [PY, "-c", "import sys; from mergekit.scripts.run_yaml import main; sys.exit(main())"]


MERGEKIT_YAML = _mergekit_yaml_argv()


def hpc_merge(recipe: Path, out: Path, logs: Path, *overrides: str, probe: bool = False) -> Cmd:
    """``python -m hpc_merge mergekit_yaml=RECIPE output=OUT logger=none job.smoke.enabled=false``."""
    args = ["-m", "hpc_merge", f"mergekit_yaml={recipe}", f"output={out}", "logger=none",
            "job.smoke.enabled=false", "force=true", *overrides]
    return Cmd(args if probe else [PY, *args], env={"HPC_MERGE_LOGS": str(logs)}, cleanup=[out], probe=probe)


def mergekit_yaml(recipe: Path, out: Path, *flags: str, probe: bool = False) -> Cmd:
    """``mergekit-yaml RECIPE OUT`` (its console script, or its entry point under the probe)."""
    argv = ["-e", "mergekit.scripts.run_yaml:main"] if probe else list(MERGEKIT_YAML)
    return Cmd([*argv, str(recipe), str(out), *flags], cleanup=[out], probe=probe)


def floor(recipe: Path, out: Path, probe: bool = False) -> Cmd:
    """``python bench/floor.py RECIPE OUT``."""
    script = str(ROOT / "bench" / "floor.py")
    return Cmd([script, str(recipe), str(out)] if probe else [PY, script, str(recipe), str(out)],
               cleanup=[out], probe=probe)

