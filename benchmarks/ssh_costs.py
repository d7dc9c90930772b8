"""What SSH costs on the test hosts (medians): connect and authenticate, a
command on an open connection, an SFTP upload. Needs root and Debian's
openssh-server, like the SSH tests.

    sudo .venv/bin/python benchmarks/ssh_costs.py
"""
from __future__ import annotations

import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from mlcluster.remote.connection import Connection, HostKeyStore  # noqa: E402
from support.sshhosts import SSHTestNetwork  # noqa: E402


def median_ms(fn, n: int = 15) -> float:
    times = []
    for _ in range(n):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1000)
    return statistics.median(times)


def main() -> None:
    started = time.perf_counter()
    with SSHTestNetwork() as net:
        host, _ = net.add_hosts(["alpha", "beta"])
        print(f"two test hosts ready: {(time.perf_counter() - started) * 1000:.0f} ms")
        store = HostKeyStore()
        for label, key in (("ed25519", net.client_key), ("RSA-3072", net.client_rsa_key)):
            def connect(key=key):
                with Connection(host.address, key_path=key, known_hosts=store) as c:
                    c.open()
            print(f"connect + authenticate ({label}): {median_ms(connect):.0f} ms")
        payload = net.root / "payload"
        payload.write_bytes(os.urandom(64 * 1024))
        with Connection(host.address, key_path=net.client_key, known_hosts=store) as c:
            print(f"`true` on an open connection: {median_ms(lambda: c.run('true')):.0f} ms")
            print(f"SFTP upload of 64 KiB: {median_ms(lambda: c.put(payload, str(host.workdir / 'p'))):.0f} ms")
    print(f"whole run incl. teardown: {time.perf_counter() - started:.1f} s")


if __name__ == "__main__":
    main()
