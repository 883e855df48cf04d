"""Build the zoo on first use and cache it: ``<cache>/zoo/<arch>-<size>-<hash of recipe>/``.

The base is trained from scratch on a mixture of all skills, so it knows each one partly; then
each expert is the base fine-tuned briefly (small learning rate, few steps) on its own skill, with a
KL anchor keeping it equal to the base on the other skills. Small, anchored task vectors add up
instead of colliding, which is what makes the experts mergeable (measured, not assumed: see
tests/integration/test_zoo_full.py).
Every model folder is written through :func:`hpc_merge.atomic.atomic_dir` and a file lock keeps
two processes (say, array tasks on one node) from building the same zoo at once.
"""

from __future__ import annotations

import contextlib
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from hpc_merge import console
from hpc_merge.atomic import atomic_dir, cache_dir, file_lock
from hpc_merge.zoo.spec import ALIASES, EXPERT_TASKS, ZooSpec, get_spec
from hpc_merge.zoo.tasks import SPLITS, make_splits, read_jsonl, write_jsonl

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")


@dataclass
class ZooInfo:
    """Where a built zoo lives: its base, its experts and the JSONL files of every skill's splits."""

    root: Path
    base: Path
    experts: dict[str, Path]
    tasks: dict[str, dict[str, Path]]


def zoo_root(size: str = "full", arch: str = "qwen2") -> Path:
    """Cache folder of the zoo (``size``, ``arch``); nothing is built."""
    return cache_dir() / "zoo" / f"{arch}-{size}-{get_spec(size).key(arch)}"


@contextlib.contextmanager
def _threads(n: int) -> Iterator[None]:
    """Fix torch's CPU threads while training (float sums depend on them), then restore."""
    import torch

    old = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(old)


def ensure_tasks(size: str = "full") -> dict[str, dict[str, Path]]:
    """JSONL files of every skill and split (``{task: {split: path}}``), written on first use."""
    spec = get_spec(size)
    root = cache_dir() / "zoo" / f"tasks-{spec.tasks_key()}"
    paths = {t: {s: root / t / f"{s}.jsonl" for s in SPLITS} for t in spec.task_params}
    if not root.exists():
        with file_lock(root.parent / f".tasks-{spec.tasks_key()}"):
            if not root.exists():
                with atomic_dir(root) as tmp:
                    for task, params in spec.task_params.items():
                        for split, rows in make_splits(task, spec.seed, spec.split_sizes, params).items():
                            write_jsonl(tmp / task / f"{split}.jsonl", rows)
    return paths


def _label(dest: Path) -> str:
    """``base`` / ``math`` for progress lines (the zoo's size shows in the cache path)."""
    return dest.name


def _has_model(folder: Path) -> bool:
    return (folder / "config.json").exists() and (folder / "model.safetensors").exists()


def _build_base(dest: Path, spec: ZooSpec, arch: str, tasks: dict[str, dict[str, Path]]) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from hpc_merge.models.tiny import tiny_config
    from hpc_merge.models.tokenizer import build_tokenizer
    from hpc_merge.zoo.train import encode, train

    train_rows = {t: read_jsonl(tasks[t]["train"]) for t in spec.task_params}
    corpus = [r["prompt"] + r["answer"] for rows in train_rows.values() for r in rows]
    cfg = tiny_config(arch, vocab_size=spec.vocab_size, layers=spec.layers, hidden=spec.hidden,
                      intermediate=spec.intermediate, heads=spec.heads, kv_heads=spec.kv_heads)
    with atomic_dir(dest, overwrite=True) as tmp:
        cfg.save_pretrained(str(tmp))  # first: the tokenizer class a folder loads depends on it
        build_tokenizer(tmp, corpus=corpus, vocab_size=spec.vocab_size)
        tok = AutoTokenizer.from_pretrained(str(tmp))  # train with exactly what users will load
        torch.manual_seed(spec.seed)
        model = AutoModelForCausalLM.from_config(cfg, dtype=torch.float32)
        examples = [ex for task, rows in train_rows.items()
                    for ex in encode(tok, rows[:round(spec.base_mix.get(task, 1.0) * len(rows))])]
        with console.task(f"zoo: training {_label(dest)}", total=spec.base_steps, unit="step") as bar:
            train(model, examples, spec.base_steps, spec.base_lr, spec.batch_size, spec.seed, tok.eos_token_id,
                  on_step=lambda n, loss: bar.update(n, info=f"loss {loss:.3f}"))
        model.save_pretrained(str(tmp))


