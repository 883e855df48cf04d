"""A merge split by output tensor (``job.tasks=N``) gives the same tensors as one merge.

Every one of mergekit's 20 methods is merged whole and as 3 parts (each part a real restricted
mergekit merge, then assembled) and compared tensor for tensor; the job path runs the parts as 3
real local processes, loads the result in transformers, and a re-run after a lost part redoes
only that part.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from bench.methods import method_recipe
from hpc_merge import mergekit_adapter as mk
from hpc_merge.errors import ConfigError
from hpc_merge.split import balance, check_tasks, fingerprint, merge_split, plan_parts
from hpc_merge.split.assemble import INDEX, assemble
from hpc_merge.split.part import RECORD, run_part, valid_record
from tests.conftest import run_cli

METHODS = ("linear", "task_arithmetic", "ties", "dare_ties", "dare_linear", "breadcrumbs", "breadcrumbs_ties",
           "della", "della_linear", "slerp", "nuslerp", "multislerp", "karcher", "model_stock", "arcee_fusion",
           "ram", "ramplus_tl", "nearswap", "passthrough", "sce")
OPTIONS = {"device": "cpu", "random_seed": 7, "chunk_size": "4K"}


def _tensors(folder: Path) -> dict[str, torch.Tensor]:
    out: dict[str, torch.Tensor] = {}
    for shard in sorted(folder.glob("*.safetensors")):
        out.update(load_file(shard))
    return out


def _assert_equal(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for name, tensor in a.items():
        assert b[name].dtype == tensor.dtype, name
        assert torch.equal(b[name], tensor), name


def test_balance_is_deterministic_complete_and_balanced() -> None:
    tensors = [(f"t{i}", size) for i, size in enumerate([100, 5, 5, 90, 10, 1, 80, 3])]
    parts = balance(tensors, 3)
    assert parts == balance(tensors, 3)
    names = [n for p in parts for n in p.names]
    assert sorted(names) == sorted(n for n, _ in tensors)
    assert all(p.names for p in parts)
    loads = sorted(p.read_bytes for p in parts)
    assert loads[-1] - loads[0] <= 100  # no part heavier than the lightest by more than the largest tensor
    assert [p.label for p in parts] == [f"part-0000{i}-of-00003" for i in (1, 2, 3)]
    for p in parts:  # planned order kept within a part
        assert list(p.names) == sorted(p.names, key=lambda n: int(n[1:]))


@pytest.mark.parametrize("tasks,n,needle", [(0, 4, "at least 1"), (5, 4, "4 output tensors")])
def test_bad_task_counts_are_one_line(tasks: int, n: int, needle: str) -> None:
    with pytest.raises(ConfigError) as err:
        check_tasks(tasks, n)
    assert str(err.value).startswith("job.tasks: ") and needle in str(err.value) and "\n" not in str(err.value)


@pytest.mark.parametrize("method", METHODS)
def test_three_parts_equal_one_merge(method: str, tiny_pool, tmp_path: Path) -> None:
    recipe = method_recipe(method, [tiny_pool["base"], tiny_pool["math"], tiny_pool["coder"]])
    mk.run_mergekit(recipe, tmp_path / "one", OPTIONS)
    parts = plan_parts(recipe, OPTIONS, 3)
    for part in parts:
        run_part(recipe, OPTIONS, part, tmp_path / "parts", fingerprint(recipe, OPTIONS, part))
    (tmp_path / "three").mkdir()
    weight_map = assemble(parts, tmp_path / "parts", tmp_path / "three")
    _assert_equal(_tensors(tmp_path / "one"), _tensors(tmp_path / "three"))
    index = json.loads((tmp_path / "three" / INDEX).read_text())
    assert index["weight_map"] == weight_map and len({*weight_map.values()}) >= 3
    assert index["metadata"]["total_size"] == sum(t.numel() * t.element_size()
                                                  for t in _tensors(tmp_path / "three").values())


def test_a_changed_part_is_not_reused(tiny_pool, tmp_path: Path) -> None:
    recipe = method_recipe("linear", [tiny_pool["base"], tiny_pool["math"], tiny_pool["coder"]])
    part = plan_parts(recipe, OPTIONS, 2)[0]
    fp = fingerprint(recipe, OPTIONS, part)
    folder = run_part(recipe, OPTIONS, part, tmp_path, fp)
    assert valid_record(tmp_path, part, fp) is not None
    assert valid_record(tmp_path, part, fingerprint(recipe, {**OPTIONS, "random_seed": 8}, part)) is None
    shard = next(folder.glob("*.safetensors"))
    data = bytearray(shard.read_bytes())
    data[-1] ^= 1
    shard.write_bytes(bytes(data))
    assert valid_record(tmp_path, part, fp) is None  # checksum no longer matches


def test_local_processes_rerun_only_the_missing_part(tiny_pool, tmp_path: Path) -> None:
    recipe = method_recipe("dare_ties", [tiny_pool["base"], tiny_pool["math"], tiny_pool["coder"]])
    mk.run_mergekit(recipe, tmp_path / "one", OPTIONS)
    (tmp_path / "three").mkdir()
    first = merge_split(recipe, OPTIONS, 3, tmp_path / "parts", tmp_path / "three")
    assert first["ran"] == [f"part-0000{i}-of-00003" for i in (1, 2, 3)] and first["reused"] == []
    _assert_equal(_tensors(tmp_path / "one"), _tensors(tmp_path / "three"))
    (tmp_path / "parts" / "part-00002-of-00003" / RECORD).unlink()  # as if that task had been killed
    (tmp_path / "again").mkdir()
    second = merge_split(recipe, OPTIONS, 3, tmp_path / "parts", tmp_path / "again")
    assert second["ran"] == ["part-00002-of-00003"]
    assert second["reused"] == ["part-00001-of-00003", "part-00003-of-00003"]
    _assert_equal(_tensors(tmp_path / "one"), _tensors(tmp_path / "again"))


def test_job_tasks_3_cli_equals_tasks_1_and_loads(tmp_path: Path) -> None:
    import transformers

    base = ["merge=ties", "models=tiny", "logger=none", "job.smoke.enabled=false", f"logs_dir={tmp_path / 'logs'}"]
    dry = run_cli(*base, "job.tasks=3", "job.dry_run=true")
    assert dry.returncode == 0, dry.stderr
    assert "3 tasks" in dry.stdout and "task 3:" in dry.stdout and " read" in dry.stdout
    assert "runs as 3 local processes" in dry.stdout
    too_many = run_cli(*base, "job.tasks=100000")
    assert too_many.returncode == 2 and too_many.stderr.strip().startswith("error: job.tasks:")
    assert not (tmp_path / "logs").exists() or not any((tmp_path / "logs").rglob("config.yaml"))
    outs = {}
    for n in (1, 3):
        res = run_cli(*base, f"job.tasks={n}", f"output={tmp_path / f'out{n}'}")
        assert res.returncode == 0, res.stderr[-2000:]
        outs[n] = tmp_path / f"out{n}"
    _assert_equal(_tensors(outs[1]), _tensors(outs[3]))
    assert len(list(outs[3].glob("*.safetensors"))) == 3
    assert not any((tmp_path / "logs").rglob("part-00001-of-00003"))  # parts removed once the model is in place
    [result] = [json.loads(p.read_text()) for p in (tmp_path / "logs").rglob("result.json")
                if json.loads(p.read_text()).get("metrics", {}).get("split")]
    timing = result["metrics"]["split"]["final"]  # where the parts' time went: start-up, then merging
    assert timing["parts"] == 3 and timing["ran"] == 3 and 0 < timing["worker_start_s"] < result["timings"]["merge_s"]
    assert 0 < timing["parts_merge_s"] < result["timings"]["merge_s"]
    model = transformers.AutoModelForCausalLM.from_pretrained(outs[3])
    assert sum(p.numel() for p in model.parameters()) > 0


def test_progress_is_one_run_with_a_row_per_part(tiny_pool, tmp_path: Path) -> None:
    """status fields folded from the parts' own reports: tensors and bytes over all parts, a row each."""
    from hpc_merge.split.progress import read_part_progress

    recipe = method_recipe("ties", [tiny_pool["base"], tiny_pool["math"], tiny_pool["coder"]])
    seen: list[dict] = []
    (tmp_path / "out").mkdir()
    merge_split(recipe, OPTIONS, 3, tmp_path / "parts", tmp_path / "out", progress=seen.append)
    first, last = seen[0], seen[-1]
    assert first["parts_done"] == 0 and first["tasks_done"] == 0 and first["parts_total"] == 3
    assert [r["state"] for r in first["parts"]] == ["waiting"] * 3
    assert last["parts_done"] == 3 and last["tasks_done"] == last["tasks_total"] == len(_tensors(tmp_path / "out"))
    assert last["bytes_read"] == last["read_bytes_total"] > 0
    assert [r["state"] for r in last["parts"]] == ["done"] * 3
    for row in last["parts"]:
        report = read_part_progress(tmp_path / "parts", row["part"])
        assert report["state"] == "done" and report["pid"] != os.getpid()  # written by the worker process


