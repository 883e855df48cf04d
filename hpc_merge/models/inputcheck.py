"""Checks on input model folders that need no weights: pickle checkpoints and empty tokenizers.

Both would otherwise be found late or not at all: a ``pytorch_model.bin`` is unpickled by the
merge (code in the file runs, without a word), and a tokenizer that transformers loads as empty
(a WordLevel ``tokenizer.json`` in a Qwen2 folder) is copied into the output, whose smoke test
then fails after the whole merge has run.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from hpc_merge.errors import ConfigError

#: Weight files that are Python pickles (loading one can run code stored in it).
PICKLE_PATTERNS = ("*.bin", "*.pt", "*.pth", "*.ckpt", "*.pkl")
#: What the tokenizer check encodes, one at a time (the default smoke prompts): any working
#: tokenizer maps each to at least one token (an unknown word to its unknown token).
PROBES = ("12+34=", "The quick brown fox", "reverse: abc ->")


def pickle_files(model: Path) -> list[str]:
    """The pickle weight files mergekit would load from ``model`` (none when it has safetensors)."""
    model = Path(model)
    if any(model.glob("*.safetensors")):
        return []
    return sorted({p.name for pattern in PICKLE_PATTERNS for p in model.glob(pattern)})


def check_no_pickle(model: Path, field: str, allow_pickle: bool) -> None:
    """Refuse pickle weights unless ``job.allow_pickle=true``."""
    files = pickle_files(model)
    if files and not allow_pickle:
        raise ConfigError(field, f"{model} holds pickle weights ({files[0]}): loading them can run code stored "
                          "in the file",
                          "convert it to safetensors where you trust it (transformers: from_pretrained(DIR)"
                          ".save_pretrained(NEW_DIR), which writes model.safetensors), or set job.allow_pickle=true")


@lru_cache(maxsize=64)
def _encodes_empty(model: str, mtime: float, trust_remote_code: bool) -> tuple[str | None, str]:
    """``(probe encoded to nothing or None, load error)`` for ``model``'s tokenizer as transformers
    loads it (cached by path and mtime: validation runs twice, at the CLI and in the job)."""
    from transformers import AutoTokenizer

    try:
        tok = AutoTokenizer.from_pretrained(model, trust_remote_code=trust_remote_code)
        empty = next((p for p in PROBES if not tok.encode(p, add_special_tokens=False)), None)
    except Exception as exc:  # transformers raises many types for broken tokenizer files
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        return None, f"{type(exc).__name__}: {first}"
    return empty, ""


def check_tokenizer(model: Path, field: str, trust_remote_code: bool = False) -> None:
    """Refuse a tokenizer donor whose tokenizer does not load, or loads as empty (tokenizer files only)."""
    model = Path(model)
    stamp = max((p.stat().st_mtime for p in model.glob("tokenizer*")), default=0.0)
    empty, error = _encodes_empty(str(model), stamp, trust_remote_code)
    if error:
        raise ConfigError(field, f"the tokenizer of {model} does not load in transformers ({error})",
                          "fix its tokenizer files, or set tokenizer_source to a model whose tokenizer loads")
    if empty is not None:
        raise ConfigError(field, f"the tokenizer of {model} loads in transformers as empty (encodes {empty!r} to "
                          "nothing; e.g. a WordLevel tokenizer.json in a Qwen2 model): the output would fail its "
                          "smoke test after the whole merge",
                          "give that model a byte-level BPE tokenizer, or set tokenizer_source to a model whose "
                          "tokenizer works")


def check_inputs(inputs: dict[str, Path], donors: dict[str, Path], allow_pickle: bool = False,
                 trust_remote_code: bool = False) -> None:
    """Every input model (``{field: folder}``) without pickle weights, every tokenizer donor usable."""
    for field, path in inputs.items():
        check_no_pickle(path, field, allow_pickle)
    for field, path in donors.items():
        check_tokenizer(path, field, trust_remote_code)
