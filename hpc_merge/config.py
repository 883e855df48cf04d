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
