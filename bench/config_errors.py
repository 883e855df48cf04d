"""How long a config error takes from the CLI (the promise: one line, exit 2, within 2 s).

Each bad command line runs through ``python -m hpc_merge`` in a child process; the baseline in
the same run is importing mergekit's method registry (and with it torch), which every config
error paid before the typed schema checked values first. Runs are interleaved (A B C A B C ...)
so the machine's load hits every command alike; the median is the headline, min–max the noise.

    .venv/bin/python -m bench.config_errors [--reps 3]
"""

from __future__ import annotations

import argparse
import subprocess
import tempfile
import time
from pathlib import Path

from bench.proc import PY, ROOT, base_env, load_average
from bench.table import median, ratio, spread

CASES = {
    "density=nan": ["merge=ties", "models=tiny", "merge.models.0.parameters.density=nan"],
    "timeout_min=abc": ["cluster.timeout_min=abc"],
    "logger.mode=sometimes": ["logger.mode=sometimes"],
    "merge_method=[ties]": ["merge.merge_method=[ties]"],
    "device=tpu": ["job.options.device=tpu"],
    "evolve.population=abc": ["+experiment=evolve_demo", "evolve.population=abc"],
    "evolve.x0=center": ["+experiment=evolve_demo", "evolve.x0=center"],
    "unknown key +job.foo": ["+job.foo=1"],
}
BASELINE = "import mergekit.merge_methods"


def _wall(argv: list[str], env: dict[str, str], want_rc: int) -> float:
    t0 = time.time()
    proc = subprocess.run(argv, cwd=ROOT, env=env, capture_output=True, text=True)
    wall = time.time() - t0
    if proc.returncode != want_rc:
        raise RuntimeError(f"{argv}: exit {proc.returncode}, wanted {want_rc}\n{proc.stderr[-2000:]}")
    if want_rc == 2 and len(proc.stderr.strip().splitlines()) != 1:
        raise RuntimeError(f"{argv}: not one stderr line:\n{proc.stderr[-2000:]}")
    return wall


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as logs:
        env = {**base_env(), "HPC_MERGE_LOGS": logs}
        runs: dict[str, list[float]] = {name: [] for name in ["baseline: " + BASELINE, *CASES]}
        for _ in range(args.reps):
            runs["baseline: " + BASELINE].append(_wall([PY, "-c", BASELINE], env, 0))
            for name, overrides in CASES.items():
                runs[name].append(_wall([PY, "-m", "hpc_merge", *overrides], env, 2))
        created = sorted(str(p) for p in Path(logs).rglob("*"))
    ref = median(runs["baseline: " + BASELINE])
    print(f"# config errors from the CLI ({args.reps} interleaved runs, load {load_average()})\n")
    print("| command line | median wall s | min–max | vs baseline |\n|---|---|---|---|")
    for name, walls in runs.items():
        print(f"| {name} | {median(walls):.2f} | {spread(walls, 2)} | {ratio(median(walls), ref)} |")
    print(f"\nfolders created under the logs dir: {len(created)}")


if __name__ == "__main__":
    main()
