"""The mergekit canary: every mergekit name hpc_merge relies on still exists, only the adapter
(``hpc_merge.mergekit_adapter``) reaches mergekit, and only its ``patches.py`` changes mergekit.

Why: the adapter patches and reads mergekit, private names included (``MergePlanner._plan``,
``mergekit.merge._model_out_config``, ...). A mergekit release that renames one would otherwise
break merges at run time, far from the cause; here it fails one test that lists what is missing.

The lists below are the names the adapter relies on, written out so a reader sees the whole
surface at once. They cannot drift from the code: the module-level names are compared with what a
scan of the adapter's source finds (imports, ``mergekit.x.y`` chains, attributes of imported
mergekit names, the names ``patches.py`` replaces), and the instance attributes the scan can see
(private attributes of any object, attributes that our subclasses of mergekit classes inherit)
must be listed too. Public attributes of mergekit objects handed to us (task fields, options,
configs) cannot be typed by a static reading: they are listed by hand and checked to exist.
"""

from __future__ import annotations

import ast
import importlib
import inspect
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "hpc_merge"
ADAPTER = PACKAGE / "mergekit_adapter"
PATCHES = ADAPTER / "patches.py"

#: Every module-level mergekit name the adapter imports, reads, subclasses or replaces.
NAMES = sorted([
    # architecture tables (archfix.py, archsupport.py)
    "mergekit.architecture.arch_info_for_config",
    "mergekit.architecture.base.ModuleArchitecture",
    "mergekit.architecture.base.ModuleDefinition",
    "mergekit.architecture.conversion.can_convert_checkpoint_keys",
    "mergekit.architecture.get_architecture_info",
    # recipe, options, model references
    "mergekit.common.ModelReference",
    "mergekit.common.ModelReference.config",  # replaced (in-memory merges: each config read once)
    "mergekit.common.ModelReference.parse",
    "mergekit.common.dtype_from_name",
    "mergekit.common.parse_kmb",
    "mergekit.config.MergeConfiguration",
    "mergekit.merge_methods.registered_methods",
    "mergekit.options.MergeOptions",
    # execution, planning, progress
    "mergekit.graph",
    "mergekit.graph.Executor",
    "mergekit.graph.Task",
    "mergekit.graph.tqdm",  # replaced (progress)
    "mergekit.merge",
    "mergekit.merge._model_out_config",  # replaced (per-layer settings of the merged layers)
    "mergekit.merge.get_architecture_info",  # replaced (fixed architecture tables)
    "mergekit.merge.run_merge",
    "mergekit.merge_methods",
    "mergekit.merge_methods.arcee_fusion",
    "mergekit.merge_methods.arcee_fusion.DynamicThresholdFusion",  # its calculate_dynamic_threshold replaced (streamed_fusion)
    "mergekit.merge_methods.arcee_fusion._QUANTILE_SAMPLE_SIZE",  # streamed_fusion draws mergekit's sample size
    "mergekit.merge_methods.ram",
    "mergekit.merge_methods.ram._prepare_ram_vectors",  # called by ram_counts (the elements ramplus_tl counts)
    "mergekit.merge_methods.ram.ram_merge",  # its implementation replaced (fused combine)
    "mergekit.merge_methods.ram.ramplus_tl_merge",  # its implementation replaced (row chunks, whole-tensor counts)
    "mergekit.merge_methods.sce",
    "mergekit.merge_methods.sce.sce_mask",  # replaced (exact top-k by variance)
    "mergekit.merge_methods.sce.sce_merge",  # its implementation replaced (fused combine)
    "mergekit.merge_methods.sce.sce_weight",  # called by the fused combine (whole-tensor weights)
    "mergekit.merge_methods.slerp",
    "mergekit.merge_methods.slerp._CHUNK_ELEMENTS",  # streamed_slerp reduces over mergekit's own pieces (tested equal)
    "mergekit.merge_methods.generalized_task_arithmetic.GeneralizedTaskArithmeticMerge",
    "mergekit.merge_methods.generalized_task_arithmetic.GeneralizedTaskArithmeticMerge.merge_group",  # replaced (fused combine)
    "mergekit.merge_methods.task_adapter.ExecuteMergeMethodTask",
    "mergekit.merge_methods.task_adapter.ExecuteMergeMethodTask.execute",  # replaced (counter-based draws)
    "mergekit.plan.MergePlanner",
    "mergekit.plan.MergePlanner._plan",  # replaced once (restrict, chunk, header room)
    # reading and writing tensors
    "mergekit.io",
    "mergekit.io.TensorWriter",
    "mergekit.io.lazy_tensor_loader.LazyTensorLoader",
    "mergekit.io.lazy_tensor_loader.LazyTensorLoader.from_disk",
    "mergekit.io.loader.TensorLoader",
    "mergekit.io.loader.TensorLoader.get",  # replaced (pread inputs)
    "mergekit.io.tasks",
    "mergekit.io.tasks.GatherTensors",
    "mergekit.io.tasks.LoadTensor",
    "mergekit.io.tasks.LoaderCache",
    "mergekit.io.tasks.LoaderCache.loaders",  # emptied around every merge, filled for in-memory merges
    "mergekit.io.tasks.TensorWriter",  # replaced (streamed shards)
    "mergekit.io.tensor_writer.TensorWriter",
    # sparsification
    "mergekit.sparsify",
    "mergekit.sparsify.RescaleNorm",
    "mergekit.sparsify.RescaleNorm.l1",
    "mergekit.sparsify.sparsify",  # called by the fused merge_group (looked up at call time: patched trims apply)
    "mergekit.sparsify.bernoulli",  # replaced (counter-based DARE)
    "mergekit.sparsify.della_magprune",  # replaced (counter-based DELLA)
    "mergekit.sparsify.magnitude",  # replaced (exact-k trim)
    "mergekit.sparsify.magnitude_outliers",  # replaced (exact breadcrumbs)
    "mergekit.sparsify.rescaled_masked_tensor",
    "mergekit.sparsify.SparsificationMethod",
    "mergekit.sparsify.SparsificationMethod.random",  # DARE's drop: the fused merge_group takes fused_drop's kernels
    "mergekit.sparsify.SparsificationMethod.della_magprune",  # DELLA's drop: likewise
    # mixture of experts (moe.py, for hpc_merge.moe)
    "mergekit.moe.ALL_OUTPUT_ARCHITECTURES",
    "mergekit.moe.common.noise_and_scale",
    "mergekit.moe.config.Expert",
    "mergekit.moe.config.MoEMergeConfig",
    "mergekit.moe.router.get_gate_params",
    "mergekit.moe.router.warn_degenerate_gates",
])

