"""The ``hpc-merge`` command line (also ``python -m hpc_merge``): every entry point in one place.

- no subcommand: compose the config from overrides and run the job (:mod:`hpc_merge.cli.run`);
- ``monitor [RUN_DIR ...]``: watch runs live (:mod:`hpc_merge.monitor`);
- ``sbatch OVERRIDES > job.sbatch``: a ready sbatch script (:mod:`hpc_merge.cli.sbatch`);
- ``fetch OVERRIDES``: download the config's Hub models first (:mod:`hpc_merge.cli.fetch`);
- ``sweep-report SWEEP_DIR``: a sweep's points best first (:mod:`hpc_merge.cli.sweep_report`).

A subcommand's module is imported only when it is the one asked for: the plain run must set up
logging before any library is imported (:func:`hpc_merge.verbosity.setup_cli`), and ``monitor``
starts without torch or Hydra.
"""

from __future__ import annotations

import gc
import sys
from collections.abc import Callable


def _monitor(argv: list[str]) -> int:
    from hpc_merge.monitor import main

    return main(argv)


def _sbatch(argv: list[str]) -> int:
    from hpc_merge.cli.sbatch import main

    return main(argv)


def _fetch(argv: list[str]) -> int:
    from hpc_merge.cli.fetch import main

    return main(argv)


def _sweep_report(argv: list[str]) -> int:
    from hpc_merge.cli.sweep_report import main

    return main(argv)


SUBCOMMANDS: dict[str, Callable[[list[str]], int]] = {
    "monitor": _monitor, "sbatch": _sbatch, "fetch": _fetch, "sweep-report": _sweep_report}


def main() -> None:
    """Dispatch a subcommand (its exit status is the process's), else run the job the overrides say.

    On every way out (return, ``sys.exit``, an error) the heap is frozen first: with torch,
    transformers and mergekit imported (over 400,000 tracked objects), the interpreter's
    shutdown took 1.1-1.3 s of every run here - mergekit-yaml pays it too; frozen, exit takes
    0.2 s. Exit handlers, thread joins and file flushes still run; the process ends right
    after, so nothing needs the cycle collector any more.
    """
    try:
        if len(sys.argv) > 1 and sys.argv[1] in SUBCOMMANDS:
            sub = sys.argv.pop(1)
            sys.exit(SUBCOMMANDS[sub](sys.argv[1:]))
        from hpc_merge.cli.run import main as run_main

        run_main(sys.argv[1:])
    finally:
        gc.freeze()
