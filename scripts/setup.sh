#!/usr/bin/env bash
# Set up hpc_merge in ./.venv (idempotent, seconds when already done).
# torch is pinned first: with no torch installed, an unpinned one drags in the newest CUDA build
# (gigabytes). On GPU clusters set TORCH_SPEC to the build your nodes need.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
say() { echo "[$(date +%H:%M:%S)] setup: $*"; }
[ -x .venv/bin/python ] || { say "creating .venv"; "$PY" -m venv .venv; }
if ! .venv/bin/python -c "import torch" 2>/dev/null; then
  say "installing ${TORCH_SPEC:-torch==2.13.0} (first time only)"
  .venv/bin/pip install -q "${TORCH_SPEC:-torch==2.13.0}"
fi
stamp=.venv/.hpc_merge-installed
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
  say "installing hpc_merge and its dependencies (mergekit, transformers, hydra, submitit, wandb...; first time only, a few minutes)"
  .venv/bin/pip install -q -e ".[eval,dev]"
  touch "$stamp"
fi
# compile the merge kernels once (numba caches them beside their module; later merges load them in ms)
.venv/bin/python -c "from hpc_merge.mergekit_adapter.numba_kernels import warm; warm()"
echo "hpc_merge is set up in .venv ($(.venv/bin/python -c 'import hpc_merge; print(hpc_merge.__version__)'))"