#: Attributes of mergekit *instances* the adapter uses: (class, attribute). Each must be a field,
#: method or class attribute of that class, or be set in its source (``self.attr``).
INSTANCE_ATTRS = sorted([
    # private, or inherited by our subclasses (the scan checks these are all listed)
    ("mergekit.plan.MergePlanner", "_tensors"),
    ("mergekit.io.tasks.LoadTensor", "_resolve_name"),
    ("mergekit.io.tensor_writer.TensorWriter", "_flush_current_shard"),
    ("mergekit.io.tensor_writer.TensorWriter", "_get_name_components"),
    ("mergekit.io.tensor_writer.TensorWriter", "_lock"),
    ("mergekit.io.tensor_writer.TensorWriter", "current_shard_size"),
    ("mergekit.io.tensor_writer.TensorWriter", "shards_written"),
    ("mergekit.io.tensor_writer.TensorWriter", "max_shard_size"),
    ("mergekit.io.tensor_writer.TensorWriter", "out_path"),
    ("mergekit.io.tensor_writer.TensorWriter", "weight_map"),
    ("mergekit.io.tensor_writer.TensorWriter", "total_size"),
    ("mergekit.architecture.base.ModuleArchitecture", "pre_weights"),
    ("mergekit.architecture.base.ModuleArchitecture", "post_weights"),
    ("mergekit.architecture.base.ModuleArchitecture", "layer_weights"),
    ("mergekit.architecture.base.ModuleArchitecture", "num_layers_config_key"),
    ("mergekit.architecture.base.ModuleArchitecture", "num_layers"),
    ("mergekit.config.MergeConfiguration", "referenced_models"),
    ("mergekit.graph.Task", "arguments"),
    ("mergekit.graph.Task", "execute"),
    ("mergekit.graph.Task", "group_label"),
    ("mergekit.graph.Task", "uses_accelerator"),
    # public fields and methods of objects mergekit hands us (listed by hand)
    ("mergekit.merge_methods.task_adapter.ExecuteMergeMethodTask", "gather_tensors"),
    ("mergekit.merge_methods.task_adapter.ExecuteMergeMethodTask", "method_name"),
    ("mergekit.merge_methods.task_adapter.ExecuteMergeMethodTask", "parameters"),
    ("mergekit.merge_methods.task_adapter.ExecuteMergeMethodTask", "model_order"),
    ("mergekit.merge_methods.task_adapter.ExecuteMergeMethodTask", "base_model"),
    ("mergekit.merge_methods.task_adapter.ExecuteMergeMethodTask", "output_weight"),
    ("mergekit.merge_methods.generalized_task_arithmetic.GeneralizedTaskArithmeticMerge", "consensus_method"),
    ("mergekit.merge_methods.generalized_task_arithmetic.GeneralizedTaskArithmeticMerge", "sparsification_method"),
    ("mergekit.merge_methods.base.TensorGroup", "base"),
    ("mergekit.merge_methods.base.TensorGroup", "non_base"),
    ("mergekit.merge_methods.base.TensorEntry", "tensor"),
    ("mergekit.merge_methods.base.TensorEntry", "id"),
    ("mergekit.io.tasks.GatherTensors", "device"),
    ("mergekit.io.tasks.LoadTensor", "model"),
    ("mergekit.io.tasks.LoadTensor", "dtype"),
    ("mergekit.io.tasks.LoaderCache", "get"),
    ("mergekit.io.tasks.LoaderCache", "setup"),
    ("mergekit.io.lazy_tensor_loader.LazyTensorLoader", "index"),
    ("mergekit.io.lazy_tensor_loader.LazyTensorLoader", "get_tensor"),
    ("mergekit.io.lazy_tensor_loader.LazyTensorLoader", "flush"),
    ("mergekit.io.lazy_tensor_loader.ShardedTensorIndex", "base_path"),
    ("mergekit.io.lazy_tensor_loader.ShardedTensorIndex", "tensor_paths"),
    ("mergekit.io.loader.TensorLoader", "keys"),
    ("mergekit.io.loader.TensorLoader", "get_tensor"),
    ("mergekit.architecture.base.WeightInfo", "name"),
    ("mergekit.architecture.base.WeightInfo", "force_dtype"),
    ("mergekit.architecture.base.WeightInfo", "optional"),
    ("mergekit.architecture.base.WeightInfo", "aliases"),
    ("mergekit.architecture.base.WeightInfo", "tied_names"),
    ("mergekit.architecture.base.ModelArchitecture", "modules"),
    ("mergekit.architecture.base.ModelArchitecture", "all_weights"),
    ("mergekit.architecture.base.ModelArchitecture", "model_copy"),
    ("mergekit.architecture.base.ModuleDefinition", "architecture"),
    ("mergekit.architecture.base.ModuleDefinition", "weight_prefix"),
    ("mergekit.architecture.base.ModuleDefinition", "subfolder"),
    ("mergekit.architecture.json_definitions.JsonModuleArchitecture", "definition"),
    ("mergekit.architecture.json_definitions.JsonModuleArchDef", "num_layers_config_key"),
    ("mergekit.architecture.json_definitions.JsonModuleArchDef", "override_num_layers"),
    ("mergekit.config.MergeConfiguration", "slices"),
    ("mergekit.config.MergeConfiguration", "models"),
    ("mergekit.config.MergeConfiguration", "base_model"),
    ("mergekit.config.MergeConfiguration", "out_dtype"),
    ("mergekit.config.OutputSliceDefinition", "sources"),
    ("mergekit.config.InputSliceDefinition", "model"),
    ("mergekit.config.InputSliceDefinition", "layer_range"),
    ("mergekit.common.ModelReference", "model"),
    ("mergekit.common.ModelReference", "lora"),
    ("mergekit.common.ModelReference", "override_architecture"),
    ("mergekit.common.ModelReference", "lazy_loader"),
    ("mergekit.common.ModelPath", "path"),
    ("mergekit.common.ModelPath", "revision"),
    ("mergekit.options.MergeOptions", "device"),
    ("mergekit.options.MergeOptions", "multi_gpu"),
    ("mergekit.options.MergeOptions", "read_to_gpu"),
    ("mergekit.options.MergeOptions", "random_seed"),
    ("mergekit.options.MergeOptions", "trust_remote_code"),
    ("mergekit.options.MergeOptions", "out_shard_size"),
    ("mergekit.options.MergeOptions", "safe_serialization"),
    ("mergekit.graph.Executor", "run"),
])

#: Private attributes the adapter sets on its own objects (not mergekit's).
OWN_PRIVATE = {"_order"}  # translate.OrderedMergeConfiguration's recipe order

#: Methods whose call changes the object they are called on (a mergekit class attribute, here).
MUTATING = {"clear", "update", "pop", "popitem", "setdefault", "append", "extend", "insert", "remove"}


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


class _Source:
    """One module's AST with its local names of mergekit objects resolved to dotted names."""

    def __init__(self, path: Path):
        self.path = path
        self.tree = ast.parse(path.read_text(), str(path))
        self.imported: dict[str, str] = {}  # local name -> dotted mergekit name
        self.imports: set[str] = set()
        for node in ast.walk(self.tree):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "mergekit":
                for alias in node.names:
                    self.imports.add(f"{node.module}.{alias.name}")
                    self.imported[alias.asname or alias.name] = f"{node.module}.{alias.name}"
            elif isinstance(node, ast.Import):
                for alias in node.names:
                    if alias.name.split(".")[0] == "mergekit":
                        self.imports.add(alias.name)
                        if alias.asname:
                            self.imported[alias.asname] = alias.name
            elif isinstance(node, ast.Call) and _chain(node.func) in (["importlib", "import_module"], ["__import__"]):
                arg = node.args[0] if node.args else None
                if isinstance(arg, ast.Constant) and str(arg.value).split(".")[0] == "mergekit":
                    self.imports.add(str(arg.value))

    def resolve(self, node: ast.AST, depth: int | None = None) -> str | None:
        """The dotted mergekit name of ``node`` (``depth``: attributes kept past an imported name)."""
        chain = _chain(node)
        if not chain:
            return None
        if chain[0] == "mergekit":
            return ".".join(chain)
        if chain[0] in self.imported:
            rest = chain[1:] if depth is None else chain[1:1 + depth]
            return ".".join([self.imported[chain[0]], *rest])
        return None

    def names(self) -> set[str]:
        """Imports, ``mergekit.x.y`` chains, first attributes of imported names, replaced attributes."""
        found = set(self.imports)
        for node in ast.walk(self.tree):
            if isinstance(node, ast.Attribute):
                name = self.resolve(node, depth=1)
                if name:
                    found.add(name)
            for owner, attr in self._replaced(node):
                found.add(f"{owner}.{attr}")
        return found

    def _replaced(self, node: ast.AST) -> list[tuple[str, str]]:
        """``(owner, attribute)`` named by string: ``_replaced(owner, "attr", ...)``, ``setattr``, ``vars(owner)["attr"]``."""
        out = []
        if isinstance(node, ast.Call) and _chain(node.func) in (["_replaced"], ["setattr"]) and len(node.args) >= 2:
            owner, attr = self.resolve(node.args[0]), node.args[1]
            if owner and isinstance(attr, ast.Constant):
                out.append((owner, str(attr.value)))
        if isinstance(node, ast.Subscript) and isinstance(node.value, ast.Call) and _chain(node.value.func) == ["vars"]:
            owner = self.resolve(node.value.args[0]) if node.value.args else None
            if owner and isinstance(node.slice, ast.Constant):
                out.append((owner, str(node.slice.value)))
        return out

    def patches(self) -> list[str]:
        """Lines where this module changes a mergekit module or class (assigns, replaces, mutates)."""
        out = []
        for node in ast.walk(self.tree):
            targets: list[ast.AST] = []
            if isinstance(node, ast.Assign):
                targets = node.targets
            elif isinstance(node, (ast.AugAssign, ast.AnnAssign)):
                targets = [node.target]
            for target in targets:
                for t in target.elts if isinstance(target, ast.Tuple) else [target]:
                    base = t.value if isinstance(t, ast.Subscript) else t
                    if isinstance(base, ast.Attribute) and self.resolve(base):
                        out.append(f"{self.path.name}:{node.lineno} assigns {self.resolve(base)}")
            if self._replaced(node) and isinstance(node, ast.Call):
                out.append(f"{self.path.name}:{node.lineno} replaces {'.'.join(self._replaced(node)[0])}")
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr in MUTATING:
                owner = self.resolve(node.func.value)
                if owner:
                    out.append(f"{self.path.name}:{node.lineno} mutates {owner}")
        return out

    def private_attrs(self) -> set[str]:
        """``x._name`` read on objects other than ``self``/``cls`` and our own modules."""
        found = set()
        for node in ast.walk(self.tree):
            if isinstance(node, ast.Attribute) and node.attr.startswith("_") and not node.attr.startswith("__"):
                root = _chain(node)
                if root and root[0] in ("self", "cls", "mergekit", *self.imported):
                    continue  # self: checked with the subclasses; mergekit names: in NAMES
                found.add(node.attr)
        return found

    def inherited_attrs(self) -> set[tuple[str, str]]:
        """``(mergekit base class, attribute)`` our subclasses of mergekit classes use but do not define."""
        found = set()
        for cls in (n for n in ast.walk(self.tree) if isinstance(n, ast.ClassDef)):
            bases = [b for b in (self.resolve(base) for base in cls.bases) if b]
            if not bases:
                continue
            own = {n.name for n in cls.body if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))}
            own |= {n.target.id for n in cls.body if isinstance(n, ast.AnnAssign) and isinstance(n.target, ast.Name)}
            init = next((n for n in cls.body if isinstance(n, ast.FunctionDef) and n.name == "__init__"), None)
            for node in ast.walk(init) if init else []:
                if isinstance(node, (ast.Assign, ast.AnnAssign)):
                    for target in node.targets if isinstance(node, ast.Assign) else [node.target]:
                        for t in target.elts if isinstance(target, ast.Tuple) else [target]:
                            if isinstance(t, ast.Attribute) and _chain(t) == ["self", t.attr]:
                                own.add(t.attr)
            used, from_super = set(), set()
            for node in ast.walk(cls):
                if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id == "self":
                    used.add(node.attr)
                if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Call) and \
                        _chain(node.value.func) == ["super"]:
                    from_super.add(node.attr)
            for attr in (used - own) | from_super:
                if not attr.startswith("__"):
                    found.add((bases[0], attr))
        return found


def _sources(root: Path) -> list[_Source]:
    return [_Source(p) for p in _python_files(root)]


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


def _has_attr(cls: str, attr: str) -> bool:
    module, _, name = cls.rpartition(".")
    try:
        klass = getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError):
        return False
    fields = {f for k in klass.__mro__ for f in getattr(k, "__annotations__", {})}  # pydantic, dataclass
    if hasattr(klass, attr) or attr in fields:
        return True
    source = "".join(inspect.getsource(k) for k in klass.__mro__ if k.__module__.startswith("mergekit"))
    return f"self.{attr}" in source


def test_every_listed_mergekit_name_exists() -> None:
    missing = [n for n in NAMES if not _resolve(n)]
    missing += [f"{cls} instances: .{attr}" for cls, attr in INSTANCE_ATTRS if not _has_attr(cls, attr)]
    assert not missing, "this mergekit lacks names hpc_merge relies on:\n" + "\n".join(missing)


def test_the_list_is_what_the_adapter_uses() -> None:
    used = set().union(*(s.names() for s in _sources(ADAPTER)))
    assert len(used) > 40  # the scan sees the adapter's imports (a broken scan would pass vacuously)
    unlisted, stale = sorted(used - set(NAMES)), sorted(set(NAMES) - used)
    assert not unlisted, "the adapter uses mergekit names this test does not list (add them to NAMES):\n" + \
        "\n".join(unlisted)
    assert not stale, "NAMES lists mergekit names the adapter no longer uses (remove them):\n" + "\n".join(stale)


