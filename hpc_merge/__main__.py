"""CLI: ``python -m hpc_merge [+experiment=X ...]`` (Hydra) or ``hpc-merge monitor|sbatch|fetch ...``."""

from __future__ import annotations

import importlib
import sys

SUBCOMMANDS = ("monitor", "sbatch", "fetch", "sweep-report")


def main() -> None:
    """Dispatch a subcommand, else hand the command line to Hydra."""
    if len(sys.argv) > 1 and sys.argv[1] in SUBCOMMANDS:
        sub = sys.argv.pop(1)
        sys.exit(importlib.import_module(f"hpc_merge.{sub.replace('-', '.')}").main(sys.argv[1:]))

    import os

    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    import hydra

    from hpc_merge.app import main_guarded
    from hpc_merge.config import config_dir, precheck
    from hpc_merge.errors import ConfigError

    args = sys.argv[1:]
    if not any(a.startswith("-") or a.startswith(("hydra.", "hydra/")) for a in args):
        try:
            precheck(args)
        except ConfigError as exc:
            print(f"error: {exc}", file=sys.stderr)
            sys.exit(ConfigError.exit_code)

    hydra.main(config_path=config_dir(), config_name="config", version_base="1.3")(main_guarded)()


if __name__ == "__main__":
    main()
