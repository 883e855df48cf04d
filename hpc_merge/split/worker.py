"""``python -m hpc_merge.split.worker SPEC``: run one part of a split merge (a local process or a SLURM task).

``SPEC`` is the JSON file :func:`hpc_merge.split.local.run_local` writes: the mergekit config, the
options, the part and where the parts go. Exit 0 once the part's folder and record are in place.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

from hpc_merge.split.part import run_part
from hpc_merge.split.plan import Part


def run_spec(spec: dict[str, Any]) -> str:
    """Run the part a spec describes (also the callable of a SLURM array element); its folder.

    On SLURM, torch gets the element's CPUs (``SLURM_CPUS_PER_TASK``) as its threads unless
    ``OMP_NUM_THREADS`` says otherwise: by default it would start one per core of the whole node.
    """
    cpus = os.environ.get("SLURM_CPUS_PER_TASK")
    if cpus and cpus.isdigit() and "OMP_NUM_THREADS" not in os.environ:
        import torch

        torch.set_num_threads(int(cpus))
    part = Part(index=spec["index"], count=spec["count"], names=tuple(spec["names"]), read_bytes=spec["read_bytes"])
    return str(run_part(spec["config"], spec["options"], part, Path(spec["parts_root"]), spec["fingerprint"]))


def main(spec_path: str) -> int:
    run_spec(json.loads(Path(spec_path).read_text()))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
