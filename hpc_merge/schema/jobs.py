"""The typed shape of the ``job`` group, one dataclass per kind (``job=merge|moe|evolve``).

Each ``conf/job/<kind>.yaml`` lists its kind's schema (``<kind>_schema``) in its defaults list
and sets nothing else: the defaults below are the only ones, and ``--cfg job`` shows them.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class Smoke:
    """The inference smoke test run on every output model."""

    enabled: bool = True
    # [] = from the pool: zoo models get one held-out prompt per skill (answers checked);
    # other models: set your own, e.g. ["The capital of France is"]
    prompts: list[str] = field(default_factory=list)
    max_new_tokens: int = 8
    # perplexity text; None = the zoo's answers for zoo models, else none shown (finiteness only)
    text: str | None = None


@dataclass
class Routing:
    """MoE, after building: the share of each expert's own positive prompts routed mostly to it
    (in-sample; loads the output once in fp32 on CPU: disable for very large models)."""

    enabled: bool = True


@dataclass
class MergeOptions:
    """mergekit's MergeOptions plus ours (device auto, sparsify, chunk_size); merge and evolve jobs
    (evolve: used for every candidate, random_seed is set per candidate)."""

    device: str = "auto"  # auto (cuda when the node has a GPU) | cpu | cuda
    multi_gpu: bool = False
    read_to_gpu: bool = False
    low_cpu_memory: bool = False
    lazy_unpickle: bool = True
    # bytes, with K/M/B suffixes (mergekit's own unit); tensors are written as they are merged
    out_shard_size: str | None = "1B"
    # tensors above this are merged in row chunks of this many bytes per input (None: 16M; 0: whole)
    chunk_size: str | None = "16M"
    num_threads: int | None = None
    # TIES magnitude trim: fast (exact-k O(n), ties by lowest index) | mergekit (argsort, = mergekit-yaml)
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

    device: str = "auto"  # where gate hidden states are computed: auto (cuda when present) | cpu | cuda
    random_seed: int = 0  # seeds random / uniform_random gates and noise_scale
    out_shard_size: str | None = "1B"  # bytes, with K/M/B suffixes; smaller = less peak RAM
    safe_serialization: bool = True
    num_threads: int | None = None  # torch CPU threads; None = torch's default


@dataclass
class MergeJob:
    """``job=merge``: one mergekit recipe (or several stages) -> a checked, smoke-tested model."""

    kind: str = "merge"
    dry_run: bool = False  # print the resolved mergekit YAML, the checks' findings and a resource estimate
    # pickle weights (pytorch_model.bin) run code when loaded: refused unless true; convert to
    # safetensors (hpc_merge/models/inputcheck.py)
    allow_pickle: bool = False
    tasks: int = 1  # split the merge by output tensor over N processes (bit-identical to 1; hpc_merge/split/)
    smoke: Smoke = field(default_factory=Smoke)
    options: MergeOptions = field(default_factory=MergeOptions)


@dataclass
class MoeJob:
    """``job=moe``: dense experts -> a Mixture-of-Experts model (recipe: the ``moe`` group)."""

    kind: str = "moe"
    dry_run: bool = False  # print the resolved mergekit-moe recipe, the chosen output class, findings, an estimate
    allow_pickle: bool = False  # pickle (.bin) input weights: refused unless true (see MergeJob)
    tasks: int = 1  # a MoE build is not split: only 1 is accepted (why: hpc_merge/schema/bounds.py, job())
    smoke: Smoke = field(default_factory=Smoke)
    routing: Routing = field(default_factory=Routing)
    options: MoeOptions = field(default_factory=MoeOptions)


@dataclass
class EvolveJob:
    """``job=evolve``: CMA-ES over merge recipes (recipe of the search: the ``evolve`` group)."""

    kind: str = "evolve"
    dry_run: bool = False  # print the search space, budget, fitness and the centre recipe; run nothing
    options: MergeOptions = field(default_factory=MergeOptions)


JOBS: dict[str, type] = {"merge": MergeJob, "moe": MoeJob, "evolve": EvolveJob}
