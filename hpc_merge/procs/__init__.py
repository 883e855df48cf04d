"""Who runs and whether it still runs: a process (pid, host, start time) or a SLURM job.

The lowest layer under run dirs and atomic writes: a run lock, a temp folder or a monitor row
records its owner (:mod:`~hpc_merge.procs.owner`), and the next reader asks whether that owner is
alive (its pid on this host, else SLURM through :mod:`~hpc_merge.procs.slurmq`).
"""
