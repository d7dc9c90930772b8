"""TLS on the public listener and API keys, on a real orchestrator process
(keep-alive, the slow-client guard and the head limits over TLS; a pinned
client refuses another certificate; 401 without a key, 200 with one, 401
after revocation; keys never in logs or /metrics), and through the CLI
(`up --tls --api-keys`, `status`, `bench`, `keys create|list|revoke`)."""
from __future__ import annotations

import hashlib
import json
import os
import socket
import ssl

import pytest
import requests

from mlcluster import apikeys, security, services, tls
from mlcluster.state import ClusterState
from support.console import cli, home_fixture
from support.services import Service, free_port
from support.serving import AUTH, Cluster, port_of
from support.waiting import wait_for
from test_slow_clients import closed_by_peer, read_answer


@pytest.fixture
def cluster(tmp_path):
    c = Cluster(tmp_path)
    yield c
    c.stop()


def start_tls_orchestrator(cluster: Cluster, cert: tls.Certificate, **extra) -> Service:
    port = free_port()
    env = services.orchestrator_env(port=port, token="test-token", health_interval_s=0.25)
    env.update(ORCH_TLS_CERT=cert.cert_path, ORCH_TLS_KEY=cert.key_path, **extra)
    orch = Service(services.orchestrator_command(), env, f"https://127.0.0.1:{port}",
                   cluster.tmp_path / f"orchestrator-{port}.log")
    cluster.services.append(orch)
    with tls.pinned_session(cert.cert_path, cert.fingerprint) as http:
        wait_for(lambda: orch.proc.poll() is None and http.get(orch.url + "/health_check", timeout=2).ok,
                 "the TLS orchestrator")
    return orch


def tls_socket(port: int, cert: tls.Certificate) -> ssl.SSLSocket:
    raw = socket.create_connection(("127.0.0.1", port), timeout=10)
    s = tls.ssl_context(cert.cert_path).wrap_socket(raw)
    tls.check_peer(s.getpeercert(binary_form=True), cert.fingerprint)
    return s


def test_tls_keeps_alive_pins_and_bounds_heads(cluster, tmp_path):
    cert = tls.make_self_signed(tmp_path / "a", "t")
    other = tls.make_self_signed(tmp_path / "b", "t")
    assert oct((tmp_path / "a" / "tls-key.pem").stat().st_mode & 0o777) == "0o600"
    orch = start_tls_orchestrator(cluster, cert, ORCH_HEADER_TIMEOUT_S="0.5")
    port = port_of(orch)
    # Keep-alive: two requests on one TLS connection.
    s = tls_socket(port, cert)
    for _ in range(2):
        s.sendall(b"GET /health_check HTTP/1.1\r\nHost: o\r\n\r\n")
        assert read_answer(s).startswith(b"HTTP/1.1 200")
    s.close()
    # The head limits over TLS.
    s = tls_socket(port, cert)
    s.sendall(b"GET /health_check?" + b"q" * 9000 + b" HTTP/1.1\r\nHost: o\r\n\r\n")
    assert read_answer(s).startswith(b"HTTP/1.1 414")
    s.close()
    # The slow-client guard: a header that stops coming, and a connection that never starts TLS.
    s = tls_socket(port, cert)
    s.sendall(b"GET /health_check HTTP/1.1\r\nHost: o\r\n")
    answer = closed_by_peer(s, within_s=5)
    assert answer is not None and answer.startswith(b"HTTP/1.1 408"), answer
    s.close()
    silent = socket.create_connection(("127.0.0.1", port), timeout=10)
    assert closed_by_peer(silent, within_s=5) is not None  # the handshake time-out
    silent.close()
    # Pinning: the right certificate is trusted; another one, or plain HTTP, is not.
    with tls.pinned_session(cert.cert_path, cert.fingerprint) as http:
        assert http.get(orch.url + "/status", timeout=5).status_code == 200
    with tls.pinned_session(other.cert_path, other.fingerprint) as http, pytest.raises(requests.exceptions.SSLError):
        http.get(orch.url + "/status", timeout=5)
    with tls.pinned_session(cert.cert_path, other.fingerprint) as http, pytest.raises(requests.exceptions.SSLError):
        http.get(orch.url + "/status", timeout=5)
    with pytest.raises(requests.exceptions.SSLError):  # the system's trust store does not know it
        requests.get(orch.url + "/status", timeout=5)


def secret_of(key: str) -> str:
    """The random part of "mlk_<id>_<secret>" (the secret is URL-safe base64: it may hold "_" itself)."""
    prefix, key_id, secret = key.split("_", 2)
    assert prefix + "_" == apikeys.PREFIX and len(secret) >= 40, key
    return secret


