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


#: Tests that build the same expensive model in a module-scoped fixture run on one xdist worker, so
#: the build happens once (in this process) instead of once per worker, the others waiting on its lock.
SHARED_BUILDS = {
    "tests/integration/test_moe_routing.py": "full_zoo",
    "tests/integration/test_zoo_full.py": "full_zoo",
}


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Group tests for ``pytest -n N --dist loadgroup`` (scripts/test.sh): every module with a
    module-scoped fixture is one group (its fixture is built once, on one worker), modules that
    build the same model share a group (``SHARED_BUILDS``); other tests spread one by one. The
    integration tier is moved first, as its tests are the longest: with the longest work handed
    out first, no worker is left alone with a long test at the end. Without xdist the marks are inert."""
    for item in items:
        path = item.nodeid.split("::", 1)[0]
        group = SHARED_BUILDS.get(path)
        if group is None and any(d.scope == "module" for defs in item._fixtureinfo.name2fixturedefs.values()
                                 for d in defs):
            group = path
        if group is not None:
            item.add_marker(pytest.mark.xdist_group(group))
    items.sort(key=lambda it: 0 if it.get_closest_marker("integration") else 1)
