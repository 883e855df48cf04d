"""``hpc-merge sweep-report SWEEP_DIR``: a sweep's points best first, with report.csv and report.png."""

from __future__ import annotations

import argparse
import sys

from hpc_merge.sweep import sweepfile
from hpc_merge.sweep.report import write_report


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``hpc-merge sweep-report``; returns the exit status."""
    parser = argparse.ArgumentParser(
        prog="hpc-merge sweep-report",
        description="A sweep's points best first (table), written as report.csv and report.png in the sweep folder.")
    parser.add_argument("sweep_dir", metavar="SWEEP_DIR", help="a sweep folder (logs/sweeps/<sweep_id>)")
    parser.add_argument("--metric", help="rank by this metric (default: the sweep's key metric)")
    parser.add_argument("--mode", choices=("min", "max"), help="lower (min) or higher (max) is better")
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    if not sweepfile.is_sweep_dir(args.sweep_dir):
        print(f"error: sweep_dir: {args.sweep_dir} holds no {sweepfile.SWEEP_FILE} — fix: give a folder under "
              "logs/sweeps/ (the sweep command printed it)", file=sys.stderr)
        return 2
    print(write_report(args.sweep_dir, metric=args.metric, mode=args.mode))
    return 0
