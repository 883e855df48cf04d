"""Register the schemas in Hydra's ConfigStore, where ``conf/`` picks them up through defaults lists.

``conf/config.yaml`` lists ``hpc_merge_schema`` (the :class:`~hpc_merge.schema.groups.Root`) first,
so every group file is merged into its typed node; each ``conf/job/*.yaml`` lists its kind's
schema (``job/merge_schema``...), because the shape of ``job`` depends on the kind.
"""

from __future__ import annotations

from hpc_merge.schema.groups import Root
from hpc_merge.schema.jobs import JOBS

ROOT_NAME = "hpc_merge_schema"


def register() -> None:
    """Store the schemas (idempotent: Hydra's ConfigStore replaces an entry of the same name)."""
    from hydra.core.config_store import ConfigStore

    cs = ConfigStore.instance()
    cs.store(name=ROOT_NAME, node=Root)
    for kind, schema in JOBS.items():
        cs.store(group="job", name=f"{kind}_schema", node=schema)
