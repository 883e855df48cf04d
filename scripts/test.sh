#!/usr/bin/env bash
# Set up and run the whole test suite: the unit tier and the integration tier (real SLURM,
# CLI end to end, zoo training). As root with apt, the local SLURM cluster is installed and
# started first (scripts/local_slurm.sh); elsewhere the SLURM tests skip with the reason.
# The evolution proof on the full skills zoo (marker `proof`: evolved recipe vs every hand preset)
# takes minutes and runs apart: scripts/test.sh -m proof.
# Extra arguments go to pytest, e.g. scripts/test.sh -m "not integration" for the unit tier only.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export HPC_MERGE_CACHE=${HPC_MERGE_CACHE:-$PWD/.cache/test-models}
# The whole suite (no -m/-k given) first builds the test and full skills zoos side by side (cached:
# seconds once built), so no test waits on a zoo's lock mid-suite; SLURM is installed and started
# meanwhile (apt and daemons: little CPU). Measured: building the zoos in the background while the
# tests start was slower (the builds starved, and workers idled on their locks).
pids=()
if [[ " $* " != *" -m "* && " $* " != *" -k "* ]]; then
  echo "[$(date +%H:%M:%S)] test: building the test and full skills zoos (first time only, ~4 min)"
  for size in test full; do
    HF_HUB_DISABLE_PROGRESS_BARS=1 TRANSFORMERS_VERBOSITY=error \
      .venv/bin/python -c "from hpc_merge.zoo import ensure_zoo; ensure_zoo('$size')" & pids+=($!)
  done
fi
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
  bash scripts/local_slurm.sh up
elif ! bash scripts/local_slurm.sh status >/dev/null 2>&1; then
  echo "note: no local SLURM cluster and not root: the SLURM tests will be skipped. To run them too:" >&2
  echo "  sudo bash scripts/local_slurm.sh up && bash scripts/test.sh" >&2
fi
for pid in "${pids[@]}"; do wait "$pid"; done
echo "[$(date +%H:%M:%S)] test: zoos and SLURM ready"
# Tests run on one pytest-xdist worker per core (HPC_MERGE_TEST_WORKERS=1: in this process, serially);
# tests/conftest.py groups those that share a module-scoped build onto one worker.
workers=${HPC_MERGE_TEST_WORKERS:-auto}
xdist=(); [ "$workers" = 1 ] || xdist=(-n "$workers" --dist loadgroup)
exec .venv/bin/python -m pytest -m "not proof" -p no:cacheprovider -ra "${xdist[@]}" "$@"
