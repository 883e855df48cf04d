"""A process that waits for a cached model's lock says whom it waits for (a silent wait looks like a hang)."""

from __future__ import annotations

import os
import subprocess
import sys

HOLDER = """
import sys
from hpc_merge.atomic import file_lock
with file_lock(sys.argv[1]):
    print("held", flush=True)
    sys.stdin.readline()          # hold until the test says so
"""
WAITER = """
import sys
from hpc_merge.atomic import file_lock
with file_lock(sys.argv[1]):
    print("got it", flush=True)
"""


def _start(code: str, folder) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", code, str(folder)], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True, env={"HPC_MERGE_PROGRESS": "plain",
                                                                    **os.environ})


def test_waiting_for_a_held_lock_names_the_holder(tmp_path):
    holder = _start(HOLDER, tmp_path)
    waiter = None
    try:
        assert holder.stdout.readline().strip() == "held"  # the event: the lock is taken
        waiter = _start(WAITER, tmp_path)
        note = waiter.stdout.readline()  # the event: the waiter found it taken and said so
        assert f"waiting for pid {holder.pid} on " in note and str(tmp_path) in note, note
        holder.stdin.write("\n")
        holder.stdin.flush()
        assert waiter.stdout.readline().strip() == "got it"
        assert waiter.wait(timeout=120) == 0
    finally:
        for p in (holder, waiter):
            if p is not None:
                p.kill()
                p.wait()
    assert (tmp_path / ".lock").read_text().startswith(f"pid {waiter.pid} on ")  # the last holder's identity