def test_every_instance_attribute_the_scan_sees_is_listed() -> None:
    sources = _sources(ADAPTER)
    listed = set(INSTANCE_ATTRS)
    inherited = set().union(*(s.inherited_attrs() for s in sources))
    assert ("mergekit.io.tensor_writer.TensorWriter", "_lock") in inherited  # the scan sees our subclasses
    private = set().union(*(s.private_attrs() for s in sources)) - OWN_PRIVATE
    assert "_resolve_name" in private
    known = {attr for _c, attr in listed} | {n.rpartition(".")[2] for n in NAMES}
    unlisted = sorted(f"{c}.{a}" for c, a in inherited - listed)
    unlisted += sorted(f"(some mergekit object).{a}" for a in private - known)
    assert not unlisted, "mergekit instance attributes used but not in INSTANCE_ATTRS:\n" + "\n".join(unlisted)


def test_only_patches_py_changes_mergekit() -> None:
    seam = _Source(PATCHES).patches()
    assert len(seam) >= 10  # the scan sees the patches where they are
    elsewhere = [line for s in _sources(ADAPTER) if s.path != PATCHES for line in s.patches()]
    assert not elsewhere, "mergekit is patched outside mergekit_adapter/patches.py:\n" + "\n".join(elsewhere)


def test_only_the_adapter_imports_mergekit() -> None:
    outside = [s for s in _sources(PACKAGE) if ADAPTER not in s.path.parents]
    assert len(outside) > 50
    offenders = sorted(f"{s.path.relative_to(PACKAGE.parent)}: {n}" for s in outside for n in s.names())
    assert not offenders, "mergekit reached outside hpc_merge/mergekit_adapter:\n" + "\n".join(offenders)


