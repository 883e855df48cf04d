"""The mergekit canary: every mergekit name hpc_merge relies on still exists, and only the adapter
(``hpc_merge.mergekit_adapter``) reaches mergekit.

Why: the adapter patches and reads mergekit, private names included (``MergePlanner._plan``,
``mergekit.merge._model_out_config``, ...). A mergekit release that renames one would otherwise
break merges at run time, far from the cause. The names are read from the code itself (imports,
``mergekit.x.y`` attribute chains, attributes of imported mergekit names), so the list cannot
drift from what the code uses; instance attributes, which no static reading can type, are listed
below by hand and checked against the source of the class that sets them.
"""

from __future__ import annotations

import ast
import importlib
import inspect
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "hpc_merge"
ADAPTER = PACKAGE / "mergekit_adapter"

#: Attributes of mergekit *instances* the adapter uses: (class, attribute). Each must be set in, or
#: be a method of, that class.
INSTANCE_ATTRS = [
    ("mergekit.plan.MergePlanner", "_tensors"),
    ("mergekit.io.tasks.LoadTensor", "_resolve_name"),
    ("mergekit.io.tensor_writer.TensorWriter", "_flush_current_shard"),
    ("mergekit.io.tensor_writer.TensorWriter", "_get_name_components"),
    ("mergekit.io.tensor_writer.TensorWriter", "current_shard_size"),
    ("mergekit.io.tensor_writer.TensorWriter", "shards_written"),
    ("mergekit.io.tensor_writer.TensorWriter", "max_shard_size"),
]


def _python_files(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*.py") if "__pycache__" not in p.parts)


def _chain(node: ast.AST) -> list[str] | None:
    """``a.b.c`` -> ``["a", "b", "c"]`` (None for anything that is not a plain dotted name)."""
    parts: list[str] = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if isinstance(node, ast.Name):
        return [node.id, *reversed(parts)]
    return None


def used_mergekit_names(files: list[Path]) -> set[str]:
    """Dotted mergekit names the code imports or reaches through attributes."""
    names: set[str] = set()
    for path in files:
        tree = ast.parse(path.read_text(), str(path))
        imported: dict[str, str] = {}  # local name -> dotted mergekit name
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "mergekit":
                for alias in node.names:
                    full = f"{node.module}.{alias.name}"
                    names.add(full)
                    imported[alias.asname or alias.name] = full
            elif isinstance(node, ast.Import):
                for alias in node.names:
                    if alias.name.split(".")[0] == "mergekit":
                        names.add(alias.name)
                        if alias.asname:
                            imported[alias.asname] = alias.name
        for node in ast.walk(tree):
            if not isinstance(node, ast.Attribute):
                continue
            chain = _chain(node)
            if not chain:
                continue
            if chain[0] == "mergekit":
                names.add(".".join(chain))
            elif chain[0] in imported and len(chain) >= 2:
                names.add(".".join([imported[chain[0]], *chain[1:2]]))
    return names


def _resolve(dotted: str) -> bool:
    """Does ``dotted`` name an importable module or an attribute reachable from one?"""
    parts = dotted.split(".")
    for cut in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:cut]))
        except ImportError:
            continue
        for attr in parts[cut:]:
            if not hasattr(obj, attr):
                try:  # a submodule not yet imported by its package
                    obj = importlib.import_module(f"{obj.__name__}.{attr}")
                    continue
                except (ImportError, AttributeError):
                    return False
            obj = getattr(obj, attr)
        return True
    return False


def test_only_the_adapter_imports_mergekit() -> None:
    outside = [p for p in _python_files(PACKAGE) if ADAPTER not in p.parents]
    offenders = sorted(f"{p.relative_to(PACKAGE.parent)}: {n}" for p in outside for n in used_mergekit_names([p]))
    assert not offenders, "mergekit reached outside hpc_merge/mergekit_adapter:\n" + "\n".join(offenders)


def test_every_mergekit_name_the_adapter_uses_exists() -> None:
    names = used_mergekit_names(_python_files(ADAPTER))
    assert len(names) > 20  # the scan sees the adapter's imports (a broken scan would pass vacuously)
    missing = sorted(n for n in names if not _resolve(n))
    assert not missing, "this mergekit lacks names hpc_merge relies on:\n" + "\n".join(missing)


@pytest.mark.parametrize(("cls", "attr"), INSTANCE_ATTRS)
def test_instance_attributes_the_adapter_uses_exist(cls: str, attr: str) -> None:
    module, _, name = cls.rpartition(".")
    klass = getattr(importlib.import_module(module), name)
    if hasattr(klass, attr):  # a method or class attribute
        return
    source = "".join(inspect.getsource(k) for k in klass.__mro__ if k.__module__.startswith("mergekit"))
    assert f"self.{attr}" in source, f"{cls} no longer has {attr!r}"


def test_the_scan_would_see_a_missing_name() -> None:
    assert _resolve("mergekit.plan.MergePlanner._plan")
    assert not _resolve("mergekit.plan.MergePlanner._no_such_thing")
    assert not _resolve("mergekit.no_such_module.X")
