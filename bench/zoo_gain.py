"""The skills zoo's expert gains over the base, over several fresh builds (issue 21).

Gain kept, (merged - base) / (expert - base), has a resolution only where each expert gains many
points over the base on its own skill. This builds the zoo ``--builds`` times, each in a fresh cache
folder (nothing reused: base, experts and task files are trained/written again), and prints per
build and skill the base's and the expert's test accuracy and the gain, then the spread (min–max)
of every gain over the builds and whether every gain of every build is ≥ ``--min-gain``.

    .venv/bin/python -m bench.zoo_gain --builds 3            # the full zoo (minutes per build, idle)
    .venv/bin/python -m bench.zoo_gain --size test --builds 2

Builds on one machine with the zoo's fixed thread count are expected to agree; across machines
(CPU kinds) they differ by float rounding, so run it on each kind of machine a claim is made for.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

#: What one build prints on its last line: JSON ``{skill: [base accuracy, expert accuracy]}``.
_CHILD = """
import json, sys
from hpc_merge import zoo
from hpc_merge.evaluate import evaluate_model, load_tasks
size = sys.argv[1]
info = zoo.ensure_zoo(size)
tasks = load_tasks(["zoo"], size=size)
base = evaluate_model(info.base, tasks, split="test")
out = {}
for expert, task in zoo.EXPERT_TASKS.items():
    own = evaluate_model(info.experts[expert], [t for t in tasks if t.name == task], split="test")
    out[task] = [base[task]["accuracy"], own[task]["accuracy"]]
print(json.dumps(out))
"""


def one_build(size: str) -> tuple[dict[str, list[float]], float]:
    """Build and score the zoo in a fresh cache folder (a child process: nothing cached in memory)."""
    import json

    with tempfile.TemporaryDirectory(prefix="zoo-gain-") as cache:
        t0 = time.time()
        proc = subprocess.run([sys.executable, "-c", _CHILD, size], capture_output=True, text=True,
                              env={**os.environ, "HPC_MERGE_CACHE": cache}, cwd=Path(__file__).resolve().parents[1])
        if proc.returncode != 0:
            raise SystemExit(f"zoo build failed:\n{proc.stderr[-3000:]}")
        return json.loads(proc.stdout.strip().splitlines()[-1]), time.time() - t0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", default="full", choices=("full", "test"))
    ap.add_argument("--builds", type=int, default=3)
    ap.add_argument("--min-gain", type=float, default=0.20)
    args = ap.parse_args(argv)
    builds = []
    for i in range(args.builds):
        acc, wall = one_build(args.size)
        builds.append(acc)
        print(f"build {i + 1}: {wall:.0f} s  " + "  ".join(
            f"{t}: base {b:.3f} expert {e:.3f} gain {100 * (e - b):+.1f}" for t, (b, e) in acc.items()), flush=True)
    skills = list(builds[0])
    print(f"\n| skill | base (min–max) | expert (min–max) | gain, points (min–max) | builds: {len(builds)} |")
    print("|---|---|---|---|---|")
    ok = True
    for t in skills:
        b = [x[t][0] for x in builds]
        e = [x[t][1] for x in builds]
        g = [100 * (x[t][1] - x[t][0]) for x in builds]
        ok &= min(g) >= 100 * args.min_gain
        print(f"| {t} | {min(b):.3f}–{max(b):.3f} | {min(e):.3f}–{max(e):.3f} | {min(g):.1f}–{max(g):.1f} | |")
    print(f"\nevery expert gains >= {100 * args.min_gain:.0f} points in every build: {'yes' if ok else 'NO'}")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
