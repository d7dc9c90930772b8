"""The orchestrator's settings, from the environment (DEFAULTS below), checked
at start so that a bad value fails with one sentence (exit 2), never later."""
from __future__ import annotations

import os

import mlcluster_contract as contract

DEFAULTS = contract.ORCHESTRATOR_DEFAULTS  # the contract the CLI shares: mlcluster_contract


def settings_from_env(env=os.environ) -> dict:
    return contract.settings_from_env(DEFAULTS, env)


def lab_ports(value: str) -> list[int]:
    """ORCH_LAB_PORTS ("5000,5001"): the ports each lab worker IP serves on."""
    try:
        ports = [int(p) for p in str(value).split(",")]
    except ValueError:
        ports = []
    if not ports or not all(0 < p < 65536 for p in ports):
        raise RuntimeError(f"ORCH_LAB_PORTS={value!r} must be a comma-separated list of ports")
    return ports


def admin_bind(value: str) -> str:
    """ORCH_ADMIN_BIND: "" (admin endpoints on the public listener) or host:port."""
    host, _, port = value.rpartition(":")
    if value and not (host and port.isdigit() and 0 < int(port) < 65536):
        raise RuntimeError(f"ORCH_ADMIN_BIND={value!r} must be host:port, such as 127.0.0.1:8001")
    return value
