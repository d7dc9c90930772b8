#!/usr/bin/env bash
# A C compiler and Python's headers, so that `pip install` builds `mlcluster
# bench`'s compiled closed loop (mlcluster/bench/_engine.c). Without them the
# build goes on and the bench uses its Python loop; the tests insist on it.
set -euo pipefail
missing=()
command -v cc >/dev/null 2>&1 || missing+=(gcc libc6-dev)
python3 -c 'import os, sys, sysconfig; sys.exit(not os.path.exists(os.path.join(sysconfig.get_paths()["include"], "Python.h")))' \
    || missing+=(python3-dev)
if [ "${#missing[@]}" -gt 0 ]; then
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi
