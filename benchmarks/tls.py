"""The orchestrator over TLS beside HAProxy terminating TLS, in front of the
same light containers (benchmarks/light_container.py, instant answers), loaded
by wrk (Debian's wrk speaks https; it does not verify certificates, as a load
generator). Needs `haproxy` and `wrk` (Debian's packages).

    python benchmarks/tls.py [--seconds 6] [--rounds 3]

Four setups, each measured in every round, in alternating order:
  orchestrator plain, orchestrator TLS (ORCH_TLS_CERT/KEY, the cluster's
  self-signed P-256 certificate from mlcluster/tls.py), HAProxy plain,
  HAProxy TLS (`bind ... ssl crt`, the same certificate; `nbthread 1`,
  leastconn, `maxconn 1` per server, as benchmarks/dispatch.py).
Two loads: the ceiling (64 keep-alive clients) and the p50 at one client,
reported as added over calling a container directly; with the ceiling, the
CPU the proxy's process spent per request (user + system, from /proc). The TLS
version and cipher each TLS setup negotiates with an OpenSSL client (as wrk's)
are printed: the same on both sides is the same work. Targets (issue 24):
orchestrator TLS >= 0.7 x its plain ceiling and >= 0.6 x HAProxy TLS's;
added p50 over TLS <= 1 ms. Medians of the rounds; the ratios come from the
same run. The machine is shared: absolute figures are rough.
"""
from __future__ import annotations

import argparse
import resource
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from dispatch import ROOT, TOKEN, Bench, free_port, wait_port  # noqa: E402

from mlcluster import tls  # noqa: E402


class TlsBench(Bench):
    def certificate(self) -> tls.Certificate:
        cert = tls.make_self_signed(self.tmp / "tls", "bench")
        # HAProxy takes the certificate and its key in one file.
        (self.tmp / "tls" / "haproxy.pem").write_bytes(Path(cert.cert_path).read_bytes() +
                                                       Path(cert.key_path).read_bytes())
        return cert

    def start_haproxy_pair(self) -> tuple[str, str]:
        plain, secure = free_port(), free_port()
        cfg = self.haproxy_config({"plain": f"127.0.0.1:{plain}",
                                   "secure": f"127.0.0.1:{secure} ssl crt {self.tmp / 'tls' / 'haproxy.pem'}"},
                                  global_extra="  ssl-default-bind-options ssl-min-ver TLSv1.2\n")
        self.start(["haproxy", "-db", "-f", str(cfg)], log="haproxy.log")
        wait_port(plain)
        wait_port(secure)
        return f"http://127.0.0.1:{plain}/run_model", f"https://127.0.0.1:{secure}/run_model"

    def start_orchestrator_tls(self, cert: tls.Certificate) -> str:
        port, admin = free_port(), free_port()
        env = {"BIND": f"127.0.0.1:{port}", "ORCH_TOKEN": TOKEN, "ORCH_HEALTH_INTERVAL_S": "1",
               "ORCH_ADMIN_BIND": f"127.0.0.1:{admin}", "PYTHONPATH": str(ROOT / "orchestrator_image"),
               "ORCH_TLS_CERT": cert.cert_path, "ORCH_TLS_KEY": cert.key_path}
        self.start([sys.executable, "-m", "mlcluster_orchestrator"], env, log="orchestrator-tls.log")
        wait_port(port)
        wait_port(admin)
        containers = [{"id": f"c{i}", "host": "127.0.0.1", "port": p} for i, p in enumerate(self.ports)]
        with tls.pinned_session(cert.cert_path, cert.fingerprint) as http:
            http.post(f"http://127.0.0.1:{admin}/workers", json={"containers": containers},
                      headers={"Authorization": f"Bearer {TOKEN}"}, timeout=10).raise_for_status()
            deadline = time.monotonic() + 20
            url = f"https://127.0.0.1:{port}"
            while any(c["status"] != "free" for c in http.get(url + "/status", timeout=5).json()["containers"]):
                if time.monotonic() > deadline:
                    raise RuntimeError("the TLS orchestrator's containers did not become free")
                time.sleep(0.1)
        return url + "/new_request"


