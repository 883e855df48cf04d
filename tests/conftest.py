"""Shared test setup: isolated logs, a persistent model cache, offline W&B and Hub.

Model builds are cached in ``.cache/test-models`` (keyed by recipe hashes inside), so a second
test session reuses them; every test gets its own logs dir.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
os.environ.setdefault("HPC_MERGE_CACHE", str(ROOT / ".cache" / "test-models"))
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

pytest_plugins = [p for p in ("tests.fixtures_zoo",) if (ROOT / (p.replace(".", "/") + ".py")).exists()]


@pytest.fixture(autouse=True)
def _logs_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Every test writes its run dirs under its own tmp folder."""
    logs = tmp_path / "logs"
    monkeypatch.setenv("HPC_MERGE_LOGS", str(logs))
    return logs


@pytest.fixture(scope="session")
def tiny_pool() -> dict[str, Path]:
    """The tiny Qwen2 pool (base, instruct, math, coder, science), built once."""
    from hpc_merge.models.tiny import POOL_NAMES, ensure_tiny

    return {name: ensure_tiny(name) for name in POOL_NAMES}


def run_cli(*args: str, cwd: Path | None = None, env: dict[str, str] | None = None,
            timeout: int = 600) -> subprocess.CompletedProcess:
    """``python -m hpc_merge ARGS`` in a subprocess (the way users run it)."""
    return subprocess.run([sys.executable, "-m", "hpc_merge", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, **(env or {})})
