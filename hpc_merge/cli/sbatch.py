"""``hpc-merge sbatch +experiment=X cluster=P > job.sbatch``: a ready sbatch script for users who
submit with ``sbatch`` themselves, its resources written once (in the cluster profile).

The templates in ``slurm_templates/`` are usable as is; rendering replaces their resource lines
with the profile's, their setup block with the profile's setup and environment, and bakes the
overrides into the command, so ``sbatch job.sbatch`` needs no arguments.
"""

from __future__ import annotations

import shlex
import sys
from pathlib import Path
from typing import Any

from hpc_merge.cluster.executor import check_cluster, setup_lines
from hpc_merge.errors import ConfigError

KINDS = ("merge", "moe", "evolve")
SETUP_BEGIN, SETUP_END = "# >>> setup", "# <<< setup"
#: sbatch options that describe resources: taken from the profile only (null -> left to SLURM)
RESOURCE_OPTIONS = ("job-name", "partition", "account", "qos", "constraint", "nodes", "ntasks-per-node",
                    "gpus-per-node", "cpus-per-task", "mem", "time")
USAGE = """usage: hpc-merge sbatch [OVERRIDE ...] > job.sbatch

Render slurm_templates/<job.kind>.sbatch with the cluster profile's resources, e.g.
  hpc-merge sbatch +experiment=stem_focused cluster=slurm_a100 cluster.account=myproj > job.sbatch
  sbatch job.sbatch
"""


def templates_dir() -> Path:
    """``slurm_templates/`` packaged beside the code, else the checkout's."""
    here = Path(__file__).resolve().parents[1]  # the hpc_merge package
    for candidate in (here / "slurm_templates", here.parent / "slurm_templates"):
        if candidate.is_dir():
            return candidate
    raise FileNotFoundError("slurm_templates/ not found beside hpc_merge")


def format_time(minutes: float) -> str:
    """SLURM's ``[D-]HH:MM:SS`` for a limit in minutes."""
    seconds = int(round(float(minutes) * 60))
    days, rest = divmod(seconds, 86400)
    text = f"{rest // 3600:02d}:{rest % 3600 // 60:02d}:{rest % 60:02d}"
    return f"{days}-{text}" if days else text


def resource_options(kind: str, cluster: dict[str, Any]) -> dict[str, Any]:
    """``{sbatch option: value}`` for the profile's resources (``True``: a flag without value)."""
    mem_gb = cluster.get("mem_gb")
    values = {
        "job-name": f"hpc-merge-{kind}",
        "partition": cluster.get("partition"),
        "account": cluster.get("account"),
        "qos": cluster.get("qos"),
        "constraint": cluster.get("constraint"),
        "nodes": cluster.get("nodes"),
        "ntasks-per-node": cluster.get("tasks_per_node"),
        "gpus-per-node": cluster.get("gpus_per_node") or None,
        "cpus-per-task": cluster.get("cpus_per_task"),
        "mem": None if mem_gb is None else f"{int(mem_gb) if float(mem_gb).is_integer() else mem_gb}G",
        "time": None if cluster.get("timeout_min") is None else format_time(cluster["timeout_min"]),
    }
    return {key: value for key, value in values.items() if value is not None}


def sbatch_line(option: str, value: Any) -> str:
    """One ``#SBATCH`` line (``True``: a bare flag)."""
    if value is True:
        return f"#SBATCH --{option}"
    return f"#SBATCH --{option}={shlex.quote(str(value))}"


def _template_options(lines: list[str]) -> dict[str, Any]:
    """The ``#SBATCH --opt[=value]`` lines of a template, in order."""
    options: dict[str, Any] = {}
    for line in lines:
        if line.startswith("#SBATCH --"):
            option, sep, value = line.removeprefix("#SBATCH --").partition("=")
            options[option.strip()] = value.strip() if sep else True
    return options


def job_arguments(kind: str, overrides: list[str]) -> list[str]:
    """What the job runs with: ``job=<kind>`` then the overrides, minus those that only matter at
    submission (``cluster...``: inside the allocation the job runs in place) or fix the kind."""
    kept = [o for o in overrides
            if not o.lstrip("+~").startswith(("cluster=", "cluster.", "job=", "hydra/launcher="))]
    return [f"job={kind}", *kept]


def render(kind: str, cluster: dict[str, Any], overrides: list[str]) -> str:
    """The ``kind`` template with ``cluster``'s resources and setup, running ``overrides``."""
    if kind not in KINDS:
        raise ConfigError("job.kind", f"no sbatch template for job kind {kind!r}", f"use one of {', '.join(KINDS)}")
    check_cluster(cluster)
    lines = (templates_dir() / f"{kind}.sbatch").read_text().splitlines()
    options = resource_options(kind, cluster)
    for option, value in _template_options(lines).items():
        if option in RESOURCE_OPTIONS:
            continue
        if option == "signal" and isinstance(value, str) and "@" in value and cluster.get("signal_delay_s"):
            value = f"{value.rpartition('@')[0]}@{int(cluster['signal_delay_s'])}"
        options[option] = value
    for option, value in (cluster.get("additional_parameters") or {}).items():
        if value is not None and value is not False:
            options[str(option).replace("_", "-")] = value
    out: list[str] = []
    in_setup = header_done = False
    for number, line in enumerate(lines):
        if number == 1:
            out.append(f"# rendered by: hpc-merge sbatch {shlex.join(overrides)}".rstrip())
        if line.startswith("#SBATCH"):
            if not header_done:
                out += [sbatch_line(k, v) for k, v in options.items()]
                header_done = True
        elif line.startswith(SETUP_BEGIN):
            in_setup = True
            out += [line, *setup_lines(cluster)]
        elif line.startswith(SETUP_END):
            in_setup = False
            out.append(line)
        elif in_setup:
            continue
        elif line.startswith("ARGS=("):
            out.append(f"ARGS=({shlex.join(job_arguments(kind, overrides))})")
        else:
            out.append(line)
    return "\n".join(out) + "\n"


def main(argv: list[str]) -> int:
    """Compose the config from ``argv`` overrides and print the rendered script to stdout."""
    if any(a in ("-h", "--help") for a in argv):
        print(USAGE, end="")
        return 0
    from omegaconf import OmegaConf

    from hpc_merge.config import compose

    try:
        cfg = compose(argv)
    except Exception as exc:  # Hydra's composition errors: a bad override or an unknown preset
        print(f"error: {str(exc).strip().splitlines()[0]}", file=sys.stderr)
        return 2
    cluster = OmegaConf.to_container(cfg.cluster, resolve=True)
    assert isinstance(cluster, dict)
    if cluster.get("kind") != "slurm":
        print("note: cluster is not a SLURM profile; resources come from it anyway "
              "(pass cluster=slurm or cluster=slurm_a100)", file=sys.stderr)
    try:
        sys.stdout.write(render(str(cfg.job.kind), cluster, list(argv)))
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0
