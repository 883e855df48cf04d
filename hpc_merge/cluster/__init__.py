"""Running callables where a cluster profile says, through submitit: a library, no job knowledge.

- :mod:`~hpc_merge.cluster.executor`: a submitit executor from a (checked) ``cluster`` profile;
- :mod:`~hpc_merge.cluster.slurm`: submit one job or a job array, wait, gather results and failures;
- :mod:`~hpc_merge.cluster.spread`: spread a job's items over its tasks (one GPU each);
- :mod:`~hpc_merge.cluster.logtail`: the tail of a job's log files.

Jobs (merge split parts, evolution generations), sweeps and :mod:`hpc_merge.launch` use it.
"""
