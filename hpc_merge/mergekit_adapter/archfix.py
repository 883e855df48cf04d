"""Fixes to mergekit's architecture tables, and mergekit's table lookup with them applied.

mergekit 0.1.5 copies exactly the tensors its table for an architecture names: a table that asks
for a tensor transformers 5 does not write crashes the merge mid-job, and a checkpoint tensor the
table does not name is silently left out of the output. The fixes (used around every merge through
:func:`~hpc_merge.mergekit_adapter.patches.architecture_fixes`, by the in-memory merge, the split
planner and the validation check in :mod:`~hpc_merge.mergekit_adapter.archsupport`):

- Cohere without qk-norm: the table always asks for ``self_attn.q_norm``/``k_norm``; dropped when
  ``use_qk_norm`` is false (transformers 5 then has no such weights).
- GPT-NeoX: the table asks for ``attention.bias``/``masked_bias``/``rotary_emb.inv_freq``, buffers
  transformers 5 neither has nor writes; dropped (older checkpoints that still hold them merge too).
- No table at all (Qwen2-MoE): mergekit infers the tensor names from the checkpoint but then has
  no config key for the depth, so a passthrough that changes the layer count wrote a config with
  the old ``num_hidden_layers`` (transformers silently ignored the extra layers); the layer count
  is read from ``num_hidden_layers``.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class _Drop:
    """Table entries transformers 5 does not write for configs where ``applies(config)`` holds."""

    pattern: re.Pattern[str]
    applies: Callable[[Any], bool]


_DROPS: dict[str, _Drop] = {
    "cohere": _Drop(re.compile(r"\.self_attn\.[qk]_norm\.weight$"), lambda c: not getattr(c, "use_qk_norm", False)),
    "gpt_neox": _Drop(re.compile(r"\.attention\.(bias|masked_bias|rotary_emb\.inv_freq)$"), lambda c: True),
}


@functools.cache
def _module_class() -> type:
    """A ``ModuleArchitecture`` that filters another one's weights and/or fixes its depth key."""
    from mergekit.architecture.base import ModuleArchitecture

    class FixedModuleArchitecture(ModuleArchitecture):
        def __init__(self, inner: Any, drop: re.Pattern[str] | None, layers_key: str | None):
            self.inner, self.drop, self.layers_key = inner, drop, layers_key

        def _keep(self, weights: list[Any] | None) -> list[Any] | None:
            if weights is None or self.drop is None:
                return weights
            return [w for w in weights if not self.drop.search(w.name)]

        def pre_weights(self, config: Any) -> list[Any]:
            return self._keep(self.inner.pre_weights(config))

        def post_weights(self, config: Any) -> list[Any]:
            return self._keep(self.inner.post_weights(config))

        def layer_weights(self, index: int, config: Any) -> list[Any] | None:
            return self._keep(self.inner.layer_weights(index, config))

        def num_layers_config_key(self) -> str:
            return self.layers_key or self.inner.num_layers_config_key()

        def num_layers(self, config: Any) -> int:
            if self.layers_key:
                return int(getattr(config, self.layers_key))
            return self.inner.num_layers(config)

    return FixedModuleArchitecture


def fix_architecture(arch_info: Any, config: Any) -> Any:
    """mergekit's ``ModelArchitecture`` for ``config`` with our fixes applied (or unchanged)."""
    from mergekit.architecture.base import ModuleDefinition

    model_type = getattr(config, "model_type", "")
    drop = _DROPS.get(model_type)
    pattern = drop.pattern if drop and drop.applies(config) else None
    modules, changed = {}, False
    for name, mod in arch_info.modules.items():
        inner = mod.architecture
        layers_key = None
        if _inferred(inner) and getattr(config, "num_hidden_layers", None) is not None:
            layers_key = "num_hidden_layers"
        if pattern is None and layers_key is None:
            modules[name] = mod
            continue
        fixed = _module_class()(inner, pattern, layers_key)
        modules[name] = ModuleDefinition(architecture=fixed, weight_prefix=mod.weight_prefix, subfolder=mod.subfolder)
        changed = True
    return arch_info.model_copy(update={"modules": modules}) if changed else arch_info


def _inferred(module_arch: Any) -> bool:
    """True for a module mergekit inferred from tensor names (no table: no config key for depth)."""
    definition = getattr(module_arch, "definition", None)
    return definition is not None and not definition.num_layers_config_key and \
        getattr(definition, "override_num_layers", None) is not None


def architecture_info(merge_config: Any, options: Any, lookup: Callable[[Any, Any], Any] | None = None) -> Any:
    """mergekit's ``get_architecture_info`` for a merge, with the fixes for its output config's architecture."""
    if lookup is None:
        from mergekit.architecture import get_architecture_info as lookup
    info = lookup(merge_config, options)
    donor = merge_config.base_model or merge_config.referenced_models()[0]
    return fix_architecture(info, donor.config(trust_remote_code=options.trust_remote_code))
