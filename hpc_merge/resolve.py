"""Turn a model reference from a config into a local folder, or a one-line ConfigError.

References: ``tiny:<name>`` / ``tiny:<arch>/<name>`` (random tiny models, built here),
``zoo:<name>`` / ``zoo-test:<name>`` (the skills zoo, trained here; other architectures as
``zoo:<arch>/<name>`` or ``zoo:<name>@<arch>``), a local path, or a Hugging
Face id that must already be in the local cache (compute nodes have no internet: run
``hpc-merge fetch`` on a login node first). Nothing here ever downloads.
"""

from __future__ import annotations

import os
from pathlib import Path

from hpc_merge.errors import ConfigError

PREFIXES = ("tiny:", "zoo:", "zoo-test:")


def is_builtin(ref: str) -> bool:
    """True for references to models this project builds itself."""
    return str(ref).startswith(PREFIXES)


def looks_like_hub_id(ref: str) -> bool:
    """``org/name`` that is not a local path: a Hub id."""
    ref = str(ref)
    return (not is_builtin(ref) and ref.count("/") == 1 and not ref.startswith((".", "/", "~"))
            and not Path(ref).exists())


def resolve_model(ref: str, field: str) -> Path:
    """Local folder for ``ref``; ``field`` names the config field in errors."""
    ref = str(ref).strip()
    if not ref:
        raise ConfigError(field, "empty model reference", "give a path, a Hub id, tiny:NAME or zoo:NAME")
    if ref.startswith("tiny:"):
        from hpc_merge.models.tiny import ARCHS, POOL_NAMES, ensure_tiny

        arch, _, name = ref[5:].rpartition("/")
        arch = arch or "qwen2"
        if arch not in ARCHS or name not in POOL_NAMES:
            raise ConfigError(field, f"unknown tiny model {ref!r}",
                              f"use tiny:[ARCH/]NAME with ARCH in {', '.join(ARCHS)} and NAME in {', '.join(POOL_NAMES)}")
        return ensure_tiny(name, arch)
    if ref.startswith(("zoo:", "zoo-test:")):
        from hpc_merge import zoo

        size = "test" if ref.startswith("zoo-test:") else "full"
        spec = ref.split(":", 1)[1]
        spec, _, at_arch = spec.partition("@")  # zoo:math@llama == zoo:llama/math
        arch, _, name = spec.rpartition("/")
        arch = arch or at_arch
        try:
            return zoo.ensure_model(name, size=size, arch=arch or "qwen2")
        except KeyError:
            raise ConfigError(field, f"unknown zoo model {ref!r}",
                              "use zoo:base or zoo:<expert> (see conf/models/zoo.yaml)") from None
    path = Path(os.path.expanduser(ref))
    if path.exists():
        if not (path / "config.json").is_file():
            raise ConfigError(field, f"{path} has no config.json", "point at a Hugging Face model folder")
        return path.resolve()
    if looks_like_hub_id(ref):
        return _from_hub_cache(ref, field)
    raise ConfigError(field, f"model {ref!r} not found", "give an existing folder, a Hub id, tiny:NAME or zoo:NAME")


def _from_hub_cache(repo_id: str, field: str) -> Path:
    """A Hub model already in the local HF cache (never downloads)."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    try:
        return Path(snapshot_download(repo_id, local_files_only=True))
    except (LocalEntryNotFoundError, FileNotFoundError, OSError, ValueError):
        raise ConfigError(field, f"Hub model {repo_id!r} is not in the local cache (jobs never download)",
                          "run `hpc-merge fetch +experiment=...` on a machine with internet, "
                          "or set the field to a local path") from None
