"""Defer ``import peft`` until mergekit really uses it (a LoRA input): about 0.2 s less start-up.

``mergekit.common`` imports peft at module level. Measured on a 2-core machine (2026-12-03): once
mergekit's other imports are in, peft adds about 300 modules and 0.2 s of the ≈ 5 s that ``import
mergekit.merge`` costs (an earlier reading of 2.7 s charged peft with transformers modules that
mergekit imports anyway). mergekit touches ``peft`` in one place only
(``PeftModel.from_pretrained`` when a model reference carries a LoRA path), so most merges never
need it. :func:`install` puts a stand-in module under ``sys.modules["peft"]`` that carries peft's
real spec, file and package path (so ``importlib``/``inspect`` see the package they expect) and
imports the real peft on the first access to any other attribute, then forwards to it for good.

``importlib.util.LazyLoader`` was tried first and broke: ``inspect.getmodule`` (called while torch
itself was importing) touched the lazy module and started peft's import inside torch's.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
import threading
import types

_LOCK = threading.RLock()
#: dunder names that only the real module can answer (everything else dunder is answered by the stand-in)
_FORWARDED_DUNDERS = frozenset({"__version__", "__all__"})


class _StandIn(types.ModuleType):
    """``peft`` until first use; afterwards a view of the real module's namespace."""

    def __getattr__(self, name: str):  # called only for names not already in this module
        if name.startswith("__") and name.endswith("__") and name not in _FORWARDED_DUNDERS:
            raise AttributeError(name)
        return getattr(_load(self), name)


def _load(stand_in: _StandIn) -> types.ModuleType:
    """Import the real peft once (thread-safe) and copy its namespace into the stand-in."""
    with _LOCK:
        real = stand_in.__dict__.get("_hpc_merge_real")
        if real is None:
            if sys.modules.get("peft") is stand_in:
                del sys.modules["peft"]
            try:
                real = importlib.import_module("peft")
            except BaseException:
                sys.modules.setdefault("peft", stand_in)
                raise
            stand_in.__dict__.update(real.__dict__)
            stand_in.__dict__["_hpc_merge_real"] = real
        return real


def install() -> bool:
    """Register the stand-in unless peft is already imported or not installed; True if registered."""
    with _LOCK:
        if "peft" in sys.modules:
            return False
        spec = importlib.util.find_spec("peft")
        if spec is None:  # not installed: mergekit's own import fails as it always would
            return False
        module = _StandIn("peft")
        module.__spec__ = spec
        module.__loader__ = spec.loader
        module.__file__ = spec.origin
        module.__package__ = "peft"
        if spec.submodule_search_locations is not None:
            module.__path__ = list(spec.submodule_search_locations)
        sys.modules["peft"] = module
        return True
