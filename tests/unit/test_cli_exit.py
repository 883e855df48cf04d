"""The command line freezes the heap on its way out (a 1.1-1.3 s shutdown collection saved per run)."""

from __future__ import annotations

import gc
import sys

import pytest

from hpc_merge import cli


def test_exit_freezes_heap_and_keeps_the_exit_status(tmp_path, monkeypatch):
    gc.unfreeze()
    monkeypatch.setattr(sys, "argv", ["hpc-merge", "sweep-report", str(tmp_path)])
    try:
        with pytest.raises(SystemExit) as exc:
            cli.main()
        assert exc.value.code == 2  # the subcommand's own status (no sweep.json here), unchanged
        assert gc.get_freeze_count() > 0
    finally:
        gc.unfreeze()
