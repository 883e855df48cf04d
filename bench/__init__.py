"""Benchmarks for hpc_merge (issue 9): ``python bench/run.py [--quick] [--only NAME]``.

Every benchmark builds its own inputs (cached in ``bench/.cache/``), runs the compared commands
side by side in one invocation (interleaved repetitions, median) and returns markdown tables
that ``run.py`` writes to ``bench/results/``. Nothing here asserts on time.
"""