def test_moe_output_classes_exist() -> None:
    """moe.py picks mergekit's MoE output architectures by class name."""
    from mergekit.moe import ALL_OUTPUT_ARCHITECTURES

    from hpc_merge.mergekit_adapter.moe import OUTPUT_CLASSES

    present = {type(arch).__name__ for arch in ALL_OUTPUT_ARCHITECTURES}
    missing = sorted(set(OUTPUT_CLASSES.values()) - present)
    assert not missing, f"this mergekit has no MoE output architecture {missing}"


def test_the_scan_would_see_a_missing_name(tmp_path: Path) -> None:
    assert _resolve("mergekit.plan.MergePlanner._plan")
    assert not _resolve("mergekit.plan.MergePlanner._no_such_thing")
    assert not _resolve("mergekit.no_such_module.X")
    assert not _has_attr("mergekit.io.tensor_writer.TensorWriter", "_no_such_attr")
    code = ("import importlib\nimport mergekit.merge\nfrom mergekit.plan import MergePlanner as P\n"
            "mergekit.merge.run_merge = None\nP._plan = None\nsetattr(P, 'x', 1)\n"
            "importlib.import_module('mergekit.sparsify')\n")
    (tmp_path / "m.py").write_text(code)
    src = _Source(tmp_path / "m.py")
    assert {"mergekit.merge.run_merge", "mergekit.plan.MergePlanner._plan", "mergekit.sparsify"} <= src.names()
    assert len(src.patches()) == 3


