#!/usr/bin/env bash
# What benchmarks/dispatch.py and benchmarks/bench_client.py need beside the
# project's venv: HAProxy and wrk from Debian's packages. Run as root.
set -euo pipefail
export DEBIAN_FRONTEND=noninteractive
if ! command -v haproxy >/dev/null || ! command -v wrk >/dev/null; then
    apt-get update -qq
    apt-get install -y -qq haproxy wrk >/dev/null
fi
haproxy -v | head -n 1
wrk --version 2>&1 | head -n 1 || true
