"""The typed shape of every config group except the merge recipe (that is mergekit's own schema).

Each dataclass is what OmegaConf checks a group against: a field's type refuses a value of the
wrong kind (``cluster.timeout_min=abc``), a key that is not a field is refused (struct mode), and
a default given here is the one default of that field (YAML presets only set what they change).
Value ranges and cross-field rules are not types: :mod:`hpc_merge.schema.bounds` checks them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

# ---------------------------------------------------------------------------------- job

@dataclass
class Smoke:
    """The inference smoke test run on every output model."""

    enabled: bool = True
    prompts: list[str] = field(default_factory=list)  # [] = from the pool (see conf/job/merge.yaml)
    max_new_tokens: int = 8
    text: str | None = None  # perplexity text; None = a small built-in text


@dataclass
class Routing:
    """MoE: share of each expert's own positive prompts routed mostly to it (fp32 on CPU)."""

    enabled: bool = True


@dataclass
class MergeOptions:
    """mergekit's MergeOptions plus ours (device auto, sparsify, chunk_size); merge and evolve jobs."""

    device: str = "auto"
    multi_gpu: bool = False
    read_to_gpu: bool = False
    low_cpu_memory: bool = False
    lazy_unpickle: bool = True
    out_shard_size: str | None = "1B"
    chunk_size: str | None = "16M"  # None: 16M; 0: every tensor whole
    num_threads: int | None = None
    sparsify: str = "fast"
    random_seed: int = 0
    allow_crimes: bool = False
    trust_remote_code: bool = False
    safe_serialization: bool = True
    async_write: bool = False
    write_threads: int = 1


@dataclass
class MoeOptions:
    """Options of the MoE build (gate hidden states, seeds, output sharding)."""

    device: str = "auto"
    random_seed: int = 0
    out_shard_size: str | None = "1B"
    safe_serialization: bool = True
    num_threads: int | None = None


@dataclass
class MergeJob:
    """``job=merge``: one mergekit recipe (or several stages) -> a checked, smoke-tested model."""

    kind: str = "merge"
    dry_run: bool = False
    allow_pickle: bool = False  # pickle (.bin) input weights: refused unless true (hpc_merge/models/inputcheck.py)
    tasks: int = 1  # split the merge by output tensor over this many processes (hpc_merge/split/)
    smoke: Smoke = field(default_factory=Smoke)
    options: MergeOptions = field(default_factory=MergeOptions)


@dataclass
class MoeJob:
    """``job=moe``: dense experts -> a Mixture-of-Experts model."""

    kind: str = "moe"
    dry_run: bool = False
    allow_pickle: bool = False  # pickle (.bin) input weights: refused unless true (hpc_merge/models/inputcheck.py)
    smoke: Smoke = field(default_factory=Smoke)
    routing: Routing = field(default_factory=Routing)
    options: MoeOptions = field(default_factory=MoeOptions)


@dataclass
class EvolveJob:
    """``job=evolve``: CMA-ES over merge recipes; ``options`` are used for every candidate merge."""

    kind: str = "evolve"
    dry_run: bool = False
    options: MergeOptions = field(default_factory=MergeOptions)


JOBS: dict[str, type] = {"merge": MergeJob, "moe": MoeJob, "evolve": EvolveJob}

# ---------------------------------------------------------------------------------- cluster, logger, eval

@dataclass
class Cluster:
    """A cluster profile: where the job runs and the resources it asks SLURM for."""

    kind: str = "local"
    wait: bool = True
    partition: str | None = None
    account: str | None = None
    qos: str | None = None
    constraint: str | None = None
    nodes: int = 1
    tasks_per_node: int = 1
    gpus_per_node: int = 0
    cpus_per_task: int | None = None
    mem_gb: int | None = None
    timeout_min: int = 60
    signal_delay_s: int = 90
    array_parallelism: int = 16
    setup: list[str] = field(default_factory=list)
    # free-form mappings (``+cluster.env.NAME=value`` adds a key): typed Any, their shape is a bound
    additional_parameters: Any = None  # other sbatch options: a mapping option -> value
    env: Any = None  # environment of the job, a mapping NAME -> value
    hf_home: str | None = None
    gpu_options: Any = None  # job.options applied on a GPU node, a mapping


