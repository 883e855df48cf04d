"""The validated MoE recipe: :class:`MoePlan` and its experts (:class:`ExpertSpec`).

The plan is what every later step reads (gates, writers, card, job); it is plain data, JSON-able,
because it travels to SLURM nodes and into ``result.json``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass(frozen=True)
class ExpertSpec:
    """One expert (or shared expert): the reference as written, its folder, its prompts."""

    ref: str
    path: str
    positive_prompts: tuple[str, ...] = ()
    negative_prompts: tuple[str, ...] = ()
    noise_scale: float | None = None
    residual_scale: float | None = None


@dataclass(frozen=True)
class MoePlan:
    """A validated recipe: resolved folders, the chosen output and which writer builds it."""

    base_ref: str
    base_path: str
    experts: tuple[ExpertSpec, ...]
    shared_experts: tuple[ExpertSpec, ...]
    gate_mode: str
    experts_per_token: int
    dtype: str | None
    source_type: str
    output_arch: str
    writer: str  # "mergekit" (its MoE API) or "own" (hpc_merge.moe.writers)
    shared_expert_gate: str = "prompts"
    findings: tuple[str, ...] = field(default=())

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able form (the job plan travels to SLURM nodes and into result.json)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> MoePlan:
        """Inverse of :meth:`to_dict`."""
        d = dict(data)
        d["experts"] = tuple(ExpertSpec(**_tuplify(e)) for e in d["experts"])
        d["shared_experts"] = tuple(ExpertSpec(**_tuplify(e)) for e in d["shared_experts"])
        d["findings"] = tuple(d.get("findings") or ())
        return cls(**d)

    def recipe(self, resolved: bool = False) -> dict[str, Any]:
        """The plan as a mergekit-moe YAML mapping (model refs as written, or resolved folders)."""
        def exp(e: ExpertSpec) -> dict[str, Any]:
            out: dict[str, Any] = {"source_model": e.path if resolved else e.ref}
            if e.positive_prompts:
                out["positive_prompts"] = list(e.positive_prompts)
            if e.negative_prompts:
                out["negative_prompts"] = list(e.negative_prompts)
            for key in ("noise_scale", "residual_scale"):
                if getattr(e, key) is not None:
                    out[key] = getattr(e, key)
            return out

        rec: dict[str, Any] = {"base_model": self.base_path if resolved else self.base_ref,
                               "gate_mode": self.gate_mode, "experts_per_token": self.experts_per_token,
                               "experts": [exp(e) for e in self.experts]}
        if self.dtype:
            rec["dtype"] = self.dtype
        if self.shared_experts:
            rec["shared_experts"] = [exp(e) for e in self.shared_experts]
        return rec


def _tuplify(d: Mapping[str, Any]) -> dict[str, Any]:
    return {k: tuple(v) if isinstance(v, list) else v for k, v in d.items()}