def test_patches_are_installed_inside_and_restored_after(tiny_pool) -> None:
    """Every name mergekit_patches replaces differs inside the block and is the same object after it,
    also when the merge fails; the plan is restricted before it is chunked and before the header
    room is sized (the one planner hook's order)."""
    import mergekit.merge
    from mergekit.plan import MergePlanner

    from hpc_merge.mergekit_adapter import archfix, merge_options, validate_with_mergekit, writer
    from hpc_merge.mergekit_adapter.patches import mergekit_patches

    owners = {n: n.rpartition(".") for n in sorted(_patched())}

    def current() -> dict[str, object]:
        out = {}
        for name, (owner, _, attr) in owners.items():
            module, _, cls = owner.rpartition(".")
            obj = importlib.import_module(owner) if _resolve_module(owner) else getattr(importlib.import_module(module), cls)
            out[name] = vars(obj)[attr]
        return out

    recipe = {"merge_method": "linear", "dtype": "bfloat16",
              "models": [{"model": str(tiny_pool[m]), "parameters": {"weight": 0.5}} for m in ("math", "coder")]}
    options = {"device": "cpu", "chunk_size": "1K"}
    mk_options = merge_options(options)
    merge_config = validate_with_mergekit(recipe)
    before = current()
    assert len(before) >= 12
    memory_only = {"mergekit.common.ModelReference.config"}
    disk_only = {n for n in before if n.rpartition(".")[2] in
                 ("get", "TensorWriter", "get_architecture_info", "_model_out_config", "_plan", "tqdm")}
    with mergekit_patches(options, mk_options, loaders={}):  # an in-memory merge: nothing read or written
        inside = current()
        assert sorted(n for n in before if (inside[n] is before[n]) != (n in disk_only)) == []
    assert current() == before
    with pytest.raises(KeyError), mergekit_patches(options, mk_options, only_tensors=["model.embed_tokens.weight"],
                                                   progress=lambda _p: None) as chunked:
        inside = current()
        assert sorted(n for n in before if (inside[n] is before[n]) != (n in memory_only)) == []
        arch = archfix.architecture_info(merge_config, mk_options)
        out_cfg = mergekit.merge._model_out_config(merge_config, arch, trust_remote_code=False)
        planner = MergePlanner(merge_config, arch, options=mk_options, out_model_config=out_cfg)
        planner._plan()
        assert [w.name for w, _t in planner._tensors] == ["model.embed_tokens.weight"]
        assert chunked == ["model.embed_tokens.weight"]  # chunking saw the restricted plan
        assert writer._HEADER_BOUND.get() == writer.header_bound(["model.embed_tokens.weight"])
        raise KeyError("a failing merge")
    after = current()
    assert not [n for n in before if after[n] is not before[n]]


def _resolve_module(dotted: str) -> bool:
    try:
        importlib.import_module(dotted)
    except ImportError:
        return False
    return True


def _patched() -> set[str]:
    """Dotted names ``patches.py`` replaces (by ``_replaced``)."""
    src = _Source(PATCHES)
    return {f"{o}.{a}" for node in ast.walk(src.tree) for o, a in src._replaced(node)
            if isinstance(node, ast.Call)}
