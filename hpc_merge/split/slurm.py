"""Run the missing parts of a split merge as one SLURM job array (``cluster=slurm*``).

Why an array and not one job of N tasks: each part is independent, so an array lets the scheduler
start each part as soon as a node (or a slot of one) is free, on as many nodes as are free, and a
failed, preempted or timed-out element is reported and redone alone; a job of N tasks waits until
all N fit at once and loses them all together. The array goes through the same submission as every
array here (:func:`hpc_merge.launch.slurm.submit_array`: the profile's resources per element,
``cluster.array_parallelism`` at a time); the ordinary merge job submitted after it finds every
part recorded and only assembles, smoke-tests and logs the model.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from hpc_merge.errors import JobFailed
from hpc_merge.launch.executor import single_process
from hpc_merge.launch.slurm import gather, submit_array
from hpc_merge.split.local import spec_for
from hpc_merge.split.part import valid_record
from hpc_merge.split.plan import Part, fingerprint
from hpc_merge.split.worker import run_spec


def run_array(config: dict[str, Any], options: dict[str, Any], parts: list[Part], parts_root: Path,
              cluster: dict[str, Any], folder: Path, name: str) -> list[str]:
    """Submit the parts without a valid record as one array, wait for it; the labels that ran.

    A failed element is one :class:`JobFailed` naming its part and why (its SLURM state, or what
    it raised); the finished parts are kept, so running the same command again redoes only the rest.
    """
    parts_root.mkdir(parents=True, exist_ok=True)
    fps = {p: fingerprint(config, options, p) for p in parts}
    missing = [p for p in parts if valid_record(parts_root, p, fps[p]) is None]
    if not missing:
        return []
    specs = [spec_for(config, options, p, parts_root, fps[p]) for p in missing]
    jobs = submit_array(single_process(cluster), folder, name, run_spec, specs)
    print(f"submitted SLURM job array {str(jobs[0].job_id).split('_')[0]} ({len(jobs)} of {len(parts)} parts); "
          f"logs: {folder}", flush=True)
    failed = [(p, why) for p, (ok, why) in zip(missing, gather(jobs), strict=True) if not ok]
    if failed:
        part, why = failed[0]
        raise JobFailed(f"{len(failed)} of {len(parts)} parts failed, e.g. {part.label}: {why}; run the same command "
                        "again: the finished parts are kept and only the failed ones are submitted")
    return [p.label for p in missing]
