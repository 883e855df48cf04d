"""``python -m hpc_merge.monitor [RUN_DIR ...]``."""

import sys

from hpc_merge.monitor import main

sys.exit(main(sys.argv[1:]))
