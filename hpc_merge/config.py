"""Where the Hydra config lives and how to compose it outside ``@hydra.main`` (tests, subcommands)."""

from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig


def config_dir() -> str:
    """Absolute path of the packaged ``conf/`` (works from a checkout and from ``pip install .``)."""
    import hpc_merge.conf as conf_pkg

    return str(Path(conf_pkg.__file__).resolve().parent)


def compose(overrides: list[str] | None = None, return_hydra_config: bool = False) -> DictConfig:
    """Compose ``config.yaml`` with ``overrides`` using Hydra's compose API."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=config_dir(), version_base="1.3"):
        return hydra_compose("config", overrides=list(overrides or []), return_hydra_config=return_hydra_config)


def precheck(overrides: list[str]) -> None:
    """Compose once with the compose API so override mistakes become one-line ConfigErrors.

    Hydra's own report of a bad override is many lines (every option of the group, the search
    path, a hint about HYDRA_FULL_ERROR) and exits 1; users get one line and exit 2 instead.
    """
    import re

    from hpc_merge.errors import ConfigError, did_you_mean

    try:
        compose(overrides)
    except Exception as exc:  # Hydra raises several exception types for composition problems
        text = str(exc)
        missing = re.search(r"Could not find '([^/']+)/([^']+)'", text)
        if missing:
            group, name = missing.groups()
            options = sorted(p.stem for p in (Path(config_dir()) / group).glob("*.yaml"))
            raise ConfigError(group, f"no {group} config named {name!r}{did_you_mean(name, options)}",
                              f"use one of {', '.join(options)}") from None
        key = re.search(r"Could not override '([^']+)'", text) or re.search(r"full_key: (\S+)", text)
        first = next((ln.strip() for ln in text.splitlines() if ln.strip()), type(exc).__name__)
        if key:
            raise ConfigError(key.group(1), "not a field of the config", f"check the spelling ({first})") from None
        raise ConfigError("overrides", first, "see hpc-merge --help for the override syntax") from None
