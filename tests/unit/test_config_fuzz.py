"""Property: any mutation of a valid config is either valid or one ConfigError line naming a field.

Valid configs of every job kind (merge, moe, evolve on the tiny pool) are mutated by hypothesis:
a leaf set to NaN, ±inf, a negative or huge number, a string, an empty string, a list, a mapping,
null or a boolean; a key added where none exists; a key removed. Each mutated config goes through
the path the CLI takes (``compose`` of the command line, then ``app.prepare``), either as Hydra
override strings (composition against the typed schema) or written into the composed config
(as ``mergekit_yaml=`` and programmatic callers do). Any other exception fails the test, and so
does any file written under the logs dir: validation writes nothing.

The number of examples is bounded for CI (``HPC_MERGE_FUZZ_EXAMPLES``, default 50; derandomized,
so every run tries the same configs). The figures it prints feed README's "What we guarantee".
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from omegaconf import OmegaConf, open_dict

from hpc_merge.app import prepare
from hpc_merge.config import compose
from hpc_merge.errors import ConfigError

BASES: dict[str, list[str]] = {
    "merge": ["merge=ties", "models=tiny", "logger=none"],
    "moe": ["+experiment=moe_demo", "logger=none"],
    "evolve": ["+experiment=evolve_demo", "models=tiny", "logger=none"],
}
#: values a careless user (or a broken script) puts anywhere
VALUES: list[Any] = [math.nan, math.inf, -math.inf, -1, 0, 10**12, 1.5, 0.5, "abc", "", ["ties"], {"a": 1},
                     None, True, "float8", "tpu", [], [5, 5, 5, 5]]
EXAMPLES = int(os.environ.get("HPC_MERGE_FUZZ_EXAMPLES", "50"))
STATS = {"tried": 0, "valid": 0, "rejected": 0, "other_exceptions": 0}
SKIP = ("logs_dir",)  # where the "nothing written" check looks


def _leaves(node: Any, path: str = "") -> list[str]:
    if isinstance(node, dict):
        return [p for k, v in node.items() for p in _leaves(v, f"{path}.{k}" if path else str(k))] or [path]
    if isinstance(node, list) and node:
        return [p for i, v in enumerate(node) for p in _leaves(v, f"{path}.{i}")]
    return [path]


_CACHE: dict[str, tuple[Any, list[str]]] = {}


def _base(kind: str) -> tuple[Any, list[str]]:
    if kind not in _CACHE:
        cfg = compose(BASES[kind])
        leaves = [p for p in _leaves(OmegaConf.to_container(cfg, resolve=False)) if p and not p.startswith(SKIP)]
        _CACHE[kind] = (cfg, sorted(leaves))
    return _CACHE[kind]


def _override_value(value: Any) -> str:
    """``value`` in Hydra's override grammar."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float) and not math.isfinite(value):
        return "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf")
    if isinstance(value, str):
        return "''" if not value else f"'{value}'"
    if isinstance(value, list):
        return "[" + ",".join(_override_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ",".join(f"{k}:{_override_value(v)}" for k, v in value.items()) + "}"
    return str(value)


@st.composite
def mutations(draw: st.DrawFn) -> tuple[str, str, list[tuple[str, str, Any]]]:
    kind = draw(st.sampled_from(sorted(BASES)))
    leaves = _base(kind)[1]
    how = draw(st.sampled_from(["override", "direct"]))
    muts = []
    for _ in range(draw(st.integers(1, 3))):
        op = draw(st.sampled_from(["set", "set", "set", "add", "remove"]))
        path = draw(st.sampled_from(leaves))
        if op == "add":
            path = path.rsplit(".", 1)[0] + "." + draw(st.sampled_from(["densty", "foo", "timeout", "x"]))
        muts.append((op, path, draw(st.sampled_from(VALUES))))
    return kind, how, muts


def _apply(kind: str, how: str, muts: list[tuple[str, str, Any]]) -> Any:
    if how == "override":
        ovs = []
        for op, path, value in muts:
            ovs.append(f"~{path}" if op == "remove" else
                       f"{'+' if op == 'add' else ''}{path}={_override_value(value)}")
        return compose(BASES[kind] + ovs)
    cfg = _base(kind)[0]
    data = OmegaConf.to_container(cfg, resolve=False)  # a fresh copy of the composed base
    for op, path, value in muts:
        *parents, leaf = path.split(".")
        node = data
        for p in parents:
            node = node[int(p)] if isinstance(node, list) else node.setdefault(p, {}) if isinstance(node, dict) else {}
        if isinstance(node, list):
            if op == "remove" and leaf.isdigit() and int(leaf) < len(node):
                node.pop(int(leaf))
            elif leaf.isdigit() and int(leaf) < len(node):
                node[int(leaf)] = value
        elif isinstance(node, dict):
            if op == "remove":
                node.pop(leaf, None)
            else:
                node[leaf] = value
    out = OmegaConf.create(data)
    with open_dict(out):
        out.logs_dir = cfg.logs_dir
    return out


@pytest.fixture(scope="module")
def stats_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("fuzz") / "stats.json"


@settings(max_examples=EXAMPLES, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
                                 HealthCheck.data_too_large])
@given(case=mutations())
def test_mutated_configs_are_valid_or_one_line_errors(case, tiny_pool, _logs_dir: Path, stats_file: Path) -> None:
    kind, how, muts = case
    STATS["tried"] += 1
    try:
        prepare(_apply(kind, how, muts))
        STATS["valid"] += 1
    except ConfigError as err:
        STATS["rejected"] += 1
        text = str(err)
        assert "\n" not in text and err.field and text.startswith(err.field), (case, text)
    except Exception as exc:  # anything else is the bug this test exists to find
        STATS["other_exceptions"] += 1
        raise AssertionError(f"{kind} {how} {muts}: {type(exc).__name__}: {exc}") from exc
    finally:
        stats_file.write_text(json.dumps(STATS))
    assert not _logs_dir.exists() or not any(_logs_dir.rglob("*")), "validation wrote under the logs dir"


def test_fuzz_figures(stats_file: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The property ran (runs after it in file order) and tried every example; prints the figures."""
    if not stats_file.exists():
        pytest.skip("the property test did not run in this session (selected alone)")
    stats = json.loads(stats_file.read_text())
    with capsys.disabled():
        print(f"\nconfig fuzz: {stats}")
    assert stats["tried"] >= min(EXAMPLES, 50) and stats["other_exceptions"] == 0
    assert stats["rejected"] > 0 and stats["valid"] > 0
