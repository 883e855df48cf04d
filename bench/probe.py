"""Run a Python command and timestamp its first tensor read, without touching the command's code.

    BENCH_PROBE_OUT=marks.txt python bench/probe.py -m hpc_merge ARGS...
    BENCH_PROBE_OUT=marks.txt python bench/probe.py -e mergekit.scripts.run_yaml:main ARGS...
    BENCH_PROBE_OUT=marks.txt python bench/probe.py script.py ARGS...

``safetensors.safe_open`` is wrapped before anything imports it; mergekit, transformers and the
floor script all read weights through it, so the first ``get_tensor``/``get_slice`` call is the
first weight read. hpc_merge reads merge inputs with ``os.preadv``
(``hpc_merge/mergekit_adapter/reader.py``), which is wrapped too. Marks are epoch seconds (``start``, ``first_read``) so the parent can subtract
its own launch time. Only this file is imported up front, so the probe costs a few milliseconds.
"""

from __future__ import annotations

import importlib
import os
import runpy
import sys
import time

_OUT = os.environ.get("BENCH_PROBE_OUT")
_seen = False


def _mark(name: str) -> None:
    if _OUT:
        with open(_OUT, "a") as fh:
            fh.write(f"{name} {time.time():.6f}\n")


class _Handle:
    """Proxy of a safetensors handle that marks the first tensor fetched through any handle."""

    def __init__(self, handle):
        self._h = handle

    def __enter__(self):
        self._h.__enter__()
        return self

    def __exit__(self, *exc):
        return self._h.__exit__(*exc)

    def _first(self) -> None:
        global _seen
        if not _seen:
            _seen = True
            _mark("first_read")

    def get_tensor(self, *args, **kwargs):
        self._first()
        return self._h.get_tensor(*args, **kwargs)

    def get_slice(self, *args, **kwargs):
        self._first()
        return self._h.get_slice(*args, **kwargs)

    def __getattr__(self, name):
        return getattr(self._h, name)


def _install() -> None:
    import safetensors

    real = safetensors.safe_open

    def safe_open(*args, **kwargs):
        return _Handle(real(*args, **kwargs))

    safetensors.safe_open = safe_open
    real_preadv = os.preadv

    def preadv(*args, **kwargs):
        global _seen
        if not _seen:
            _seen = True
            _mark("first_read")
        return real_preadv(*args, **kwargs)

    os.preadv = preadv


def main() -> None:
    _mark("start")
    here = os.path.dirname(os.path.abspath(__file__))
    sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") != here]  # no bench/ shadowing
    _install()
    args = sys.argv[1:]
    if args[:1] == ["-m"]:
        sys.argv = [args[1], *args[2:]]
        runpy.run_module(args[1], run_name="__main__", alter_sys=True)
    elif args[:1] == ["-e"]:
        module, func = args[1].split(":")
        sys.argv = [func, *args[2:]]
        sys.exit(getattr(importlib.import_module(module), func)())
    else:
        sys.argv = args
        sys.path.insert(0, os.path.dirname(os.path.abspath(args[0])))
        runpy.run_path(args[0], run_name="__main__")


if __name__ == "__main__":
    main()
