"""``job.tasks=3`` on the local SLURM cluster: the parts run as one job array of three elements,
the merge job assembles them, and the model equals the one merged by ``job.tasks=1``."""

from __future__ import annotations

import re
import subprocess
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tests.conftest import run_cli

pytestmark = [pytest.mark.integration, pytest.mark.slurm]

BASE = ["merge=dare_ties", "models=tiny", "logger=none", "job.smoke.enabled=false", "cluster=slurm",
        "cluster.cpus_per_task=1", "cluster.mem_gb=2", "cluster.timeout_min=10"]


def _tensors(folder: Path) -> dict[str, torch.Tensor]:
    out: dict[str, torch.Tensor] = {}
    for shard in sorted(folder.glob("*.safetensors")):
        out.update(load_file(shard))
    return out


def test_tasks_3_is_a_job_array_equal_to_tasks_1(slurm_cluster, tiny_pool, tmp_path: Path) -> None:
    from transformers import AutoModelForCausalLM

    outs = {}
    for n in (1, 3):
        proc = run_cli(*BASE, f"job.tasks={n}", f"output={tmp_path / f'out{n}'}", cwd=tmp_path)
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
        outs[n] = proc.stdout
    assert "job array" not in outs[1]
    array = re.search(r"submitted SLURM job array (\d+) \(3 of 3 parts\)", outs[3])
    assert array, outs[3][-3000:]
    assert "3 of 3 parts already recorded" in outs[3]  # the merge job only assembled
    deadline = time.time() + 60  # slurmdbd records the end of each element shortly after it ends
    while True:
        sacct = subprocess.run(["sacct", "-n", "-X", "-P", "-o", "JobID,State", "-j", array[1]],
                               capture_output=True, text=True).stdout
        if sacct.count("COMPLETED") == 3 or time.time() > deadline:
            break
        time.sleep(1)
    assert sorted(line.split("|")[0] for line in sacct.split()) == [f"{array[1]}_{i}" for i in range(3)], sacct
    assert sacct.count("COMPLETED") == 3, sacct
    one, three = _tensors(tmp_path / "out1"), _tensors(tmp_path / "out3")
    assert one.keys() == three.keys()
    for name, tensor in one.items():
        assert torch.equal(tensor, three[name]), name
    assert len(list((tmp_path / "out3").glob("*.safetensors"))) == 3
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "out3")
    assert sum(p.numel() for p in model.parameters()) > 0


def test_a_cancelled_element_fails_the_run_and_only_its_part_is_redone(slurm_cluster, tiny_pool, tmp_path: Path) -> None:
    """One element at a time (array_parallelism=1): the third element is still pending when the
    array is announced, and is cancelled then; the run fails naming that part and its state, and
    the same command again submits only that part."""
    import os
    import sys

    args = [*BASE, "job.tasks=3", "cluster.array_parallelism=1", f"output={tmp_path / 'out'}"]
    proc = subprocess.Popen([sys.executable, "-m", "hpc_merge", *args], cwd=tmp_path, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=dict(os.environ))
    lines = []
    for line in proc.stdout:
        lines.append(line)
        if m := re.search(r"submitted SLURM job array (\d+) \(3 of 3 parts\)", line):
            subprocess.run(["scancel", f"{m[1]}_2"], check=True)
            break
    out, err = proc.communicate(timeout=600)
    assert m, "".join(lines) + out + err
    assert proc.returncode == 1, "".join(lines) + out + err
    assert "part-00003-of-00003" in err and "CANCELLED" in err and "1 of 3 parts failed" in err, err
    assert not (tmp_path / "out").exists()
    again = run_cli(*args, cwd=tmp_path)
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    assert re.search(r"submitted SLURM job array \d+ \(1 of 3 parts\)", again.stdout), again.stdout[-3000:]
    assert len(list((tmp_path / "out").glob("*.safetensors"))) == 3


def test_no_wait_submits_the_array_and_a_merge_job_that_waits_for_it(slurm_cluster, tiny_pool, tmp_path: Path) -> None:
    """``cluster.wait=false``: the CLI returns after submitting the array and the merge job, which
    SLURM holds by ``afterok`` until every element has COMPLETED; it then assembles the model."""
    import os

    proc = run_cli(*BASE, "job.tasks=3", "cluster.wait=false", f"output={tmp_path / 'out'}", cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    array = re.search(r"submitted SLURM job array (\d+) \(3 of 3 parts\)", proc.stdout)
    merge = re.search(r"submitted SLURM job (\d+) \(merge\)", proc.stdout)
    assert array and merge and "not waiting" in proc.stdout, proc.stdout[-3000:]
    script = next(Path(os.environ["HPC_MERGE_LOGS"]).rglob(f"{merge[1]}_submission.sh")).read_text()
    assert f"#SBATCH --dependency=afterok:{array[1]}\n" in script and "#SBATCH --kill-on-invalid-dep=yes\n" in script
    deadline = time.time() + 600
    while True:  # the merge job's end, as accounting records it
        rows = subprocess.run(["sacct", "-n", "-X", "-P", "-o", "JobID,State,Start,End", "-j", f"{array[1]},{merge[1]}"],
                              capture_output=True, text=True).stdout.split()
        states = {r.split("|")[0]: r.split("|")[1:] for r in rows}
        if states.get(merge[1], ["PENDING"])[0] not in ("PENDING", "RUNNING", "COMPLETING") or time.time() > deadline:
            break
        time.sleep(1)
    assert states[merge[1]][0] == "COMPLETED", states
    elements = [v for k, v in states.items() if k.startswith(f"{array[1]}_")]
    assert len(elements) == 3 and all(v[0] == "COMPLETED" for v in elements), states
    assert states[merge[1]][1] >= max(v[2] for v in elements), states  # started once every part had ended
    assert len(list((tmp_path / "out").glob("*.safetensors"))) == 3
