"""``hpc-merge fetch +experiment=X``: download every Hub model a job needs, on a machine with internet.

Compute nodes are often offline, so jobs run with ``HF_HUB_OFFLINE=1`` (cluster.env) and read
the shared cache (``cluster.hf_home`` or ``HF_HOME``). Fetching first, on the login node, turns a
long download timeout on the node into a job that either finds its models or fails in seconds.
"""

from __future__ import annotations

import os
import re
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

SECTIONS = ("models", "merge", "moe", "evolve")
#: keys whose string values (or lists of strings) name a model in merge / moe / evolve recipes
MODEL_KEYS = frozenset({"model", "base_model", "source_model", "tokenizer_source", "models", "source"})
HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*$")
#: files a merge never reads (duplicate formats of the same weights)
IGNORE = ["*.pth", "*.pt", "*.gguf", "*.onnx", "*.h5", "*.msgpack", "*.ot", "original/*"]
USAGE = """usage: hpc-merge fetch [--dry-run] [OVERRIDE ...]

Download every Hugging Face model the composed job refers to into the cache
(cluster.hf_home, else HF_HOME), e.g.  hpc-merge fetch +experiment=stem_focused cluster=slurm_a100
"""


def hub_id(ref: str) -> tuple[str, str | None] | None:
    """``(repo_id, revision)`` when ``ref`` names a Hub model, else ``None``.

    Local paths that exist, built-in refs (``tiny:``, ``zoo:``) and mergekit's ``model+lora`` /
    ``model@revision`` forms are told apart here.
    """
    ref = ref.strip().split("+", 1)[0]
    repo, _, revision = ref.partition("@")
    if not HUB_ID.match(repo) or Path(repo).expanduser().exists():
        return None
    return repo, revision or None


def _strings(node: Any, model_key: bool) -> Iterator[str]:
    """String leaves of ``node``: all of them under a model key, else only those under one."""
    if isinstance(node, str):
        if model_key:
            yield node
    elif isinstance(node, dict):
        for key, value in node.items():
            yield from _strings(value, model_key or key in MODEL_KEYS)
    elif isinstance(node, list):
        for value in node:
            yield from _strings(value, model_key)


def model_refs(cfg: dict[str, Any]) -> list[tuple[str, str | None]]:
    """Every distinct Hub model (repo, revision) in the ``models``/``merge``/``moe``/``evolve`` sections."""
    found: dict[tuple[str, str | None], None] = {}
    for section in SECTIONS:
        for text in _strings(cfg.get(section), model_key=section == "models"):
            ref = hub_id(text)
            if ref:
                found[ref] = None
    return list(found)


def _resolved_sections(cfg: Any) -> dict[str, Any]:
    """The model-bearing sections as plain data (interpolations such as ``${models.base}`` resolved)."""
    from omegaconf import OmegaConf

    return {s: OmegaConf.to_container(cfg[s], resolve=True) for s in SECTIONS if cfg.get(s) is not None}


def fetch(refs: list[tuple[str, str | None]], hf_home: str | None) -> int:
    """Download ``refs``; one line per model; non-zero at the first model that cannot be had."""
    if hf_home:
        os.environ["HF_HOME"] = str(Path(hf_home).expanduser())  # before huggingface_hub is imported
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError

    offline = os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on")
    cache = os.environ.get("HF_HOME") or "~/.cache/huggingface"
    for repo, revision in refs:
        name = repo + (f"@{revision}" if revision else "")
        try:
            path = snapshot_download(repo, revision=revision, ignore_patterns=IGNORE)
        except LocalEntryNotFoundError:
            why = ("HF_HUB_OFFLINE=1 forbids downloading: run hpc-merge fetch where the Hub can be reached, "
                   "with HF_HUB_OFFLINE unset") if offline else "the Hub could not be reached"
            print(f"error: {name} is not in the cache ({cache}) and {why}", file=sys.stderr)
            return 1
        except HfHubHTTPError as exc:
            print(f"error: {name}: {str(exc).splitlines()[0]}", file=sys.stderr)
            return 1
        print(f"ok {name} -> {path}", flush=True)
    return 0


def main(argv: list[str]) -> int:
    """Compose the config from ``argv`` overrides and fetch its Hub models."""
    if any(a in ("-h", "--help") for a in argv):
        print(USAGE, end="")
        return 0
    dry_run = "--dry-run" in argv
    overrides = [a for a in argv if a != "--dry-run"]
    from hpc_merge.config import compose

    try:
        cfg = compose(overrides)
        refs = model_refs(_resolved_sections(cfg))
    except Exception as exc:  # Hydra composition / interpolation errors: one line, exit 2
        print(f"error: {str(exc).strip().splitlines()[0]}", file=sys.stderr)
        return 2
    if not refs:
        print("nothing to fetch: every model is local or built in")
        return 0
    if dry_run:
        for repo, revision in refs:
            print(repo + (f"@{revision}" if revision else ""))
        return 0
    hf_home = cfg.cluster.get("hf_home") if cfg.get("cluster") is not None else None
    return fetch(refs, str(hf_home) if hf_home else None)
