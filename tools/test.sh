#!/usr/bin/env bash
# The project's test command (the README and .ci/run both use it):
# every notebook top to bottom (nbdev_test, slow cells skipped), then the pytest suite, whose summary line closes the run.
set -euo pipefail
cd "$(dirname "$0")/.."
export OMP_WAIT_POLICY=PASSIVE HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false MPLBACKEND=Agg MINIONEREC_QUIET=1
echo "== nbdev_test (notebooks)"
nbdev_test --n_workers "${NBDEV_WORKERS:-2}" --timing
echo "== pytest"
python -m pytest -q -p no:cacheprovider tests "$@"