@dataclass
class Logger:
    """Where metrics go: ``kind: none`` or W&B (offline by default)."""

    kind: str = "none"
    mode: str = "offline"
    project: str = "hpc_merge"
    entity: str | None = None
    dir: str | None = None
    tags: list[str] = field(default_factory=list)


@dataclass
class Eval:
    """Quality checks of the output model (and of base/sources) on task specs."""

    enabled: bool = False
    tasks: list[str] = field(default_factory=lambda: ["zoo"])
    split: str = "test"
    limit: int | None = None
    batch_size: int = 32
    size: str = "full"

# ---------------------------------------------------------------------------------- moe, evolve recipes

@dataclass
class MoeRecipe:
    """A mergekit-moe recipe plus our keys (``output_arch``, ``shared_expert_gate``...).

    Experts stay untyped entries: mergekit-moe accepts a bare model reference as well as a mapping,
    and :func:`hpc_merge.moe.recipe.validate_recipe` checks each entry's keys with the field named.
    """

    name: str | None = None
    base_model: str | None = None
    gate_mode: str = "hidden"
    dtype: str | None = None
    experts_per_token: int = 2
    output_arch: str = "auto"
    architecture: str | None = None
    experts: list[Any] = field(default_factory=list)
    shared_experts: list[Any] | None = None
    shared_expert_gate: str = "prompts"
    allow_identical_experts: bool = False


@dataclass
class Fitness:
    """What a candidate is scored on (search split) and reported on (held-out test split)."""

    tasks: list[str] = field(default_factory=lambda: ["zoo"])
    weights: dict[str, float] = field(default_factory=dict)
    metric: Any = "accuracy"  # a metric name, or a mapping metric -> weight
    split: str = "validation"
    test_split: str = "test"
    limit: int | None = None
    size: str = "full"
    batch_size: int = 32


@dataclass
class Budget:
    """When the search stops (whichever comes first)."""

    max_evaluations: int | None = None  # required: distinct candidates scored (never exceeded)
    max_generations: int | None = None
    max_time_s: float | None = None


@dataclass
class Dfs:
    """Data-flow space (``evolve.space: dfs | ps+dfs``); see :mod:`hpc_merge.evolve.dfs`."""

    models: list[str] | None = None  # DFS source models; None = evolve.models
    repeats: int = 2
    max_layers: int | None = None  # None = twice a model's layers
    scale_bounds: list[float] = field(default_factory=lambda: [0.5, 1.5])
    io_model: str | None = None
    start_model: str | None = None
    ps_run: str | None = None  # ps+dfs: a finished space=ps run dir
    population: int | None = None  # None = evolve's
    sigma0: float | None = None
    budget: Budget | None = None


@dataclass
class Evolve:
    """The evolution recipe: search space, fitness, CMA-ES settings, budget and launcher."""

    name: str = "evolved"
    method: str | None = None
    base_model: str | None = None
    models: list[str] = field(default_factory=list)
    parameters: dict[str, Any] | None = None  # searched parameter -> [low, high] (None: the method's default)
    granularity: str = "model"
    layer_groups: int = 1
    fixed: dict[str, Any] = field(default_factory=dict)
    dtype: str | None = None
    out_dtype: str | None = None
    tokenizer_source: str | None = None
    fitness: Fitness = field(default_factory=Fitness)
    population: int = 8
    sigma0: float = 0.25
    seed: int = 0
    x0: Any = None  # null (centre), "merge" (the hand recipe) or a recipe of this space
    budget: Budget = field(default_factory=Budget)
    launcher: str = "local"
    workers: int = 1
    threads_per_worker: int = 1
    candidates_per_job: int | None = None
    gpus_per_candidate: int = 1
    in_memory: bool = True
    candidate_timeout_s: float | None = None
    baseline: str | None = None
    final_merge: bool = False
    decimals: int = 4
    space: str = "ps"  # ps | dfs | ps+dfs
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


#: group -> schema of the groups typed as a whole (``job`` goes by its kind: :data:`JOBS`).
GROUPS: dict[str, type] = {"cluster": Cluster, "logger": Logger, "eval": Eval, "moe": MoeRecipe, "evolve": Evolve}
