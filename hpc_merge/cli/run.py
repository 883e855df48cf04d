"""The plain command line: ``hpc-merge [+experiment=X] [OVERRIDE ...]`` and Hydra's own flags.

A plain run (overrides only) is composed once with Hydra's compose API and validated before
anything exists: Hydra's ``@hydra.main`` would create its output folder (``.hydra/``) first, even
for a config we then refuse. Hydra's own flags (``-m``, ``--cfg``, ``--help``, ...) go to
``@hydra.main``, whose task function validates each job the same way; ``--cfg job`` is composed
here so that a bad override is one line.
"""

from __future__ import annotations

import os
import sys


def main(args: list[str]) -> None:
    """Set up the terminal, then run the job ``args`` (overrides, maybe Hydra flags) describe."""
    from hpc_merge.verbosity import setup_cli

    setup_cli(args)  # before any library import: logging and library bars quiet unless hydra.verbose
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    from hpc_merge.app import main_guarded
    from hpc_merge.config import compose, config_dir
    from hpc_merge.errors import ConfigError

    shown = _show_job_cfg(args)
    if shown is not None:
        sys.exit(shown)
    if any(a.startswith("-") for a in args):
        import hydra

        from hpc_merge.config import precheck_sweep
        from hpc_merge.schema import register

        if any(a in ("-m", "--multirun") for a in args):
            try:
                precheck_sweep(args)
            except ConfigError as exc:
                print(f"error: every point of the sweep: {exc}", file=sys.stderr)
                sys.exit(ConfigError.exit_code)

        register()
        hydra.main(config_path=config_dir(), config_name="config", version_base="1.3")(main_guarded)()
        return
    try:
        cfg = compose(args)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(ConfigError.exit_code)
    main_guarded(cfg)


def _show_job_cfg(args: list[str]) -> int | None:
    """``--cfg job [--resolve]``: print the composed, typed config, as Hydra would, but composed
    with the compose API so a bad override is one line (exit 2); None for any other flag."""
    flags = [a for a in args if a.startswith("-")]
    if not flags or any(f not in ("--cfg", "-c", "--resolve") for f in flags) or not ({"--cfg", "-c"} & set(flags)):
        return None
    i = next(i for i, a in enumerate(args) if a in ("--cfg", "-c"))
    if i + 1 >= len(args) or args[i + 1] != "job":
        return None
    from omegaconf import OmegaConf

    from hpc_merge.config import compose
    from hpc_merge.errors import ConfigError

    overrides = [a for j, a in enumerate(args) if j not in (i, i + 1) and a != "--resolve"]
    try:
        cfg = compose(overrides)
        sys.stdout.write(OmegaConf.to_yaml(cfg, resolve="--resolve" in args))
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return ConfigError.exit_code
    except Exception as exc:  # --resolve of a broken ${...}
        from hpc_merge.schema.translate import from_omegaconf

        print(f"error: {from_omegaconf(exc) or exc}", file=sys.stderr)
        return ConfigError.exit_code
    return 0
