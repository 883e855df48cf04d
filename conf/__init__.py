"""Package marker so ``conf/`` ships inside the wheel as ``hpc_merge.conf``."""