def test_a_recorded_part_is_not_merged_again(tiny_pool, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """An array element that SLURM requeues after its part was recorded ends at once (idempotent)."""
    recipe = method_recipe("linear", [tiny_pool["base"], tiny_pool["math"], tiny_pool["coder"]])
    part = plan_parts(recipe, OPTIONS, 2)[1]
    fp = fingerprint(recipe, OPTIONS, part)
    folder = run_part(recipe, OPTIONS, part, tmp_path, fp)
    before = {f.name: f.stat().st_ino for f in folder.iterdir()}
    assert run_part(recipe, OPTIONS, part, tmp_path, fp) == folder
    assert {f.name: f.stat().st_ino for f in folder.iterdir()} == before
    assert "already recorded" in capsys.readouterr().out


def test_no_wait_merge_job_waits_for_the_array_by_afterok() -> None:
    from hpc_merge.cluster.executor import executor_parameters
    from hpc_merge.split.slurm import after_array

    cluster = {"kind": "slurm", "additional_parameters": {"mail-type": "END"}}
    params = executor_parameters(after_array(cluster, ["41", "42"]), "merge-x")["slurm_additional_parameters"]
    assert params == {"mail-type": "END", "dependency": "afterok:41:42", "kill_on_invalid_dep": "yes"}
    assert cluster["additional_parameters"] == {"mail-type": "END"}  # the profile itself is left alone


def test_job_tasks_on_a_moe_build_is_refused_in_one_line(tmp_path: Path) -> None:
    res = run_cli("job=moe", "job.tasks=2", "job.dry_run=true", f"logs_dir={tmp_path / 'logs'}")
    assert res.returncode == 2, res.stdout + res.stderr
    line = res.stderr.strip()
    assert line.startswith("error: job.tasks:") and "MoE" in line and "job.tasks=1" in line and "\n" not in line
    assert not (tmp_path / "logs").exists()


def test_fold_gives_total_bytes_eta_and_the_monitor_line(tmp_path: Path) -> None:
    """Half of part 1's bytes read in 10 s, part 2 waiting, part 3 recorded by an earlier try."""
    from hpc_merge.monitor.view import parts_text
    from hpc_merge.split.progress import fold, write_part_progress

    parts = balance([("a", 400), ("b", 400), ("c", 200)], 3)
    t0 = 1000.0
    write_part_progress(tmp_path, parts[0], "merging", started_at=t0 + 1, tensors_done=0, tensors_total=1, read_frac=0.5)
    write_part_progress(tmp_path, parts[1], "merging", started_at=t0 - 500, tensors_done=1)  # a report of an earlier try
    got = fold(parts, tmp_path, {parts[2].label}, started_at=t0, now=t0 + 10)
    assert [r["state"] for r in got["parts"]] == ["merging", "waiting", "recorded"]
    assert got["bytes_read"] == 200 + 200 and got["read_bytes_total"] == 1000
    assert got["tasks_done"] == 1 and got["tasks_total"] == 3 and got["parts_done"] == 1
    assert got["throughput_mb_s"] == pytest.approx(200 / 10 / 1e6)
    assert got["eta_s"] == pytest.approx((200 + 400) / (200 / 10))  # what the running try still reads, at its rate
    assert parts_text(got) == "parts: 1 merging, 1 waiting, 1 recorded (1: 0%)"
