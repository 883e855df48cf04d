"""Each local model's ``config.json`` read once, handed out as copies (for in-memory merges).

mergekit reads a model's config again every time it asks for it (16 times per merge of a
five-model recipe, ≈ 0.6 ms each) and mutates what it gets (``_model_out_config``), hence the
copies; the key holds the file's mtime and size, so a rewritten model is read again. Installed in
place of ``ModelReference.config`` by ``patches.cached_configs``.
"""

from __future__ import annotations

import copy
import os
from collections.abc import Callable
from typing import Any

#: (path, revision, override_architecture, trust_remote_code, config.json's mtime and size) -> config
_CONFIGS: dict[tuple, Any] = {}


def _config_stamp(path: str) -> tuple[int, int] | None:
    try:
        st = os.stat(os.path.join(path, "config.json"))
    except OSError:  # not a local folder (hub id, LoRA...): leave it to mergekit
        return None
    return st.st_mtime_ns, st.st_size


def read_once(read: Callable[[Any, bool], Any], ref: Any, trust_remote_code: bool = False) -> Any:
    """``read(ref, trust_remote_code)`` (mergekit's own reader), from the cache when the file is unchanged."""
    path = str(ref.model.path)
    stamp = _config_stamp(path) if ref.lora is None else None
    if stamp is None:
        return read(ref, trust_remote_code)
    key = (path, ref.model.revision, ref.override_architecture, bool(trust_remote_code), stamp)
    if key not in _CONFIGS:
        if len(_CONFIGS) > 64:
            _CONFIGS.clear()
        _CONFIGS[key] = read(ref, trust_remote_code)
    return copy.deepcopy(_CONFIGS[key])