def _build_expert(dest: Path, base: Path, spec: ZooSpec, task: str, index: int,
                  tasks: dict[str, dict[str, Path]]) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from hpc_merge.zoo.train import encode, train

    tok = AutoTokenizer.from_pretrained(str(base))
    model = AutoModelForCausalLM.from_pretrained(str(base), dtype=torch.float32)
    examples = encode(tok, read_jsonl(tasks[task]["train"]))
    anchor, others = None, []
    if spec.anchor_weight > 0:
        anchor = AutoModelForCausalLM.from_pretrained(str(base), dtype=torch.float32).eval()
        others = [ex for t in spec.task_params if t != task for ex in encode(tok, read_jsonl(tasks[t]["train"]))]
    with console.task(f"zoo: training {_label(dest)} ({task} expert)", total=spec.expert_steps, unit="step") as bar:
        train(model, examples, spec.expert_steps, spec.expert_lr, spec.batch_size, spec.seed + 1 + index,
              tok.eos_token_id, anchor=anchor, anchor_examples=others, anchor_weight=spec.anchor_weight,
              on_step=lambda n, loss: bar.update(n, info=f"loss {loss:.3f}"))
    with atomic_dir(dest, overwrite=True) as tmp:
        model.save_pretrained(str(tmp))
        for name in TOKENIZER_FILES:
            if (base / name).exists():
                shutil.copy2(base / name, tmp / name)


def canonical_name(name: str) -> str:
    """``base``, an expert name, or a pool alias (``math`` ...) -> ``base`` or the expert's name."""
    name = ALIASES.get(name, name)
    if name != "base" and name not in EXPERT_TASKS:
        known = ["base", *EXPERT_TASKS, *ALIASES]
        raise KeyError(f"unknown zoo model {name!r}; known: {', '.join(known)}")
    return name


def ensure_model(name: str, size: str = "full", arch: str = "qwen2") -> Path:
    """Folder of zoo model ``name`` (base, an expert, or a pool alias), built on first use."""
    name = canonical_name(name)
    spec = get_spec(size)
    root = zoo_root(size, arch)
    base = root / "base"
    if _has_model(base) and (name == "base" or _has_model(root / name)):
        return base if name == "base" else root / name
    tasks = ensure_tasks(size)
    with file_lock(root), _threads(spec.threads):
        built = []
        if not _has_model(base):
            _announce(size, root)
            _build_base(base, spec, arch, tasks)
            built.append("base")
        out = base if name == "base" else root / name
        if not _has_model(out):
            if not built:
                _announce(size, root)
            _build_expert(out, base, spec, EXPERT_TASKS[name], list(EXPERT_TASKS).index(name), tasks)
            built.append(name)
        if built:
            console.note(f"zoo: {' and '.join(built)} cached in {root} for next time")
        return out


def _announce(size: str, root: Path) -> None:
    """Say once per process why a first run trains models before merging anything."""
    if root not in _ANNOUNCED:
        _ANNOUNCED.add(root)
        console.note(f"building the {'test ' if size == 'test' else ''}skills zoo (first use only; "
                     f"tiny models trained on this CPU, cached in {root})")


_ANNOUNCED: set[Path] = set()


def ensure_zoo(size: str = "full", arch: str = "qwen2") -> ZooInfo:
    """The whole zoo (base, every expert, every skill's splits), built on first use."""
    experts = {name: ensure_model(name, size, arch) for name in EXPERT_TASKS}
    return ZooInfo(root=zoo_root(size, arch), base=ensure_model("base", size, arch), experts=experts,
                   tasks=ensure_tasks(size))


def parse_ref(ref: str) -> tuple[str, str, str] | None:
    """``zoo:math`` / ``zoo-test:base`` / ``zoo:sorting@llama`` -> (name, size, arch); else None."""
    prefix, sep, rest = ref.partition(":")
    if not sep or prefix not in ("zoo", "zoo-test"):
        return None
    name, _, arch = rest.partition("@")
    return name, "test" if prefix == "zoo-test" else "full", arch or "qwen2"


def ensure_ref(ref: str) -> Path:
    """Folder of the model a ``zoo:``/``zoo-test:`` reference names (built on first use)."""
    parsed = parse_ref(ref)
    if parsed is None:
        raise ValueError(f"not a zoo reference: {ref!r} (want zoo:<name>, zoo-test:<name>, optional @<arch>)")
    name, size, arch = parsed
    return ensure_model(name, size, arch)
