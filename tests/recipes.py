"""One small, valid recipe per mergekit method over the tiny pool (refs ``tiny:NAME``)."""

from __future__ import annotations

from typing import Any

TASK_VECTOR = ("task_arithmetic", "ties", "dare_ties", "dare_linear", "breadcrumbs", "breadcrumbs_ties",
               "della", "della_linear")


def recipe_for(method: str) -> dict[str, Any]:
    """A recipe for ``method`` that mergekit accepts, using the tiny pool's references."""
    two = [{"model": "tiny:math", "parameters": {"weight": 0.6}}, {"model": "tiny:coder", "parameters": {"weight": 0.4}}]
    three = two + [{"model": "tiny:science", "parameters": {"weight": 0.3}}]
    if method == "linear":
        return {"merge_method": method, "models": two, "dtype": "float32"}
    if method in ("multislerp",):
        return {"merge_method": method, "models": three, "dtype": "float32"}
    if method == "nuslerp":
        return {"merge_method": method, "models": two, "dtype": "float32"}
    if method == "karcher":
        return {"merge_method": method, "models": [{"model": m} for m in ("tiny:math", "tiny:coder", "tiny:science")],
                "dtype": "float32"}
    if method in ("slerp", "nearswap"):
        return {"merge_method": method, "base_model": "tiny:math",
                "models": [{"model": "tiny:math"}, {"model": "tiny:coder"}],
                "parameters": {"t": [0.2, 0.8] if method == "slerp" else 0.5}, "dtype": "float32"}
    if method == "arcee_fusion":
        return {"merge_method": method, "base_model": "tiny:base", "models": [{"model": "tiny:math"}], "dtype": "float32"}
    if method == "passthrough":
        return {"merge_method": method, "slices": [
            {"sources": [{"model": "tiny:math", "layer_range": [0, 3]}]},
            {"sources": [{"model": "tiny:coder", "layer_range": [1, 4]}]}], "dtype": "float32"}
    if method in ("model_stock", "ram", "ramplus_tl", "sce"):
        return {"merge_method": method, "base_model": "tiny:base",
                "models": [{"model": m} for m in ("tiny:math", "tiny:coder", "tiny:science")], "dtype": "float32"}
    if method in TASK_VECTOR:
        return {"merge_method": method, "base_model": "tiny:base", "models": [
            {"model": "tiny:math", "parameters": {"weight": 0.5, "density": 0.6}},
            {"model": "tiny:coder", "parameters": {"weight": 0.5, "density": [0.3, 0.8]}}],
            "parameters": {"normalize": True}, "dtype": "float32"}
    raise KeyError(method)
