"""The typed shape of every config group except the merge recipe (that is mergekit's own schema).

Each dataclass is what OmegaConf checks a group against: a field's type refuses a value of the
wrong kind (``cluster.timeout_min=abc``), a key that is not a field is refused (struct mode), and
a default given here is the one default of that field (YAML presets only set what they change).
Value ranges and cross-field rules are not types: :mod:`hpc_merge.schema.bounds` checks them.
The ``job`` group's shape depends on its kind: :mod:`hpc_merge.schema.jobs`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

# ---------------------------------------------------------------------------------- cluster, logger, eval

@dataclass
class Cluster:
    """A cluster profile: where the job runs and the resources it asks SLURM for.

    Every profile (``conf/cluster/*.yaml``) has these fields, so any of them can be overridden on
    the command line without '+' (``cluster=slurm cluster.mem_gb=64``).
    """

    kind: str = "local"  # local (this process) | slurm
    wait: bool = True  # slurm: wait for the job, streaming its state and log tail; false: print its id, return
    partition: str | None = None  # --partition; None: the cluster's default partition
    account: str | None = None  # --account
    qos: str | None = None  # --qos
    constraint: str | None = None  # --constraint (node features, e.g. a100)
    nodes: int = 1
    tasks_per_node: int = 1
    gpus_per_node: int = 0
    cpus_per_task: int | None = None  # None: the scheduler's default
    mem_gb: int | None = None  # None: the scheduler's default (DefMemPerCPU)
    timeout_min: int = 60
    signal_delay_s: int = 90  # USR2 this long before the time limit: the job checkpoints and is requeued
    array_parallelism: int = 16  # evolution arrays: how many candidates run at once
    setup: list[str] = field(default_factory=list)  # shell lines run before the job, e.g. "module load cuda/12.1"
    # free-form mappings (``+cluster.env.NAME=value`` adds a key): typed Any, their shape is a bound
    # other sbatch options: a mapping option -> value, e.g. {mail-type: END, exclusive: true}
    additional_parameters: Any = None
    # environment of the job, a mapping NAME -> value; compute nodes are often offline: fetch models
    # first (hpc-merge fetch)
    env: Any = field(default_factory=lambda: {"HF_HUB_OFFLINE": "1"})
    hf_home: str | None = None  # Hugging Face cache the job uses (HF_HOME); None: inherit
    gpu_options: Any = field(default_factory=dict)  # job.options applied on a GPU node, e.g. {multi_gpu: true}


@dataclass
class Logger:
    """Where metrics go: ``kind: none`` or W&B (offline by default)."""

    kind: str = "none"  # none | wandb
    mode: str = "offline"  # offline (no network needed) | online (needs WANDB_API_KEY) | disabled
    project: str = "hpc_merge"
    entity: str | None = None
    dir: str | None = None  # None: the run dir
    tags: list[str] = field(default_factory=list)


@dataclass
class Eval:
    """Quality checks of the output model (and of base/sources) on task specs: report.json /
    report.md / report.png in the run dir, logged to W&B."""

    enabled: bool = False
    # specs: zoo | zoo:<task> | path/to/file.jsonl | lmeval:<task or yaml> | lmeval:zoo:<task>
    tasks: list[str] = field(default_factory=lambda: ["zoo"])
    split: str = "test"  # train | validation | test (a user JSONL file has one split used for all)
    limit: int | None = None  # at most this many examples per task (None = all)
    batch_size: int = 32
    size: str = "full"  # zoo split sizes for `zoo` specs: full | test

# ---------------------------------------------------------------------------------- moe, evolve recipes

@dataclass
class MoeRecipe:
    """A mergekit-moe recipe plus our keys (``output_arch``, ``shared_expert_gate``...).

    Experts stay untyped entries: mergekit-moe accepts a bare model reference as well as a mapping,
    and :func:`hpc_merge.moe.recipe.validate_recipe` checks each entry's keys with the field named.
    """

    name: str | None = None
    base_model: str | None = None
    # hidden (router fitted to the prompts) | hidden_mergekit | hidden_avg | cheap_embed | random | uniform_random
    gate_mode: str = "hidden"
    dtype: str | None = None
    experts_per_token: int = 2
    output_arch: str = "auto"  # auto | mixtral | qwen2_moe | qwen3_moe
    architecture: str | None = None
    experts: list[Any] = field(default_factory=list)
    shared_experts: list[Any] | None = None
    shared_expert_gate: str = "prompts"
    allow_identical_experts: bool = False


@dataclass
class Fitness:
    """What a candidate is scored on (search split) and reported on (held-out test split)."""

    tasks: list[str] = field(default_factory=lambda: ["zoo"])  # evaluator task specs (see Eval.tasks)
    weights: dict[str, float] = field(default_factory=dict)  # task -> weight; empty = equal weights summing to 1
    metric: Any = "accuracy"  # accuracy | loglik | a mapping metric -> weight
    split: str = "validation"  # what the search optimises
    test_split: str = "test"  # held out: the best candidate and the baseline are reported on it
    limit: int | None = None  # examples per task per candidate (None = the whole split)
    size: str = "full"  # zoo size (full | test)
    batch_size: int = 32


@dataclass
class Budget:
    """When the search stops (whichever comes first)."""

    max_evaluations: int | None = None  # required: distinct candidates scored (never exceeded)
    max_generations: int | None = None
    max_time_s: float | None = None  # wall-time budget over all sessions (makes results timing-dependent)


@dataclass
class Dfs:
    """Data-flow space (``evolve.space: dfs | ps+dfs``); see :mod:`hpc_merge.evolve.dfs`."""

    models: list[str] | None = None  # DFS source models; None = evolve.models (ps+dfs: the PS best is added first)
    repeats: int = 2  # the models' layers are scanned this many times (repeats allowed)
    max_layers: int | None = None  # at most this many layers on a path; None = twice a model's layers
    scale_bounds: list[float] = field(default_factory=lambda: [0.5, 1.5])  # input scale at a switch of model
    io_model: str | None = None  # embeddings, final norm, head; None = the first source (ps+dfs: the PS best)
    start_model: str | None = None  # the search starts from every layer of this model; None = io_model
    ps_run: str | None = None  # ps+dfs: run dir of a finished space=ps run; None = search PS first in this run
    population: int | None = None  # CMA-ES settings of the DFS search; None = evolve's
    sigma0: float | None = None
    budget: Budget | None = field(default_factory=Budget)  # a None field = evolve.budget's


@dataclass
class Evolve:
    """The evolution recipe: search space, fitness, CMA-ES settings, budget and launcher."""

    name: str = "evolved"
    method: str | None = None  # linear task_arithmetic ties dare_ties dare_linear slerp della breadcrumbs
    base_model: str | None = None
    models: list[str] = field(default_factory=list)
    parameters: dict[str, Any] | None = None  # searched parameter -> [low, high] (None: the method's default)
    # model | layer (gradients of layer_groups values) | filter (self_attn/mlp/rest) | filter_layer
    granularity: str = "model"
    layer_groups: int = 1
    fixed: dict[str, Any] = field(default_factory=dict)  # method parameters held fixed
    dtype: str | None = None
    out_dtype: str | None = None
    tokenizer_source: str | None = None
    fitness: Fitness = field(default_factory=Fitness)
    population: int = 8
    sigma0: float = 0.25  # in the unit cube every gene is scaled to
    seed: int = 0
    # None (centre of the box), "merge" (the hand preset merge=..., evaluated as is in generation 0)
    # or a recipe of this space
    x0: Any = None
    budget: Budget = field(default_factory=Budget)
    launcher: str = "local"  # local (worker processes) | slurm (one job array per generation; needs cluster=slurm)
    workers: int = 1  # local worker processes, each keeps the source models loaded
    threads_per_worker: int = 1
    candidates_per_job: int | None = None  # slurm: candidates per job; None = one per SLURM task
    gpus_per_candidate: int = 1  # slurm GPU profiles: gpus_per_node / gpus_per_candidate tasks per job, one GPU each
    in_memory: bool = True  # merge in memory; false = run_mergekit to a temp dir + evaluate from disk
    candidate_timeout_s: float | None = None  # local: a candidate running longer fails (worst fitness), search goes on
    baseline: str | None = None  # "merge": also report the `merge` recipe (the hand preset) on the test split
    final_merge: bool = False  # merge the best to <run_dir>/final with smoke test and merge report
    decimals: int = 4
    # ps (parameter space: the weights above) | dfs (data-flow space: a path through the source
    # models' layers) | ps+dfs (the PS best becomes a DFS source model); README "Data-flow space"
    space: str = "ps"
    dfs: Dfs = field(default_factory=Dfs)

# ---------------------------------------------------------------------------------- the whole config

@dataclass
class Root:
    """The composed config. ``job`` is typed by its own group file (its shape depends on the kind);
    ``merge`` is a mergekit recipe, checked against mergekit's method specs instead of a dataclass."""

    name: str = "default"
    run_id: str | None = None
    output: str | None = None
    force: bool = False
    mergekit_yaml: str | None = None
    logs_dir: str = "logs"
    job: Any = None
    models: dict[str, str] = field(default_factory=dict)
    merge: Any = None
    moe: MoeRecipe | None = None
    evolve: Evolve | None = None
    cluster: Cluster = field(default_factory=Cluster)
    logger: Logger = field(default_factory=Logger)
    eval: Eval = field(default_factory=Eval)


#: group -> schema of the groups typed as a whole (``job`` goes by its kind: ``schema.jobs.JOBS``).
GROUPS: dict[str, type] = {"cluster": Cluster, "logger": Logger, "eval": Eval, "moe": MoeRecipe, "evolve": Evolve}