def negotiated(url: str, cert: tls.Certificate) -> str:
    """The TLS version and cipher a default OpenSSL client gets from `url` ("https://host:port/...")."""
    host, port = url.split("/")[2].rsplit(":", 1)
    with tls.ssl_context(cert.cert_path).wrap_socket(socket.create_connection((host, int(port)), 5)) as s:
        tls.check_peer(s.getpeercert(binary_form=True), cert.fingerprint)
        return f"{s.version()} {s.cipher()[0]}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=6.0, help="length of each measured load")
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds (the median is reported)")
    args = parser.parse_args()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    with TlsBench(args.seconds) as bench:
        bench.start_containers()
        cert = bench.certificate()
        haproxy, haproxy_tls = bench.start_haproxy_pair()
        setups = {"orchestrator plain": bench.start_orchestrator(),
                  "orchestrator TLS": bench.start_orchestrator_tls(cert),
                  "HAProxy plain": haproxy, "HAProxy TLS": haproxy_tls}
        pids = {"orchestrator plain": bench.pid("orchestrator"), "orchestrator TLS": bench.pid("orchestrator-tls"),
                "HAProxy plain": bench.pid("haproxy"), "HAProxy TLS": bench.pid("haproxy")}
        ciphers = {name: negotiated(setups[name], cert) for name in ("orchestrator TLS", "HAProxy TLS")}
        direct = f"http://127.0.0.1:{bench.ports[0]}/run_model"
        bench.set_service([0] * len(bench.ports))
        ceiling: dict[str, list[float]] = {name: [] for name in setups}
        p50: dict[str, list[float]] = {name: [] for name in setups}
        cpu: dict[str, list[tuple[float, float]]] = {name: [] for name in setups}
        ratios: dict[str, list[float]] = {"tls/plain": [], "tls/haproxy tls": []}
        for r in range(args.rounds):
            order = list(setups) if r % 2 == 0 else list(reversed(setups))
            loads = {name: bench.phase(setups[name], 64, pids[name]) for name in order}
            for name, load in loads.items():
                ceiling[name].append(load.rate)
                cpu[name].append(load.cpu_us)
                assert load.max_concurrency <= 1 and load.errors == 0, (name, load)
            ratios["tls/plain"].append(loads["orchestrator TLS"].rate / loads["orchestrator plain"].rate)
            ratios["tls/haproxy tls"].append(loads["orchestrator TLS"].rate / loads["HAProxy TLS"].rate)
            d = bench.phase(direct, 1, seconds=max(1.0, args.seconds / 2))
            for name in order:
                p50[name].append(bench.phase(setups[name], 1, seconds=max(1.0, args.seconds / 2)).p50_ms - d.p50_ms)
    med = statistics.median
    version = subprocess.run(["haproxy", "-v"], capture_output=True, text=True).stdout.split()[2]
    print(f"{len(bench.ports)} light containers (instant answers), {args.rounds} alternating rounds of "
          f"{args.seconds:g} s, wrk; HAProxy {version} (nbthread 1); medians of the rounds")
    print("TLS negotiated: " + "; ".join(f"{name}: {c}" for name, c in ciphers.items()))
    print("| setup | ceiling, 64 keep-alive clients (req/s) | added p50 at 1 client (ms) | proxy CPU per request "
          "at the ceiling (user + system us) |")
    print("|---|---|---|---|")
    for name in setups:
        print(f"| {name} | {med(ceiling[name]):,.0f} | {med(p50[name]):+.3f} | "
              f"{med(u for u, _ in cpu[name]):.1f} + {med(s for _, s in cpu[name]):.1f} |")
    print(f"orchestrator TLS / its plain ceiling: {med(ratios['tls/plain']):.3f} (target >= 0.7; rounds "
          f"{', '.join(f'{x:.3f}' for x in ratios['tls/plain'])})")
    print(f"orchestrator TLS / HAProxy TLS ceiling: {med(ratios['tls/haproxy tls']):.3f} (target >= 0.6; rounds "
          f"{', '.join(f'{x:.3f}' for x in ratios['tls/haproxy tls'])})")
    print(f"orchestrator TLS added p50: {med(p50['orchestrator TLS']):+.3f} ms (target <= 1 ms; rounds "
          f"{', '.join(f'{x:+.3f}' for x in p50['orchestrator TLS'])})")


if __name__ == "__main__":
    main()
