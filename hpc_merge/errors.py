"""User-facing errors: one line naming the field and the fix, exit status 2, no traceback."""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class ConfigError(Exception):
    """A bad config value, found before any heavy work or job submission.

    ``field`` is the dotted config path (``merge.models[0].parameters.densty``), ``problem`` says
    what is wrong and ``fix`` what to do. ``str()`` is the single line shown to the user.
    """

    exit_code = 2

    def __init__(self, field: str, problem: str, fix: str = ""):
        self.field, self.problem, self.fix = field, problem, fix
        msg = f"{field}: {problem}" + (f" — fix: {fix}" if fix else "")
        super().__init__(msg.replace("\n", " "))


class JobFailed(Exception):
    """A job ran and failed (merge error, NaN smoke test, SLURM FAILED/CANCELLED/TIMEOUT...)."""

    exit_code = 1


class SubmitRefused(JobFailed):
    """sbatch refused a job (bad partition, GPUs the cluster does not have, ...): nothing ran."""

    exit_code = 2


def did_you_mean(word: str, choices: Iterable[str]) -> str:
    """' (did you mean X?)' for the closest choice, or ''."""
    close = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""
