#!/usr/bin/env bash
# The README's first command: a fresh environment, a local cluster (4 workers x 2 containers), its status,
# a load test at concurrency 15 ending with its summary table, then everything removed.
#   bash scripts/quickstart.sh            (VENV=path to use another environment)
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${VENV:-.venv}"
if [ ! -x "$VENV/bin/python" ]; then
    python3 -m venv "$VENV"
fi
# torch first and pinned: 2.13.0 is the CPU build; an unpinned torch may pull a multi-GB CUDA build.
"$VENV/bin/pip" install -q torch==2.13.0
"$VENV/bin/pip" install -q -e '.[local]'
ml="$VENV/bin/mlcluster"
"$ml" up
trap '"$ml" down --yes' EXIT   # the cluster goes, whatever happens next
"$ml" status
"$ml" bench --concurrency 15 --requests 300
