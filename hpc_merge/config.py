"""Where the Hydra config lives and how to compose it outside ``@hydra.main`` (tests, subcommands)."""

from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig


def config_dir() -> str:
    """Absolute path of the packaged ``conf/`` (works from a checkout and from ``pip install .``)."""
    import hpc_merge.conf as conf_pkg

    return str(Path(conf_pkg.__file__).resolve().parent)


def compose(overrides: list[str] | None = None, return_hydra_config: bool = False) -> DictConfig:
    """Compose ``config.yaml`` with ``overrides`` (Hydra's compose API) against the typed schema.

    A composition problem (unknown option or key, a value of the wrong type, bad override syntax)
    is raised as one :class:`~hpc_merge.errors.ConfigError` naming the field, never as Hydra's
    multi-line report; nothing is written.
    """
    from hpc_merge import recipe_overrides

    overrides, held = recipe_overrides.hold(list(overrides or []))  # mergekit_yaml= with moe.KEY=...
    try:
        return recipe_overrides.attach(_compose(overrides, return_hydra_config), held)
    except Exception as exc:  # Hydra and OmegaConf raise many types: each becomes one line
        raise _one_line(exc, overrides) from None


def _compose(overrides: list[str], return_hydra_config: bool) -> DictConfig:
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from hpc_merge.schema import register

    register()
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=config_dir(), version_base="1.3"):
        return hydra_compose("config", overrides=overrides, return_hydra_config=return_hydra_config)


def _one_line(exc: Exception, overrides: list[str]) -> Exception:
    """The ConfigError for a failed composition; an exception of unknown shape is pinned on the first
    override with which composition fails (the rare case costs one compose per override)."""
    from hpc_merge.errors import ConfigError
    from hpc_merge.schema.translate import from_hydra, from_omegaconf

    if isinstance(exc, ConfigError):
        return exc
    found = from_omegaconf(exc) or from_hydra(exc, config_dir(), overrides)
    if found is not None:
        return found
    first = next((ln.strip() for ln in str(exc).splitlines() if ln.strip()), type(exc).__name__)
    for i in range(len(overrides)):
        try:
            _compose(overrides[: i + 1], False)
        except Exception:
            key = overrides[i].split("=", 1)[0].lstrip("+~")
            return ConfigError(key, f"cannot apply {overrides[i]!r} ({first})",
                               "check that the key exists (a group chosen with GROUP=NAME holds it) and the value's type")
    return ConfigError("config", f"cannot compose the config ({first})", "see hpc-merge --cfg job")


def precheck_sweep(overrides: list[str]) -> None:
    """``-m``: compose the sweep's first point with the compose API before Hydra's sweeper runs.

    Why: a key that exists in no point (a typo such as ``merge.densty=0.3,0.5``) fails inside
    Hydra's sweeper, before our launcher sees any point, as Hydra's multi-line report with exit 1,
    after Hydra made its multirun folder. Every point shares its keys, so the first point tells;
    problems of single values are left to the launcher, which reports each bad point.
    Raises a :class:`~hpc_merge.errors.ConfigError` whose field names the bad key.
    """
    from hydra.core.override_parser.overrides_parser import OverridesParser

    from hpc_merge.errors import ConfigError

    plain = [a for a in overrides if not a.startswith("-") and not a.startswith(("hydra.", "hydra/", "+hydra", "~hydra"))]
    try:
        parsed = OverridesParser.create().parse_overrides(plain)
        first = [f"{o.get_key_element()}={next(iter(o.sweep_string_iterator()))}" if o.is_sweep_override()
                 else o.input_line for o in parsed]
    except Exception:  # a sweep form without a first value (intervals for optimisers): the launcher decides
        return
    try:
        compose(first)
    except ConfigError as exc:
        if "not a field" in exc.problem:
            raise
