"""``python -m hpc_merge``: the ``hpc-merge`` command line (:mod:`hpc_merge.cli`)."""

from hpc_merge.cli import main

if __name__ == "__main__":
    main()
