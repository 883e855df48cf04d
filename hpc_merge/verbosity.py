"""Library chatter stays off the terminal unless asked for: ``hydra.verbose`` and the log filter.

Library chatter (mergekit's INFO lines, transformers and matplotlib messages, library tqdm bars,
Python warnings) is hidden on the terminal by default and still written to the log files. Hydra's
own switch shows it: ``hydra.verbose=true`` (everything, at DEBUG) or ``hydra.verbose=mergekit``
(one logger), the way Hydra users already turn logging up. :func:`setup_cli` reads that switch
before any library is imported, because tqdm and transformers read their settings from the
environment at import time; :class:`QuietFilter` (installed on Hydra's console handler by
``conf/config.yaml``) hides log records on the terminal. Errors (``error: FIELD: ... — fix: ...``)
and our own warnings (once each) always show.
"""

from __future__ import annotations

import logging
import os
import sys
import threading

from hpc_merge import console

#: Set by :func:`setup_cli` for this process and its children (SLURM jobs inherit the environment).
VERBOSE_ENV = "HPC_MERGE_VERBOSE"
#: Loggers whose records are ours; warnings from them reach the terminal (once each).
OURS = "hpc_merge"

_warned_lock = threading.Lock()
_warned: set[str] = set()


def parse_verbose(argv: list[str]) -> str:
    """``hydra.verbose`` from command-line overrides: ``""`` (off), ``"true"`` or logger names."""
    value = ""
    for arg in argv:
        if arg.startswith(("hydra.verbose=", "++hydra.verbose=", "+hydra.verbose=")):
            value = arg.split("=", 1)[1].strip().strip("[]")
    if value.lower() in ("", "false", "0", "no", "null", "none"):
        return ""
    return "true" if value.lower() in ("true", "1", "yes") else value


def verbose_for(name: str) -> bool:
    """Whether records of logger ``name`` should reach the terminal in full (``hydra.verbose``)."""
    flag = os.environ.get(VERBOSE_ENV, "")
    if flag == "true":
        return True
    names = [n.strip() for n in flag.split(",") if n.strip()]
    if any(name == n or name.startswith(n + ".") for n in names):
        return True
    # Hydra applies hydra.verbose by setting levels to DEBUG: honour that too (e.g. set in a config file)
    if logging.getLogger().level == logging.DEBUG:
        return True
    logger: logging.Logger | None = logging.getLogger(name)
    while logger is not None and logger.name != "root":
        if logger.level == logging.DEBUG:
            return True
        logger = logger.parent
    return False


def setup_cli(argv: list[str]) -> str:
    """Quiet the libraries for this CLI process unless ``hydra.verbose`` asks for them.

    Runs before Hydra and before any library import (tqdm and transformers read these variables
    when imported). Returns the verbosity (``""``, ``"true"`` or logger names).
    """
    console.start_clock()
    verbose = parse_verbose(argv)
    os.environ[VERBOSE_ENV] = verbose
    names = {n.strip() for n in verbose.split(",")}
    loud = verbose == "true"
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "info" if loud or "transformers" in names else "error")
    if not loud:
        if not names & {"tqdm", "mergekit", "transformers", "huggingface_hub"}:
            os.environ.setdefault("TQDM_DISABLE", "1")  # library bars (mergekit's tokenizer pass...)
            os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
        os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")  # its fork warning
    # Python warnings become log records: in the log file, on the terminal only when verbose
    logging.captureWarnings(True)
    _configure_logging(verbose)
    return verbose


def _configure_logging(verbose: str) -> None:
    """Root logger for a CLI run: records to the terminal through :class:`QuietFilter`.

    A plain run is composed with Hydra's compose API, which configures no logging (``@hydra.main``,
    used for ``-m`` sweeps, replaces this with ``hydra.job_logging`` from ``conf/config.yaml``, which
    has the same filter); ``hydra.verbose`` is applied the way Hydra applies it (levels to DEBUG).
    """
    root = logging.getLogger()
    for h in [h for h in root.handlers if isinstance(h, _TerminalHandler)]:
        root.removeHandler(h)
    handler = _TerminalHandler()
    handler.addFilter(QuietFilter())
    root.addHandler(handler)
    root.setLevel(logging.DEBUG if verbose == "true" else logging.INFO)  # INFO reaches job.log's handler
    if verbose and verbose != "true":
        for name in verbose.split(","):
            logging.getLogger(name.strip()).setLevel(logging.DEBUG)


class _TerminalHandler(logging.Handler):
    """Log records that pass :class:`QuietFilter`, on the terminal side of stderr (above live bars)."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            msg = record.getMessage()
            ours = record.name == OURS or record.name.startswith(OURS + ".")
            text = f"{record.levelname.lower()}: {msg}" if ours else f"[{record.name}][{record.levelname}] {msg}"
            if record.exc_info and verbose_for(record.name):
                text += "\n" + logging.Formatter().formatException(record.exc_info)
            console.print_above(text, sys.stderr)
        except Exception:  # a log line must never end the run
            self.handleError(record)


class QuietFilter(logging.Filter):
    """Terminal filter for log records: errors always; our warnings once; the rest when verbose.

    Installed on Hydra's console handler by ``conf/config.yaml`` (``hydra.job_logging``); the log
    files keep every record.
    """

    def filter(self, record: logging.LogRecord) -> bool:  # noqa: A003 - logging's name
        if record.levelno >= logging.ERROR or verbose_for(record.name):
            return True
        if record.levelno >= logging.WARNING and (record.name == OURS or record.name.startswith(OURS + ".")):
            key = record.getMessage()
            with _warned_lock:
                if key in _warned:
                    return False
                _warned.add(key)
            return True
        return False
