"""OmegaConf's and Hydra's exceptions -> one :class:`~hpc_merge.errors.ConfigError` line.

OmegaConf says *which* key failed (``full_key``) and *why* in its exception objects; Hydra wraps
them (``Error merging override ...``) and reports a missing group option in text only. Here each
becomes ``FIELD: problem — fix: how`` with the expected type, the allowed fields (did-you-mean)
or the options of the group.
"""

from __future__ import annotations

import dataclasses
import difflib
import re
import shlex
import typing
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from hpc_merge.errors import ConfigError, did_you_mean

_TYPE_WORDS = {"Integer": "an integer", "Float": "a number", "Boolean": "true or false", "String": "a string"}


def _chain(exc: BaseException) -> list[BaseException]:
    out: list[BaseException] = []
    while exc is not None and exc not in out:
        out.append(exc)
        exc = exc.__cause__ or exc.__context__
    return out


def _field(full_key: Any, prefix: str) -> str:
    key = str(full_key or "").strip()
    return ".".join(p for p in (prefix, key) if p) or "config"


def _fields_of(object_type: Any) -> list[str]:
    if isinstance(object_type, type) and dataclasses.is_dataclass(object_type):
        return [f.name for f in dataclasses.fields(object_type)]
    return []


def _expected(object_type: Any, key: str) -> str:
    """The declared type of ``key`` in dataclass ``object_type``, in words."""
    if not (isinstance(object_type, type) and dataclasses.is_dataclass(object_type)):
        return ""
    hint = typing.get_type_hints(object_type).get(key)
    if hint is None:
        return ""
    text = str(hint).replace("typing.", "").replace("<class '", "").replace("'>", "")
    return re.sub(r"hpc_merge\.schema\.groups\.", "", text)


def from_omegaconf(exc: BaseException, prefix: str = "") -> ConfigError | None:
    """The ConfigError for an OmegaConf error found in ``exc``'s chain, or None if there is none."""
    from omegaconf.errors import (
        ConfigAttributeError,
        ConfigKeyError,
        GrammarParseError,
        InterpolationResolutionError,
        MissingMandatoryValue,
        OmegaConfBaseException,
        ValidationError,
    )

    for err in _chain(exc):
        if not isinstance(err, OmegaConfBaseException):
            continue
        field = _field(getattr(err, "full_key", None), prefix)
        msg = str(getattr(err, "msg", None) or err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        obj = getattr(err, "object_type", None)
        leaf = field.rsplit(".", 1)[-1]
        if isinstance(err, ValidationError):
            m = re.search(r"Value '(.*)' of type '(\w+)' could not be converted to (\w+)", msg, re.S)
            if m:
                value, kind, target = m.groups()
                want = _TYPE_WORDS.get(target, target)
                return ConfigError(field, f"{value!r} is not {want}", f"give {want}, e.g. {field}=" +
                                   {"Integer": "1", "Float": "0.5", "Boolean": "true"}.get(target, "VALUE"))
            want = _expected(obj, leaf)
            return ConfigError(field, f"wrong type of value ({msg})", f"give {want}" if want else "see --cfg job for the type")
        if isinstance(err, ConfigKeyError | ConfigAttributeError):
            names = _fields_of(obj)
            hint = did_you_mean(leaf, names) if names else ""
            fix = f"use one of: {', '.join(names)}" if names else \
                f"check the spelling; to add a new key use +{field}=VALUE"
            return ConfigError(field, f"not a field of the config{hint}", fix)
        if isinstance(err, MissingMandatoryValue):
            return ConfigError(field, "missing", f"set {field}")
        if isinstance(err, InterpolationResolutionError | GrammarParseError):
            return ConfigError(field, f"cannot resolve the value ({msg})",
                               "check the ${...} reference: it must name an existing key and not refer to itself")
        return ConfigError(field, msg, "see --cfg job for the expected shape")
    return None


def from_hydra(exc: BaseException, config_dir: str, overrides: Sequence[str] = ()) -> ConfigError | None:
    """The ConfigError for Hydra's own composition messages (missing group option, bad override syntax).

    A misspelt option with a close match gets the whole command to type next (``overrides`` are the
    command line's), e.g. ``fix: hpc-merge +experiment=demo``: the likeliest first mistake.
    """
    text = "\n".join(str(e) for e in _chain(exc))
    missing = re.search(r"Could not find '([^']+)/([^'/]+)'", text)
    if missing:
        group, name = missing.groups()
        group = group.strip("/")
        options = sorted(p.stem for p in (Path(config_dir) / group).glob("*.yaml"))
        close = difflib.get_close_matches(name, options, n=1, cutoff=0.6)
        typed = [o for o in overrides if o.lstrip("+~").split("=", 1)[0] == group and o.endswith(f"={name}")]
        if close and typed:
            fixed = [o.replace(f"={name}", f"={close[0]}") if o == typed[0] else o for o in overrides]
            return ConfigError(group, f"no {group} config named {name!r} (did you mean {close[0]!r}?)",
                               "hpc-merge " + " ".join(shlex.quote(o) for o in fixed))
        return ConfigError(group, f"no {group} config named {name!r}{did_you_mean(name, options)}",
                           f"use one of {', '.join(options)}" if options else f"add conf/{group}/{name}.yaml")
    override = re.search(r"Could not override '([^']+)'", text) or re.search(r"Could not append to config\. An item is already at '([^']+)'", text)
    if override:
        return ConfigError(override.group(1), "not a field of the config",
                           f"check the spelling; to add a new key use +{override.group(1)}=VALUE")
    if "OverrideParseException" in "".join(type(e).__name__ for e in _chain(exc)) or "mismatched input" in text \
            or "no viable alternative" in text or "token recognition error" in text:
        first = next((ln.strip() for ln in text.splitlines() if ln.strip()), "")
        return ConfigError("overrides", f"cannot parse the command line ({first})",
                           "write key=value, +key=value or group=option; quote values with spaces or brackets")
    return None
