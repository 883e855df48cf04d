"""Read a user's ``mergekit_yaml=`` file without trusting it: any file is one line, never a traceback.

A path can name a binary file, UTF-16 text, a device or ``/proc/self/mem``, a file of gigabytes,
YAML nested thousands deep, or an alias bomb. Reading is bounded in bytes, depth and nodes
(a real mergekit recipe is a few hundred nodes; 10⁵ nodes are refused in well under a second),
and ``${...}`` is refused: mergekit YAML has no interpolation, OmegaConf would resolve it.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import Any

import yaml

from hpc_merge.errors import ConfigError

MAX_BYTES = 4 << 20
MAX_NODES = 20_000
MAX_DEPTH = 64
FIELD = "mergekit_yaml"


def _read_text(path: Path) -> str:
    try:
        st = path.stat()
    except OSError as exc:
        raise ConfigError(FIELD, f"file {path} not found ({exc.strerror})",
                          "give the path of an existing mergekit YAML") from None
    if not stat.S_ISREG(st.st_mode):
        raise ConfigError(FIELD, f"{path} is not a regular file", "give the path of a mergekit YAML file")
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
        with os.fdopen(fd, "rb") as fh:
            raw = fh.read(MAX_BYTES + 1)
    except OSError as exc:
        raise ConfigError(FIELD, f"cannot read {path} ({exc.strerror or exc})", "give a readable mergekit YAML file") from None
    if len(raw) > MAX_BYTES:
        raise ConfigError(FIELD, f"{path} is larger than {MAX_BYTES >> 20} MiB", "a mergekit recipe is a small text file")
    if raw.startswith((b"\xff\xfe", b"\xfe\xff")) or b"\x00" in raw:
        raise ConfigError(FIELD, f"{path} is not UTF-8 text (UTF-16 or binary)", "save the file as UTF-8")
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise ConfigError(FIELD, f"{path} is not UTF-8 text (byte {exc.start})", "save the file as UTF-8") from None


def _check_tree(data: Any) -> None:
    """Bounded walk: depth, node count, no ``${`` strings, string keys (stops at the first excess)."""
    count = 0
    stack: list[tuple[Any, int, str]] = [(data, 0, "")]
    while stack:
        node, depth, where = stack.pop()
        count += 1
        if count > MAX_NODES:
            raise ConfigError(FIELD, f"has more than {MAX_NODES} values", "a mergekit recipe is a few hundred values")
        if depth > MAX_DEPTH:
            raise ConfigError(FIELD, f"nested deeper than {MAX_DEPTH} levels (at {where or 'top'})",
                              "a mergekit recipe is a few levels deep")
        if isinstance(node, dict):
            for k, v in node.items():
                if not isinstance(k, str):
                    raise ConfigError(FIELD, f"key {k!r} at {where or 'top'} is not a string", "quote the key")
                stack.append((v, depth + 1, f"{where}.{k}" if where else k))
        elif isinstance(node, list):
            stack.extend((v, depth + 1, f"{where}[{i}]") for i, v in enumerate(node))
        elif isinstance(node, str) and "${" in node:
            raise ConfigError(FIELD, f"{where}: {node[:60]!r} looks like an interpolation",
                              "mergekit YAML has no ${...}: write the value itself")
        elif not (node is None or isinstance(node, bool | int | float | str)):
            raise ConfigError(FIELD, f"{where}: a {type(node).__name__} value", "use plain numbers, strings and lists")


def _scan(text: str, path: Path, loader: type) -> None:
    """Walk the YAML *events* (no objects built) and stop at the first excess: a 10⁵-node or
    10⁴-deep file is refused after reading at most :data:`MAX_NODES` events."""
    depth = count = 0
    try:
        for event in yaml.parse(text, Loader=loader):
            if isinstance(event, yaml.CollectionStartEvent):
                depth += 1
                if depth > MAX_DEPTH:
                    raise ConfigError(FIELD, f"{path} is nested deeper than {MAX_DEPTH} levels",
                                      "a mergekit recipe is a few levels deep")
            elif isinstance(event, yaml.CollectionEndEvent):
                depth -= 1
            count += isinstance(event, yaml.NodeEvent)
            if count > MAX_NODES:
                raise ConfigError(FIELD, f"{path} has more than {MAX_NODES} values", "a mergekit recipe is a few hundred values")
    except yaml.YAMLError as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ConfigError(FIELD, f"{path} is not valid YAML ({first})", "fix the YAML syntax") from None


def read_recipe(path_text: str) -> tuple[dict[str, Any], str]:
    """The mapping in ``path_text`` and its text, checked as above."""
    path = Path(path_text).expanduser()
    text = _read_text(path)
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    _scan(text, path, loader)
    try:
        data = yaml.load(text, Loader=loader)  # noqa: S506 - a safe loader
    except yaml.YAMLError as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ConfigError(FIELD, f"{path} is not valid YAML ({first})", "fix the YAML syntax") from None
    except RecursionError:
        raise ConfigError(FIELD, f"{path} is nested too deeply", "a mergekit recipe is a few levels deep") from None
    if not isinstance(data, dict):
        raise ConfigError(FIELD, f"{path} does not hold a mapping", "give a mergekit config file")
    _check_tree(data)
    return data, text
