"""Sweeps (``hpc-merge -m``): every point validated first, finished points skipped, the rest run
here or go to SLURM as one job array; a sweep folder (``sweep.json``) and a report.

- :mod:`~hpc_merge.sweep.points`: compose and validate the points, the swept parameters;
- :mod:`~hpc_merge.sweep.sweepfile`: ``logs/sweeps/<sweep_id>/sweep.json``, kept current;
- :mod:`~hpc_merge.sweep.metrics`: a point's metrics and the key metric;
- :mod:`~hpc_merge.sweep.task`: what runs a point (an array task, or a local worker process);
- :mod:`~hpc_merge.sweep.launch`: the launcher's work, in order (called by ``hydra_plugins.hpc_merge_launcher``);
- :mod:`~hpc_merge.sweep.record`: which points run (skip done/running/repeated), their run dirs locked and prepared;
- :mod:`~hpc_merge.sweep.execute`: the points as one SLURM job array or local workers, followed to their end;
- :mod:`~hpc_merge.sweep.table`: the table of points, live while waiting;
- :mod:`~hpc_merge.sweep.report`: the report (table best first, CSV, PNG) of ``hpc-merge sweep-report``.
"""
