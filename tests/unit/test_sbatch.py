"""Rendered sbatch scripts: golden files, and the rules that make them safe to submit."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from hpc_merge.cli.sbatch import format_time, job_arguments, main, render, templates_dir
from hpc_merge.config import compose
from hpc_merge.errors import ConfigError

GOLDEN = Path(__file__).resolve().parent.parent / "golden"
# (golden file, job kind, cluster overrides, overrides given to `hpc-merge sbatch`)
CASES = [
    ("merge_slurm_a100.sbatch", "merge", ["cluster=slurm_a100", "cluster.account=myproj"],
     ["+experiment=stem_focused", "cluster=slurm_a100", "cluster.account=myproj", "merge.dtype=float16"]),
    ("moe_slurm.sbatch", "moe", ["cluster=slurm"], ["+experiment=moe_demo", "cluster=slurm"]),
    ("evolve_slurm_a100.sbatch", "evolve",
     ["cluster=slurm_a100", "cluster.partition=a100", "cluster.qos=long", "cluster.timeout_min=2880",
      "+cluster.additional_parameters.mail-type=END"],
     ["+experiment=evolve_stem", "models=tiny", "cluster=slurm_a100", "cluster.qos=long"]),
]


def _cluster(overrides: list[str]) -> dict:
    return OmegaConf.to_container(compose(overrides).cluster, resolve=True)


@pytest.mark.parametrize(("golden", "kind", "cluster_overrides", "overrides"), CASES,
                         ids=[c[0] for c in CASES])
def test_render_matches_golden(golden: str, kind: str, cluster_overrides: list[str],
                               overrides: list[str]) -> None:
    text = render(kind, _cluster(cluster_overrides), overrides)
    path = GOLDEN / golden
    if os.environ.get("UPDATE_GOLDEN") == "1":
        path.write_text(text)
    assert text == path.read_text(), f"{golden} changed; regenerate with UPDATE_GOLDEN=1 and review the diff"


@pytest.mark.parametrize("golden", [c[0] for c in CASES])
def test_rendered_scripts_are_valid_bash(golden: str) -> None:
    assert subprocess.run(["bash", "-n", str(GOLDEN / golden)], capture_output=True).returncode == 0


@pytest.mark.parametrize("kind", ["merge", "moe", "evolve"])
def test_templates_as_is_are_valid_bash_with_sbatch_headers(kind: str) -> None:
    path = templates_dir() / f"{kind}.sbatch"
    text = path.read_text()
    assert subprocess.run(["bash", "-n", str(path)], capture_output=True).returncode == 0
    assert f"ARGS=(job={kind})" in text and '"$@"' in text and "#SBATCH --time=" in text


def test_cli_renders_the_composed_profile(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["+experiment=stem_focused", "cluster=slurm_a100", "cluster.account=myproj",
                 "merge.dtype=float16"]) == 0
    assert capsys.readouterr().out == (GOLDEN / "merge_slurm_a100.sbatch").read_text()


def test_cli_unknown_preset_is_one_line_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["+experiment=no_such_preset"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "no_such_preset" in err


def test_job_runs_in_place_not_resubmitted() -> None:
    args = job_arguments("merge", ["+experiment=x", "cluster=slurm_a100", "cluster.mem_gb=10", "job=moe",
                                   "job.smoke.enabled=false", "hydra/launcher=submitit_slurm"])
    assert args == ["job=merge", "+experiment=x", "job.smoke.enabled=false"]


def test_null_resources_are_left_to_slurm_and_signal_follows_profile() -> None:
    cluster = _cluster(["cluster=local", "cluster.signal_delay_s=120"])  # cpus/mem null there
    text = render("evolve", cluster, [])
    assert "--mem=" not in text and "--cpus-per-task" not in text and "--gpus-per-node" not in text
    assert "#SBATCH --signal=B:USR1@120" in text and "#SBATCH --requeue" in text


def test_values_are_shell_quoted() -> None:
    cluster = _cluster(["cluster=slurm", "cluster.constraint='a100&ib'"])
    text = render("merge", cluster, ["name=it's"])
    assert "#SBATCH --constraint='a100&ib'" in text
    assert "ARGS=(job=merge 'name=it'\"'\"'s')" in text


def test_unknown_cluster_field_is_refused() -> None:
    with pytest.raises(ConfigError, match=r"cluster\.memgb.*did you mean 'mem_gb'"):
        render("merge", {"kind": "slurm", "memgb": 4}, [])


@pytest.mark.parametrize(("minutes", "text"), [(1, "00:01:00"), (90, "01:30:00"), (1440, "1-00:00:00"),
                                                (2.5, "00:02:30"), (2 * 1440 + 61, "2-01:01:00")])
def test_format_time(minutes: float, text: str) -> None:
    assert format_time(minutes) == text