def test_api_keys_401_200_revoked_and_never_shown(cluster):
    first, second = apikeys.new_key(), apikeys.new_key()
    cluster.start_workers(["w1"], service_ms=0)
    cluster.start_orchestrator(extra_env={"ORCH_API_KEYS": f"{first.id}:{apikeys.digest(first.key)}"})
    cluster.register()
    url = cluster.url

    def ask(path: str, key: str | None, method: str = "post") -> requests.Response:
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        if method == "get":
            return requests.get(url + path, headers=headers, timeout=10)
        return requests.post(url + path, json={"text": "hello"}, headers=headers, timeout=10)

    for path, method in (("/new_request", "post"), ("/workers_info", "get")):
        r = ask(path, None, method)
        assert r.status_code == 401 and r.headers["WWW-Authenticate"] == "Bearer" and "API key" in r.json()["error"]
        assert ask(path, second.key, method).status_code == 401  # not (yet) in force
        assert ask(path, first.key[:-1] + "x", method).status_code == 401
        assert ask(path, first.key, method).status_code == 200
    assert requests.get(url + "/health_check", timeout=5).status_code == 200  # open, as before
    # Added and revoked at run time through the admin routes, with the token only.
    entry = {"id": second.id, "sha256": apikeys.digest(second.key)}
    assert requests.post(url + "/api_keys", json=entry, timeout=5).status_code == 401
    assert requests.post(url + "/api_keys", json={"id": "x", "sha256": "short"}, headers=AUTH,
                         timeout=5).status_code == 400
    assert requests.post(url + "/api_keys", json=entry, headers=AUTH, timeout=5).status_code == 201
    assert ask("/new_request", second.key).status_code == 200
    assert requests.get(url + "/api_keys", headers=AUTH, timeout=5).json() == {"ids": sorted([first.id, second.id])}
    assert requests.delete(url + f"/api_keys/{first.id}", headers=AUTH, timeout=5).status_code == 200
    assert ask("/new_request", first.key).status_code == 401
    assert requests.delete(url + f"/api_keys/{first.id}", headers=AUTH, timeout=5).status_code == 404
    metrics = requests.get(url + "/metrics", timeout=5).text
    assert f'orchestrator_api_key_requests_total{{key_id="{first.id}"}} 2.0' in metrics
    assert f'orchestrator_api_key_requests_total{{key_id="{second.id}"}} 1.0' in metrics
    log = cluster.orchestrator.log_path.read_text()
    for key in (first.key, second.key):
        assert secret_of(key) not in metrics and secret_of(key) not in log


def test_the_orchestrator_refuses_bad_tls_and_key_settings(tmp_path):
    cases = (({"ORCH_TLS_CERT": str(tmp_path / "none.pem")}, "given together"),
             ({"ORCH_TLS_CERT": str(tmp_path / "none.pem"), "ORCH_TLS_KEY": str(tmp_path / "k")}, "cannot load"),
             ({"ORCH_API_KEYS": "abc:nothex"}, "ORCH_API_KEYS"))
    for i, (extra, words) in enumerate(cases):
        env = services.orchestrator_env(port=free_port(), token="t")
        env.update(extra)
        orch = Service(services.orchestrator_command(), env, "http://unused", tmp_path / f"orch-{i}.log")
        assert orch.proc.wait(timeout=30) == 2
        orch.stop()
        assert words in orch.log(), orch.log()


home = home_fixture("sec")


