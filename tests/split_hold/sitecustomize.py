"""Test helper: hold one part of a split merge mid-merge, so a test can kill it there (no race).

Put this folder on ``PYTHONPATH`` of the SLURM array elements (``cluster.env``) with
``HPC_MERGE_TEST_HOLD=<token file>:<part label>``. When that part's worker publishes its first
``merging`` progress report (mergekit has executed its first task), and the token file exists,
the token is removed, the report is put in place, and the worker blocks there until it is
killed (``scancel``, ``scontrol requeue``). Without the token (a re-run, a requeued try) nothing
is held. Only the publishing of the report is intercepted (a Python audit hook on ``os.rename``):
the merge itself is the real one, with its temporary folder half written.
"""

from __future__ import annotations

import os
import sys
import time

_SPEC = os.environ.get("HPC_MERGE_TEST_HOLD", "")


def _install(token: str, label: str) -> None:
    busy = []

    def hook(event: str, args: tuple) -> None:
        if event != "os.rename" or busy or not str(args[1]).endswith(f"{label}.progress.json"):
            return
        try:
            os.unlink(token)
        except FileNotFoundError:
            return  # not this try
        busy.append(True)
        os.replace(args[0], args[1])  # publish the report the worker is about to publish
        print(f"split_hold: {label} held mid-merge (pid {os.getpid()})", flush=True)
        while True:
            time.sleep(1)

    sys.addaudithook(hook)


if ":" in _SPEC:
    _install(*_SPEC.rsplit(":", 1))
