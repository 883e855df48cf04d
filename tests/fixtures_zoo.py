"""Shared zoo fixtures: the test-size zoo, built once per cache (conftest's HPC_MERGE_CACHE)."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def test_zoo():
    """The ``test``-size Qwen2 zoo (base, experts, task files), built on first use (≈ 30 s)."""
    from hpc_merge.zoo import ensure_zoo

    return ensure_zoo("test")


@pytest.fixture(scope="session")
def zoo_scores(test_zoo):
    """Test-split scores of the base and every expert on every zoo task: {model: {task: scores}}."""
    from hpc_merge.evaluate import evaluate_model, load_tasks

    tasks = load_tasks(["zoo"], size="test")
    models = {"base": test_zoo.base, **test_zoo.experts}
    return {name: evaluate_model(path, tasks) for name, path in models.items()}
