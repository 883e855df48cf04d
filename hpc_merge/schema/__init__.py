"""The typed config schema: dataclasses per group (``groups``), their ConfigStore registration
(``store``), the bounds and cross-field rules types cannot say (``bounds``), and the translation of
OmegaConf/Hydra errors into one-line :class:`~hpc_merge.errors.ConfigError` (``translate``).

:func:`check` is the fast validation every command line goes through before anything is written
or a heavy library (mergekit, torch) is imported.
"""

from hpc_merge.schema.check import check
from hpc_merge.schema.store import register

__all__ = ["check", "register"]
