"""Run the benchmarks and write the results as markdown.

    python bench/run.py --quick            # every benchmark at small sizes (≤ 10 min here)
    python bench/run.py                    # the issue's sizes (three 0.5B models; ≥ 50 min on this loaded machine)
    python bench/run.py --only merge,memory --reps 5
    python bench/run.py --only methods     # all 20 methods, both input kinds (see bench/methods.py)
    python bench/run.py --only scale7b     # 3 × Qwen2.5-7B-shaped models, out of core (see bench/scale7b.py)
    python bench/run.py --only split       # job.tasks=1 vs 2, local processes and local SLURM (bench/split.py)

Tables go to stdout and to ``bench/results/latest.md`` (full) or ``bench/results/quick.md``
(``--quick``), with the machine's load before and after, because this machine is shared and
timings taken under load are noisy.
"""

from __future__ import annotations

import argparse
import importlib
import os
import platform
import sys
import time
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make ``bench`` importable from the repo root
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.context import Context  # noqa: E402
from bench.proc import load_average  # noqa: E402

BENCHMARKS = ("merge", "overhead", "memory", "evolution", "scaling", "gpu", "methods", "scale7b", "split")
MODULES = {"merge": "merge_floor", "overhead": "overhead", "memory": "memory", "evolution": "evolution",
           "scaling": "scaling", "gpu": "gpu", "methods": "methods", "scale7b": "scale7b", "split": "split"}
DEFAULT = BENCHMARKS[:-3]  # methods (80 merges), scale7b (46 GB of inputs) and split (SLURM) run only when named
RESULTS = Path(__file__).resolve().parent / "results"


def versions() -> str:
    """The versions the numbers depend on."""
    from importlib.metadata import version

    return ", ".join(f"{p} {version(p)}" for p in ("mergekit", "torch", "transformers", "safetensors"))


def header(args: argparse.Namespace, started: str, load_before: str, load_after: str, wall: float) -> str:
    """Where and how the numbers were taken."""
    mem_gb = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    mode = "--quick (small sizes)" if args.quick else "full sizes"
    return "\n".join([
        f"## Benchmarks ({mode})", "",
        f"- taken {started} on {platform.machine()}, {os.cpu_count()} cores, {mem_gb:.0f} GiB RAM, no GPU; "
        f"{versions()}",
        f"- load average (1/5/15 min) before: {load_before}, after: {load_after} — above {os.cpu_count()} the "
        "machine was shared with other work and timings are noisy; ratios from interleaved runs hold up "
        "better than absolute seconds",
        f"- command: `python bench/run.py{' --quick' if args.quick else ''}"
        f"{' --only ' + ','.join(args.only) if args.only != list(DEFAULT) else ''}`; {args.reps} repetitions; "
        f"took {wall / 60:.1f} min", "",
    ])


def main(argv: list[str] | None = None) -> int:
    """Parse options, run the chosen benchmarks in order, write the markdown."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="small sizes: everything in ≤ 10 minutes here")
    ap.add_argument("--only", type=lambda s: [x.strip() for x in s.split(",") if x.strip()],
                    default=list(DEFAULT), help=f"comma-separated subset of {', '.join(BENCHMARKS)} "
                    f"(default: {', '.join(DEFAULT)})")
    ap.add_argument("--reps", type=int, default=3, help="repetitions per timed command (median reported)")
    ap.add_argument("--out", type=Path, default=None, help="markdown file (default bench/results/latest.md "
                    "or quick.md)")
    args = ap.parse_args(argv)
    unknown = [b for b in args.only if b not in BENCHMARKS]
    if unknown:
        ap.error(f"unknown benchmark {unknown[0]!r}; choose from {', '.join(BENCHMARKS)}")
    ctx = Context(quick=args.quick, reps=args.reps)
    started, load_before, t0 = time.strftime("%Y-%m-%d %H:%M"), load_average(), time.time()
    out = args.out or RESULTS / ("quick.md" if args.quick else "latest.md")
    out.parent.mkdir(parents=True, exist_ok=True)
    sections = []
    for i, name in enumerate(args.only):
        ctx.log(f"[{name}] (load {load_average()})")
        t1 = time.time()
        tables = importlib.import_module(f"bench.{MODULES[name]}").run(ctx)
        text = "\n".join(t.markdown() for t in tables)
        print(text, flush=True)
        sections.append(text)
        ctx.log(f"[{name}] done in {time.time() - t1:.0f} s")
        # rewritten after every benchmark, so an interrupted run keeps what it measured
        pending = [f"- not run (interrupted): {', '.join(args.only[i + 1:])}", ""] if i + 1 < len(args.only) else []
        body = header(args, started, load_before, load_average(), time.time() - t0) + "\n".join(pending) + \
            "\n" + "\n".join(sections)
        tmp = out.with_suffix(".md.tmp")
        tmp.write_text(body)
        os.replace(tmp, out)
    ctx.log(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
