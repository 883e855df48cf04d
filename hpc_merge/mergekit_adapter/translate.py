"""Our recipe -> mergekit's ``MergeConfiguration`` (refs to paths), with a deterministic donor."""

from __future__ import annotations

from typing import Any

from hpc_merge.errors import ConfigError
from hpc_merge.mergekit_adapter.recipe import OWN_KEYS


def model_refs(recipe: dict[str, Any]) -> list[tuple[str, str]]:
    """``[(field, ref), ...]`` for every model reference in ``recipe``, in order of appearance."""
    out: list[tuple[str, str]] = []
    if recipe.get("base_model"):
        out.append(("base_model", str(recipe["base_model"])))
    for i, e in enumerate(recipe.get("models") or []):
        out.append((f"models[{i}].model", str(e["model"])))
    for i, sl in enumerate(recipe.get("slices") or []):
        if sl.get("base_model"):
            out.append((f"slices[{i}].base_model", str(sl["base_model"])))
        for j, src in enumerate(sl.get("sources") or []):
            out.append((f"slices[{i}].sources[{j}].model", str(src["model"])))
    ts = recipe.get("tokenizer_source")
    if isinstance(ts, str) and ts not in ("base", "union"):
        out.append(("tokenizer_source", ts.removeprefix("model:")))
    return out


def to_mergekit(recipe: dict[str, Any], paths: dict[str, str]) -> dict[str, Any]:
    """Our recipe -> a mergekit config dict: refs replaced by local paths, our own keys and nulls dropped."""
    def sub(obj: Any, key: str | None = None) -> Any:
        if isinstance(obj, dict):
            return {k: sub(v, k) for k, v in obj.items() if v is not None and k not in OWN_KEYS}
        if isinstance(obj, list):
            return [sub(v) for v in obj]
        if key in ("model", "base_model") and isinstance(obj, str):
            return paths.get(obj, obj)
        if key == "tokenizer_source" and isinstance(obj, str) and obj not in ("base", "union"):
            ref = obj.removeprefix("model:")
            return paths.get(ref, ref)
        return obj

    return sub(recipe)


def validate_with_mergekit(config: dict[str, Any], field: str = "merge") -> Any:
    """Build the ``MergeConfiguration`` (pydantic) and turn its errors into one line."""
    try:
        merge_config = _ordered_config_class().model_validate(config)
    except Exception as exc:  # pydantic ValidationError or mergekit's RuntimeError
        first = str(exc).strip().splitlines()
        msg = " ".join(first[:3]) if first else type(exc).__name__
        raise ConfigError(field, f"mergekit rejects the recipe: {msg}", "fix the recipe") from None
    order = [merge_config.base_model] if merge_config.base_model else []
    order += [m.model for m in merge_config.models or []]
    order += [src.model for s in merge_config.slices or [] for src in s.sources]
    merge_config._order = list(dict.fromkeys(order))
    return merge_config


def _ordered_config_class() -> type:
    """MergeConfiguration whose ``referenced_models`` keeps the recipe's order.

    mergekit builds that list from a set and takes its first element as the donor of config.json
    and of the tokenizer when there is no base model, so the donor changes from run to run. The
    order is captured at validation (mergekit reorders ``models`` while planning).
    """
    from mergekit.config import MergeConfiguration
    from pydantic import PrivateAttr

    global _ORDERED
    if _ORDERED is None:
        class OrderedMergeConfiguration(MergeConfiguration):
            _order: list = PrivateAttr(default_factory=list)

            def referenced_models(self):  # noqa: D102 - see the factory's docstring
                seen = super().referenced_models()
                return [m for m in self._order if m in seen] + [m for m in seen if m not in self._order]

        _ORDERED = OrderedMergeConfiguration
    return _ORDERED


_ORDERED: type | None = None