def test_up_tls_api_keys_status_bench_keys_and_a_changed_certificate(home, tiny_model, tmp_path):
    up = cli("up", "--name", "sec", "--workers", "1", "--containers-per-worker", "1", "--model", tiny_model,
                   "--tls", "--api-keys", "--json", check=True)
    made = json.loads(up.stdout)
    assert made["orchestrator_url"].startswith("https://127.0.0.1:") and len(made["tls_fingerprint"]) == 64
    first = made["api_key"]["key"]
    state = ClusterState.load("sec")
    url, session = state.orchestrator_url, tls.pinned_session(state.tls_cert, state.tls_fingerprint)
    assert cli("status", "--name", "sec", "--json", check=True).returncode == 0
    post = lambda key: session.post(url + "/new_request", json={"text": "hi"}, timeout=10,  # noqa: E731
                                    headers={"Authorization": f"Bearer {key}"} if key else {})
    assert post(None).status_code == 401 and post(first).status_code == 200
    created = cli("keys", "create", "--name", "sec", check=True).stdout
    second = created.strip()
    assert created == second + "\n" and second.startswith("mlk_")  # the key alone on stdout
    assert post(second).status_code == 200  # at once, no restart
    listed = json.loads(cli("keys", "list", "--name", "sec", "--json", check=True).stdout)["keys"]
    second_id = second.split("_")[1]
    assert {k["id"] for k in listed} == {made["api_key"]["id"], second_id}
    result_file = tmp_path / "bench.json"
    cli("bench", "--name", "sec", "--concurrency", "2", "--requests", "20", "--json", str(result_file),
              env={**os.environ, "MLCLUSTER_API_KEY": second}, check=True)
    result = json.loads(result_file.read_text())
    assert result["requests"] == 20 and result["ok"] == 20, result
    cli("bench", "--name", "sec", "--concurrency", "1", "--requests", "5", "--json", str(result_file), check=False)
    result = json.loads(result_file.read_text())
    assert result["ok"] == 0 and result["errors_by_kind"] == {"http_401": 5}, result["errors_by_kind"]
    cli("keys", "revoke", second_id, "--name", "sec", check=True)
    assert post(second).status_code == 401 and post(first).status_code == 200
    # Keys never in the state, the logs or /metrics.
    texts = [(home / "sec" / "state.json").read_text(), session.get(url + "/metrics", timeout=5).text]
    texts += [p.read_text(errors="replace") for p in (home / "sec").rglob("*.log")]
    for key in (first, second):
        assert all(secret_of(key) not in t for t in texts)
    assert hashlib.sha256(first.encode()).hexdigest() in texts[0]
    # `up` does not restart a running orchestrator: another certificate is refused, not recorded.
    other = tls.make_self_signed(tmp_path / "other", "sec")
    again = cli("up", "--name", "sec", "--workers", "1", "--containers-per-worker", "1", "--model", tiny_model,
                      "--tls-cert", other.cert_path, "--tls-key", other.key_path, check=False)
    assert again.returncode == 1 and "another certificate" in again.stderr, again.stderr
    assert ClusterState.load("sec").tls_fingerprint == state.tls_fingerprint
    # Another certificate than the recorded one is refused by status and bench.
    data = json.loads((home / "sec" / "state.json").read_text())
    data.update(tls_cert=other.cert_path, tls_fingerprint=other.fingerprint)
    (home / "sec" / "state.json").write_text(json.dumps(data))
    for args in (("status", "--name", "sec"), ("bench", "--name", "sec", "--requests", "5")):
        refused = cli(*args, check=False)
        assert refused.returncode == 1 and "not the one recorded" in refused.stderr, refused.stderr
    session.close()
    cli("down", "--name", "sec", "--yes", check=True)


def test_the_certificate_can_be_given_inline_as_a_remote_orchestrator_gets_it(cluster, tmp_path):
    """What the ssh and docker runtimes pass (security.orchestrator_env(inline=True)): base64 of the PEM files."""
    cert = tls.make_self_signed(tmp_path, "inline")
    state = ClusterState(name="inline", provider="ssh", token="t", tls_cert=cert.cert_path, tls_key=cert.key_path,
                         tls_fingerprint=cert.fingerprint)
    inline = security.orchestrator_env(state, inline=True)
    assert set(inline) == {"ORCH_TLS_CERT_B64", "ORCH_TLS_KEY_B64"}
    port = free_port()
    env = {**services.orchestrator_env(port=port, token="test-token"), **inline}
    orch = Service(services.orchestrator_command(), env, f"https://127.0.0.1:{port}", tmp_path / "orch.log")
    cluster.services.append(orch)
    with tls.pinned_session(cert.cert_path, cert.fingerprint) as http:
        wait_for(lambda: orch.proc.poll() is None and http.get(orch.url + "/health_check", timeout=2).ok,
                 "the orchestrator with an inline certificate")


@pytest.mark.parametrize("provider, url, cidr, tls_on, keys_on, warned", [
    ("local", "http://127.0.0.1:8000", "", False, False, False),
    ("ssh", "http://10.0.0.5:8000", "", False, False, False),         # a private address
    ("ssh", "http://198.51.100.7:8000", "", False, False, True),    # a documentation range, still public
    ("ssh", "https://54.1.2.3:8000", "", True, False, True),       # TLS without keys: anyone may send
    ("ssh", "https://head.example.com:8000", "", True, True, False),
    ("aws", "http://54.1.2.3:8000", "203.0.113.5/32", False, True, True),
    ("aws", "http://54.1.2.3:8000", "10.1.0.0/16", False, False, False),  # reachable from a private range only
    ("aws", "http://54.1.2.3:8000", "0.0.0.0/0", False, False, True),
])
def test_up_warns_when_an_endpoint_is_open_beyond_private_ranges(provider, url, cidr, tls_on, keys_on, warned):
    warning = security.exposure_warning(provider, url, cidr, tls_on, keys_on)
    assert (warning is not None) == warned, warning
    if warned:
        assert ("TLS" in warning) == (not tls_on) and ("API keys" in warning) == (not keys_on)


def test_a_bad_inline_certificate_is_one_sentence_and_exit_2(tmp_path):
    env = {**services.orchestrator_env(port=free_port(), token="t"),
           "ORCH_TLS_CERT_B64": "bm90IGEgY2VydA==", "ORCH_TLS_KEY_B64": "bm90IGEga2V5"}
    orch = Service(services.orchestrator_command(), env, "http://unused", tmp_path / "orch.log")
    assert orch.proc.wait(timeout=30) == 2
    orch.stop()
    assert "cannot load the TLS certificate and key given in ORCH_TLS_CERT_B64" in orch.log()
    assert "Traceback" not in orch.log()
