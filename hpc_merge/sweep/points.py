"""A sweep's points: composed by Hydra, validated by the same path as a single run, labelled.

Every point is checked before anything runs or is submitted (:func:`hpc_merge.app.prepare`: the
schema, the models, mergekit's own validation, the cluster profile), so a typo in one point is
reported at once, with the point it is in, instead of after a queue wait inside its job.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from omegaconf import DictConfig, OmegaConf, open_dict, read_write

from hpc_merge.errors import ConfigError


@dataclass
class Point:
    """One point of a sweep: its overrides and, once valid, its config, job kind and run dir."""

    index: int
    overrides: list[str]
    cfg: DictConfig | None = None
    kind: str = ""
    run_dir: Path | None = None
    plan: dict[str, Any] = field(default_factory=dict)
    error: ConfigError | None = None
    params: dict[str, Any] = field(default_factory=dict)
    lock: Any = None  # the run dir's :class:`hpc_merge.run.lock.RunLock` while this sweep holds it

    def label(self, keys: list[str]) -> str:
        """``density=0.3 epsilon=0.05``: the swept values (all overrides when nothing varies)."""
        if keys:
            return " ".join(f"{k}={_show(self.params.get(k))}" for k in keys)
        return " ".join(self.overrides) or "(no overrides)"


def _show(value: Any) -> str:
    return "null" if value is None else str(value)


def split_override(text: str) -> tuple[str, Any]:
    """``+merge.x=0.5`` -> ``("merge.x", 0.5)`` (values parsed as YAML: numbers become numbers)."""
    key, sep, value = text.partition("=")
    key = key.lstrip("+~")
    if not sep:
        return key, None
    try:
        parsed = yaml.safe_load(value)
    except yaml.YAMLError:
        parsed = value
    return key, parsed if isinstance(parsed, int | float | str | bool) or parsed is None else value


def swept_keys(points: list[Point]) -> list[str]:
    """The override keys whose value differs between points, in command-line order."""
    seen: dict[str, set[str]] = {}
    for point in points:
        for text in point.overrides:
            key, value = split_override(text)
            seen.setdefault(key, set()).add(repr(value))
    keys = [k for k, values in seen.items()
            if len(values) > 1 or any(k not in dict(map(split_override, p.overrides)) for p in points)]
    return keys if len(points) > 1 else []


def compose_point(config: DictConfig, loader: Any, index: int, overrides: list[str]) -> Point:
    """Compose one point (Hydra's sweep config) and validate it; a bad point keeps its error."""
    from hydra.core.hydra_config import HydraConfig

    from hpc_merge.app import prepare

    point = Point(index=index, overrides=list(overrides))
    point.params = dict(map(split_override, overrides))
    try:
        full = loader.load_sweep_config(config, list(overrides))
    except Exception as exc:  # Hydra raises several types; it validated every point before us
        first = next((ln.strip() for ln in str(exc).splitlines() if ln.strip()), type(exc).__name__)
        point.error = ConfigError("overrides", first, "check the point's overrides")
        return point
    HydraConfig.instance().set_config(full)  # ${hydra:...} in the config resolve as in a single run
    cfg = full.copy()
    with read_write(cfg), open_dict(cfg):
        del cfg["hydra"]
    try:
        point.kind, point.plan, point.run_dir = prepare(cfg)
    except ConfigError as exc:
        point.error = exc
        return point
    point.cfg = cfg
    return point


def compose_points(config: DictConfig, loader: Any, job_overrides: list[list[str]],
                   first_index: int = 0) -> list[Point]:
    """Every point, composed and validated (bad points carry their :class:`ConfigError`)."""
    return [compose_point(config, loader, first_index + i, o) for i, o in enumerate(job_overrides)]


def clashing_outputs(points: list[Point]) -> list[tuple[Point, str]]:
    """Points that would write their model where an earlier, different point writes its own
    (an explicit ``output=DIR`` shared by the sweep): one of them would fail at the end, or
    worse, both would race for the folder."""
    first: dict[str, Point] = {}
    clashes = []
    for p in points:
        if p.cfg is None or not p.cfg.get("output"):
            continue
        out = str(Path(str(p.cfg.output)).expanduser().resolve())
        other = first.setdefault(out, p)
        if other is not p and other.run_dir != p.run_dir:
            clashes.append((p, f"output: {out} is also point {other.index}'s output — fix: leave output unset "
                               "(each point writes into its own run dir) or vary it with the sweep"))
    return clashes


def cluster_of(point: Point) -> dict[str, Any]:
    """The point's cluster profile as a plain dict (``{"kind": "local"}`` when it has none)."""
    assert point.cfg is not None
    if point.cfg.get("cluster") is None:
        return {"kind": "local"}
    return OmegaConf.to_container(point.cfg.cluster, resolve=True)
