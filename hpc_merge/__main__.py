"""CLI: ``python -m hpc_merge [+experiment=X ...]`` (Hydra) or ``hpc-merge monitor|sbatch|fetch ...``."""

from __future__ import annotations

import importlib
import sys

SUBCOMMANDS = ("monitor", "sbatch", "fetch", "sweep-report")


def main() -> None:
    """Dispatch a subcommand, else compose the command line once and run it.

    A plain run (overrides only) is composed with Hydra's compose API and validated before
    anything exists: Hydra's ``@hydra.main`` would create its output folder (``.hydra/``) first,
    even for a config we then refuse. Hydra's own flags (``-m``, ``--cfg``, ``--help``, ...) go
    to ``@hydra.main``, whose task function validates each job the same way.
    """
    if len(sys.argv) > 1 and sys.argv[1] in SUBCOMMANDS:
        sub = sys.argv.pop(1)
        sys.exit(importlib.import_module(f"hpc_merge.{sub.replace('-', '.')}").main(sys.argv[1:]))

    import os

    from hpc_merge.console import setup_cli

    setup_cli(sys.argv[1:])  # before any library import: logging and library bars quiet unless hydra.verbose
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    from hpc_merge.app import main_guarded
    from hpc_merge.config import compose, config_dir
    from hpc_merge.errors import ConfigError

    args = sys.argv[1:]
    if any(a.startswith("-") for a in args):
        import hydra

        from hpc_merge.schema import register

        register()
        hydra.main(config_path=config_dir(), config_name="config", version_base="1.3")(main_guarded)()
        return
    try:
        cfg = compose(args)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(ConfigError.exit_code)
    main_guarded(cfg)


if __name__ == "__main__":
    main()
