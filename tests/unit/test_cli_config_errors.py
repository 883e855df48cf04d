"""Through the real CLI: a bad config is one stderr line, exit 2, and no folder of any kind.

Each case is a command line a user could type (or a ``mergekit_yaml=`` file they could pass);
the logs dir must not exist afterwards (Hydra's ``logs/hydra/<date>/<time>/.hydra`` included).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import run_cli

CASES = {
    "density_nan": (["merge=ties", "models=tiny", "merge.models.0.parameters.density=nan"], "merge.models[0].parameters.density"),
    "weight_inf": (["models=tiny", "merge.models.0.parameters.weight=inf"], "merge.models[0].parameters.weight"),
    "method_list": (["models=tiny", "merge.merge_method=[ties]"], "merge.merge_method"),
    "out_dtype": (["models=tiny", "+merge.out_dtype=float8"], "merge.out_dtype"),
    "device": (["models=tiny", "job.options.device=tpu"], "job.options.device"),
    "chunk_size": (["models=tiny", "job.options.chunk_size=''"], "job.options.chunk_size"),
    "timeout_abc": (["cluster.timeout_min=abc"], "cluster.timeout_min"),
    "nodes_zero": (["cluster=slurm", "cluster.nodes=0"], "cluster.nodes"),
    "gpus_negative": (["cluster.gpus_per_node=-1"], "cluster.gpus_per_node"),
    "logger_mode": (["logger.mode=sometimes"], "logger.mode"),
    "unknown_job_key": (["+job.foo=1"], "job.foo"),
    "unknown_eval_key": (["+eval.foo=1"], "eval.foo"),
    "population_abc": (["+experiment=evolve_demo", "evolve.population=abc"], "evolve.population"),
    "population_zero": (["+experiment=evolve_demo", "evolve.population=0"], "evolve.population"),
    "x0_list": (["+experiment=evolve_demo", "evolve.x0=[5,5,5,5]"], "evolve.x0"),
    "x0_word": (["+experiment=evolve_demo", "evolve.x0=center"], "evolve.x0"),
    "fitness_task": (["+experiment=evolve_demo", "evolve.fitness.tasks=[zoo:nope]"], "evolve.fitness.tasks[0]"),
    "fitness_empty": (["+experiment=evolve_demo", "evolve.fitness.tasks=[]"], "evolve.fitness.tasks"),
    "workers_zero": (["+experiment=evolve_demo", "evolve.workers=0"], "evolve.workers"),
    "experts_per_token": (["+experiment=moe_demo", "moe.experts_per_token=abc"], "moe.experts_per_token"),
}


def _yaml_files(tmp: Path) -> dict[str, Path]:
    files = {
        "binary": b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" * 8,
        "utf16": "merge_method: linear\nmodels: []\n".encode("utf-16"),
        "self_ref": b"merge_method: linear\nx: ${x}\n",
        "deep": b"merge_method: " + b"[" * 5000 + b"]" * 5000 + b"\n",
        "huge": b"merge_method: linear\nmodels:\n" + b"".join(b"  - {model: m%d}\n" % i for i in range(50_000)),
    }
    out = {}
    for name, data in files.items():
        out[name] = tmp / f"{name}.yaml"
        out[name].write_bytes(data)
    out["proc_mem"] = Path("/proc/self/mem")
    out["directory"] = tmp
    return out


def _assert_one_line_refusal(proc: subprocess.CompletedProcess, field: str, logs: Path) -> None:
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert len(lines) == 1 and lines[0].startswith(f"error: {field}"), proc.stderr[-2000:]
    assert not logs.exists(), f"a refused config created {sorted(logs.rglob('*'))[:5]}"


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_value_is_one_line_exit_2_and_no_folder(case: str, _logs_dir: Path) -> None:
    args, field = CASES[case]
    _assert_one_line_refusal(run_cli(*args, timeout=120), field, _logs_dir)


@pytest.mark.parametrize("kind", ["binary", "utf16", "self_ref", "deep", "huge", "proc_mem", "directory"])
def test_bad_mergekit_yaml_file_is_one_line(kind: str, tmp_path: Path, _logs_dir: Path) -> None:
    path = _yaml_files(tmp_path)[kind]
    _assert_one_line_refusal(run_cli(f"mergekit_yaml={path}", timeout=120), "mergekit_yaml", _logs_dir)


def test_a_config_error_imports_neither_mergekit_nor_torch() -> None:
    """What makes a config error fast (≤ 2 s): the schema and bound checks need no heavy library."""
    code = ("import sys\nfrom hpc_merge.config import compose\nfrom hpc_merge.app import prepare\n"
            "from hpc_merge.errors import ConfigError\n"
            "cfg = compose(['merge=ties', 'models=tiny', 'merge.models.0.parameters.density=nan'])\n"
            "try:\n    prepare(cfg)\nexcept ConfigError as e:\n    print(e.field)\n"
            "print(sorted(m for m in ('mergekit', 'torch', 'transformers') if m in sys.modules))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.stdout.split("\n")[:2] == ["merge.models[0].parameters.density", "[]"], out.stdout + out.stderr


def test_cfg_job_shows_the_typed_schema_and_refuses_in_one_line(_logs_dir: Path) -> None:
    shown = run_cli("--cfg", "job", "+experiment=evolve_demo", timeout=120)
    assert shown.returncode == 0, shown.stderr[-2000:]
    for field in ("allow_crimes: false", "population: 8", "timeout_min: 60", "mode: offline", "max_evaluations: 96"):
        assert field in shown.stdout
    _assert_one_line_refusal(run_cli("--cfg", "job", "cluster.timeout_min=abc", timeout=120), "cluster.timeout_min",
                             _logs_dir)
