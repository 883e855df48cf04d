"""The plan of each job kind as a type: what ``validate(cfg)`` returns and ``describe``/``run`` read.

A plan is made on the login node and read in the job process, often on another machine: it is
pickled with the job (submitit), and parts of it are written to JSON files. So plans stay plain
dicts at run time, and :class:`typing.TypedDict` is the right tool: it names every key and its type
for readers and type checkers, costs nothing at run time (a TypedDict *is* a ``dict``) and changes
nothing that is pickled or serialised. A dataclass would change what crosses the process boundary.

Every key the validate functions return is listed; a key that is sometimes absent is optional
(only the merge estimate's, which is empty before any input exists). The types these plans hold
(search spaces, settings, task plans) are imported for type checkers only, so importing this module
pulls in no job or library code (``typing.get_type_hints`` on them needs those imports first).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, TypedDict, TypeVar

if TYPE_CHECKING:
    from hpc_merge.cluster.spread import TaskPlan
    from hpc_merge.evolve.dfs import DfsSpace
    from hpc_merge.evolve.fitness import FitnessSpec
    from hpc_merge.evolve.search import SearchSettings
    from hpc_merge.evolve.space import SearchSpace
    from hpc_merge.split.plan import Part


class MergeStage(TypedDict):
    """One stage of a merge recipe (a plain recipe is one stage named ``final``)."""

    name: str  #: the stage's name; later stages use it as a model
    field: str  #: where its recipe lives in the config (``merge`` or ``merge.stages[i]``), for errors
    recipe: dict[str, Any]  #: the stage's recipe as written (model references unresolved)
    paths: dict[str, str]  #: ``{model ref: local folder}`` of the inputs that exist now (not earlier stages)


class MergeEstimate(TypedDict, total=False):
    """:func:`hpc_merge.archcheck.estimate` of the last stage; empty when no input exists yet, so
    every key may be absent (``total=False``: ``NotRequired`` on each key, and, unlike ``NotRequired``
    under ``from __future__ import annotations`` on Python 3.11, also right in ``__optional_keys__``)."""

    read_gb: float
    write_gb: float
    peak_ram_gb: float
    read_bytes: int
    write_bytes: int


class MergePlan(TypedDict):
    """:func:`hpc_merge.jobs.merge_plan.validate`'s result, run by :mod:`hpc_merge.jobs.merge`."""

    stages: list[MergeStage]
    findings: list[str]  #: architecture and support notes, shown by the dry run
    estimate: MergeEstimate
    options: dict[str, Any]  #: ``job.options``, checked
    gpu_options: dict[str, Any]  #: the cluster profile's ``gpu_options``, applied where the node has a GPU
    inputs: dict[str, str]  #: ``{model ref: local folder}`` over every stage
    output: str  #: the checked output folder
    split: dict[str, list[Part]]  #: ``{stage: parts}`` of a split merge (``job.tasks > 1``); else empty


class MoeEstimate(TypedDict):
    """:func:`hpc_merge.jobs.moe.estimate`: sizes from the base config, no weight read."""

    params_b: float
    read_gb: float
    write_gb: float
    peak_ram_gb: float


class MoeJobPlan(TypedDict):
    """:func:`hpc_merge.jobs.moe.validate`'s result (named apart from :class:`hpc_merge.moe.plan.MoePlan`,
    the recipe dataclass it carries as a dict)."""

    moe: dict[str, Any]  #: ``MoePlan.to_dict()``; ``MoePlan.from_dict`` rebuilds it in the job
    options: dict[str, Any]  #: ``job.options``, checked
    findings: list[str]
    estimate: MoeEstimate
    output: str | None  #: ``output`` resolved, or None for ``<run_dir>/model``


class EvolvePlan(TypedDict):
    """:func:`hpc_merge.jobs.evolve_plan.validate`'s result, run by :mod:`hpc_merge.jobs.evolve`.

    It holds objects (spaces, settings, fitness), not only JSON values: it travels pickled.
    """

    space: SearchSpace | DfsSpace  #: the space searched last (DFS for ``dfs`` and ``ps+dfs``)
    ps_space: SearchSpace | None  #: the PS space of a ``ps+dfs`` search, else None
    kind: str  #: ``ps``, ``dfs`` or ``ps+dfs``
    ps_settings: SearchSettings | None  #: CMA-ES settings of the PS search of ``ps+dfs``, else None
    ps_recipe: dict[str, Any] | None  #: the best recipe of a finished PS run (``evolve.dfs.ps_run``)
    base: str | None  #: ``evolve.base_model``
    experts: list[str]  #: source models other than the base (the reference rows of the report)
    fitness: FitnessSpec
    settings: SearchSettings  #: CMA-ES settings of ``space``
    paths: dict[str, str]  #: ``{model ref: local folder}``
    donor: str  #: the model ref the tokenizer comes from
    findings: list[str]
    baseline: dict[str, Any] | None  #: the hand recipe scored alongside (``evolve.baseline: merge``)
    launcher: str  #: ``local`` or ``slurm``
    options: dict[str, Any]  #: ``job.options``
    workers: int
    threads: int  #: threads per worker
    in_memory: bool
    timeout_s: float | None  #: per-candidate timeout
    per_job: int  #: candidates per SLURM job
    tasks: TaskPlan | None  #: how a SLURM candidate job spreads its candidates; None for local
    final_merge: bool


#: Any job kind's plan.
Plan = MergePlan | MoeJobPlan | EvolvePlan
#: The plan type of one job kind (:class:`hpc_merge.jobs.skeleton.JobModule` is generic over it).
PlanT = TypeVar("PlanT", MergePlan, MoeJobPlan, EvolvePlan)
