"""The run dir: one folder per run, ``<logs_dir>/<kind>/<name>/<run_id>``, written by the job and
read by the monitor, sweeps and the next run of the same config.

- :mod:`~hpc_merge.run.files`: the names of the files in a run dir, and their tolerant readers;
- :mod:`~hpc_merge.run.identity`: which run dir a config gets (same config, same run dir), and
  whether an earlier run's result can be reused;
- :mod:`~hpc_merge.run.status`: the live ``status.json`` (progress, heartbeat);
- :mod:`~hpc_merge.run.joblog`: the job's output copied to ``job.log``;
- :mod:`~hpc_merge.run.lock` and :mod:`~hpc_merge.procs.owner`: one live run per run dir, and
  whether its holder still runs (:mod:`~hpc_merge.procs.slurmq` asks SLURM);
- :mod:`~hpc_merge.run.outputs`: where a run may write its model and what ``force`` may replace.

Nothing here imports torch, mergekit, Hydra's app or a job module: the monitor reads run dirs with
it on a login node, and jobs write them with it.
"""
