"""``hpc-merge monitor [RUN_DIR ...]``: watch runs (local or SLURM) live, or print a snapshot.

Reads only run dirs and SLURM (see :mod:`hpc_merge.monitor.reader`), so it works from any
machine that sees the shared file system, and starts fast (no torch, no mergekit).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

from hpc_merge.monitor.reader import DEFAULT_STALE_AFTER_S, STATES, Reader, RunInfo

__all__ = ["STATES", "Reader", "RunInfo", "main"]


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="hpc-merge monitor",
        description="Watch hpc_merge runs: state, progress, throughput, ETA, fitness and logs. "
                    "Refreshes until every run has ended (exit 0 if all ended ok, else 1).")
    p.add_argument("run_dirs", nargs="*", metavar="RUN_DIR",
                   help="run dirs, or folders searched for run dirs (default: $HPC_MERGE_LOGS or logs/)")
    p.add_argument("--once", action="store_true", help="print one plain snapshot and exit")
    p.add_argument("--json", action="store_true", help="print one snapshot as JSON and exit")
    p.add_argument("--interval", type=float, default=1.0, help="seconds between refreshes (default 1)")
    p.add_argument("--lines", type=int, default=8, help="log lines shown for the selected run (default 8)")
    p.add_argument("--limit", type=int, default=30, help="show at most this many runs, active first (default 30)")
    p.add_argument("--stale-after", type=float, default=DEFAULT_STALE_AFTER_S, metavar="SECONDS",
                   help="a running job whose status is older than this, and that cannot be checked "
                        "otherwise, is dead (default %(default)s)")
    return p


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``hpc-merge monitor``; returns the exit status."""
    args = _parser().parse_args(sys.argv[1:] if argv is None else argv)
    roots = args.run_dirs or [os.environ.get("HPC_MERGE_LOGS") or "logs"]
    missing = [r for r in roots if not Path(r).exists()]
    if missing:
        hint = "" if args.run_dirs else " (run from the project folder, set HPC_MERGE_LOGS or pass RUN_DIR)"
        print(f"error: {', '.join(missing)}: no such run dir or folder{hint}", file=sys.stderr)
        return 2
    reader = Reader(roots, stale_after=args.stale_after, limit=args.limit)
    if args.json or args.once:
        runs = reader.snapshot()
        if args.json:
            print(json.dumps({"generated_at": time.time(), "runs": [r.to_json() for r in runs]},
                             indent=2, default=str))
        else:
            from hpc_merge.monitor.view import plain_snapshot

            print(plain_snapshot(runs, log_lines=args.lines))
        return 0
    from hpc_merge.monitor.view import watch

    try:
        return watch(reader, args.interval, args.lines)
    except KeyboardInterrupt:
        return 130

