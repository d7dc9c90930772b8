"""The orchestrator as a real process (httptools on raw asyncio protocols), with overhead-test workers
(real worker processes that answer after a fixed time, no model): admission
control, tokens, bad input, the read-only endpoints, persistence, draining."""
from __future__ import annotations

import http.client
import json
import socket

import pytest
import requests

from support.serving import AUTH, TOKEN, Background, Cluster, error_of, port_of
from support.waiting import wait_for


@pytest.fixture
def make_cluster(tmp_path):
    clusters: list[Cluster] = []

    def make() -> Cluster:
        cluster = Cluster(tmp_path)
        clusters.append(cluster)
        return cluster

    yield make
    for cluster in clusters:
        cluster.stop()


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """Two quick workers behind one orchestrator, shared by the read-mostly tests."""
    c = Cluster(tmp_path_factory.mktemp("orchestrator"))
    try:
        c.start_workers(["w1", "w2"], service_ms=0)
        c.start_orchestrator()
        c.register()
        yield c
    finally:
        c.stop()


# -- the token ------------------------------------------------------------------
BAD_AUTH = [{}, {"Authorization": "Bearer wrong-token"}, {"Authorization": TOKEN},
            {"Authorization": f"Basic {TOKEN}"}, {"Authorization": "Bearer "}]


@pytest.mark.parametrize("headers", BAD_AUTH, ids=["none", "wrong", "bare", "basic", "empty"])
def test_admin_endpoints_need_the_token(cluster, headers):
    before = cluster.status()["containers"]
    calls = [
        ("post", "/workers", {"json": {"containers": [{"host": "127.0.0.1", "port": 9}]}}),
        ("delete", "/workers/w1", {}),
        ("post", "/receive_ips_from_workers", {"json": ["127.0.0.9"]}),
    ]
    for method, path, kw in calls:
        r = requests.request(method, cluster.url + path, headers=headers, timeout=10, **kw)
        assert "Bearer" in error_of(r, 401)
        assert r.headers["WWW-Authenticate"] == "Bearer"
    assert [c["id"] for c in cluster.status()["containers"]] == [c["id"] for c in before]


def test_the_lab_contract_registers_two_containers_per_ip(make_cluster):
    c = make_cluster()
    w1, w2 = c.start_workers(["a", "b"], service_ms=0)
    c.start_orchestrator(extra_env={"ORCH_LAB_PORTS": f"{port_of(w1)},{port_of(w2)}"})
    r = requests.post(c.url + "/receive_ips_from_workers", json=["127.0.0.1"], headers=AUTH, timeout=10)
    assert r.status_code == 201, r.text
    assert sorted(x["port"] for x in r.json()["registered"]) == sorted([port_of(w1), port_of(w2)])
    wait_for(lambda: [x["status"] for x in c.status()["containers"]] == ["free", "free"], "both containers free")
    answer = c.new_request({"text": "lab"}).json()
    assert answer["result"]["text"] == "lab" and answer["container"]["host"] == "127.0.0.1"


# -- bad input ------------------------------------------------------------------
BAD_INFERENCE_BODIES = {
    "not json": b"this is not json",
    "a json list": b'["text"]',
    "a json string": b'"text"',
    "text not a string": b'{"text": 5}',
    "empty text": b'{"text": "  "}',
    "texts not a list": b'{"texts": "abc"}',
    "texts of numbers": b'{"texts": [1, 2]}',
    "empty texts": b'{"texts": []}',
    "too many texts": json.dumps({"texts": ["t"] * 65}).encode(),
    "unknown field": b'{"text": "a", "temperature": 1}',
    "text and texts": b'{"text": "a", "texts": ["b"]}',
    "deeply nested": b'{"text": ' + b"[" * 100_000 + b"]" * 100_000 + b"}",
    "invalid utf-8": b'{"text": "\xff\xfe"}',
}


@pytest.mark.parametrize("body", BAD_INFERENCE_BODIES.values(), ids=BAD_INFERENCE_BODIES.keys())
def test_bad_inference_input_is_refused_before_it_takes_a_container(cluster, body):
    served = {cid: cluster.worker_stats(cid)["served"] for cid in cluster.workers}
    r = cluster.new_request(data=body, headers={"Content-Type": "application/json"})
    error_of(r, 400)
    assert {cid: cluster.worker_stats(cid)["served"] for cid in cluster.workers} == served


def test_bad_input_messages_say_what_is_wrong(cluster):
    unknown_field = cluster.new_request(data=BAD_INFERENCE_BODIES["unknown field"])
    assert "unknown field(s): temperature" in error_of(unknown_field, 400)
    assert "at most 64" in error_of(cluster.new_request(data=BAD_INFERENCE_BODIES["too many texts"]), 400)
    assert "JSON" in error_of(cluster.new_request(data=b"{oops"), 400)


def test_a_body_over_the_limit_is_413_also_when_chunked(cluster):
    big = json.dumps({"text": "a" * (1 << 20)}).encode()
    assert "limit" in error_of(cluster.new_request(data=big), 413)
    chunks = (big[i:i + 65536] for i in range(0, len(big), 65536))  # no Content-Length
    assert "limit" in error_of(cluster.new_request(data=chunks), 413)
    r = requests.post(cluster.url + "/workers", data=b"[" + b" " * (1 << 20) + b"]", headers=AUTH, timeout=10)
    error_of(r, 413)


BAD_REGISTRATIONS = {
    "not json": b"nope",
    "empty list": b"[]",
    "empty containers": b'{"containers": []}',
    "not an object": b'{"containers": [5]}',
    "no port": b'{"host": "127.0.0.1"}',
    "port as string": b'{"host": "127.0.0.1", "port": "80"}',
    "port zero": b'{"host": "127.0.0.1", "port": 0}',
    "port too big": b'{"host": "127.0.0.1", "port": 70000}',
    "host with a path": b'{"host": "evil/x", "port": 80}',
    "capacity zero": b'{"host": "127.0.0.1", "port": 80, "capacity": 0}',
    "capacity bool": b'{"host": "127.0.0.1", "port": 80, "capacity": true}',
    "unknown field": b'{"host": "127.0.0.1", "port": 80, "gpu": 1}',
    "extra top-level field": b'{"containers": [{"host": "127.0.0.1", "port": 80}], "x": 1}',
    "same id twice": b'[{"host": "h", "port": 1, "id": "x"}, {"host": "h", "port": 2, "id": "x"}]',
}


@pytest.mark.parametrize("body", BAD_REGISTRATIONS.values(), ids=BAD_REGISTRATIONS.keys())
def test_bad_registrations_are_refused(cluster, body):
    before = cluster.status()["containers"]
    error_of(requests.post(cluster.url + "/workers", data=body, headers=AUTH, timeout=10), 400)
    assert cluster.status()["containers"] == before


@pytest.mark.parametrize("body", [b"nope", b"[]", b'["300.1.2.3"]', b'[5]', b'{"ip": "127.0.0.1"}', b'["::1"]'])
def test_bad_lab_registrations_are_refused(cluster, body):
    error_of(requests.post(cluster.url + "/receive_ips_from_workers", data=body, headers=AUTH, timeout=10), 400)


def test_an_id_taken_by_another_address_is_a_conflict(cluster):
    r = requests.post(cluster.url + "/workers", json={"id": "w1", "host": "127.0.0.1", "port": 9},
                      headers=AUTH, timeout=10)
    assert "w1" in error_of(r, 409)


def test_unknown_paths_and_methods_answer_json(cluster):
    error_of(requests.get(cluster.url + "/nope", timeout=10), 404)
    error_of(requests.get(cluster.url + "/new_request", timeout=10), 405)
    error_of(requests.delete(cluster.url + "/workers/nope", headers=AUTH, timeout=10), 404)


# -- the read-only endpoints ------------------------------------------------------
def test_answer_status_workers_info_and_metrics_shapes(cluster):
    answer = cluster.new_request({"texts": ["one", "two"]}).json()
    assert answer["result"]["texts"] == ["one", "two"] and len(answer["result"]["results"]) == 2
    assert answer["container"]["id"] in cluster.workers and answer["container"]["host"] == "127.0.0.1"
    assert answer["attempts"] == 1 and answer["queue_ms"] >= 0 and answer["total_ms"] >= answer["queue_ms"]

    status = cluster.status()
    assert set(status) == {"containers", "queue", "in_flight", "served", "failed", "draining", "canary", "uptime_s"}
    assert status["canary"] is None
    assert status["queue"] == {"depth": 0, "limit": 100} and status["uptime_s"] >= 0
    for c in status["containers"]:
        assert set(c) == {"id", "host", "port", "capacity", "version", "status", "in_flight", "served", "failed",
                          "recent_latency_ms"}
        assert c["status"] == "free" and c["capacity"] == 1
    assert status["served"] == sum(c["served"] for c in status["containers"]) >= 1

    info = requests.get(cluster.url + "/workers_info", timeout=10).json()
    assert list(info) == ["workers info"]
    assert info["workers info"] == {
        cid: {"ip": "127.0.0.1", "port": port_of(w), "status": "free"} for cid, w in cluster.workers.items()}

    assert requests.get(cluster.url + "/health_check", timeout=10).json() == {"status": "alive"}
    metrics = requests.get(cluster.url + "/metrics", timeout=10).text
    for series in ["orchestrator_queue_depth 0.0", "orchestrator_in_flight 0.0",
                   "orchestrator_request_seconds_bucket", "orchestrator_queue_wait_seconds_bucket",
                   'orchestrator_requests_total{status="200"}', "# TYPE orchestrator_errors_total counter"]:
        assert series in metrics, series


# -- admission control -----------------------------------------------------------
def test_a_full_queue_answers_503_with_retry_after_at_once(make_cluster):
    c = make_cluster()
    c.start_workers(["slow"], service_ms=1500)
    c.start_orchestrator(queue_limit=2)
    c.register()
    bg = Background(3)
    try:
        for i in range(3):  # one in flight, two queued: arrivals in a known order
            bg.submit(c.new_request, {"text": f"r{i}"})
            wait_for(lambda: c.arrived() == i + 1, f"request {i} to arrive")
        assert c.status()["queue"]["depth"] == 2  # r0 is still in flight: the queue is full now
        r = c.new_request({"text": "one too many"})
        assert "queue is full" in error_of(r, 503)
        assert r.headers["Retry-After"] == "1"
        answers = [x.json() for x in bg.results()]
    finally:
        bg.close()
    assert [a["result"]["text"] for a in answers] == ["r0", "r1", "r2"]
    assert 'orchestrator_errors_total{kind="queue_full"} 1.0' in requests.get(c.url + "/metrics", timeout=10).text


def test_a_request_that_waits_too_long_gets_504(make_cluster):
    c = make_cluster()
    c.start_workers(["slow"], service_ms=1500)
    c.start_orchestrator(queue_timeout_s=0.3)
    c.register()
    bg = Background(1)
    try:
        first = bg.submit(c.new_request, {"text": "in flight"})
        wait_for(lambda: c.container("slow")["in_flight"] == 1, "the first request to be in flight")
        assert "no container became free" in error_of(c.new_request({"text": "late"}), 504)
        assert c.status()["queue"]["depth"] == 0  # the timed-out request left the queue
        assert first.result(timeout=60).status_code == 200
    finally:
        bg.close()
    assert 'orchestrator_errors_total{kind="queue_timeout"} 1.0' in requests.get(c.url + "/metrics", timeout=10).text


def test_nothing_registered_answers_503(make_cluster):
    c = make_cluster()
    c.start_orchestrator()
    r = c.new_request({})
    assert "no worker containers" in error_of(r, 503)
    assert r.headers["Retry-After"]


# -- registry: persistence and draining ------------------------------------------
def test_a_restarted_orchestrator_remembers_its_workers(make_cluster, tmp_path):
    c = make_cluster()
    c.start_workers(["w1", "w2"], service_ms=0)
    status_file = tmp_path / "state" / "orchestrator.json"
    c.start_orchestrator(status_file=str(status_file))
    c.register()
    saved = json.loads(status_file.read_text())
    assert sorted((x["id"], x["port"]) for x in saved["containers"]) == sorted(
        (cid, port_of(w)) for cid, w in c.workers.items())
    c.stop_orchestrator()

    c.start_orchestrator(status_file=str(status_file))  # a new process on a new port
    wait_for(lambda: sorted((x["id"], x["status"]) for x in c.status()["containers"])
             == [("w1", "free"), ("w2", "free")],
             "the restored containers to be free")
    answers = [c.new_request({"text": f"after restart {i}"}).json() for i in range(4)]
    assert {a["container"]["id"] for a in answers} == {"w1", "w2"}
    assert all(a["result"]["worker"] == a["container"]["id"] for a in answers)


def test_delete_drains_a_container(make_cluster, tmp_path):
    c = make_cluster()
    c.start_workers(["w1", "w2"], service_ms=1000)
    status_file = tmp_path / "status.json"
    c.start_orchestrator(status_file=str(status_file))
    c.register()
    bg = Background(1)
    try:
        first = bg.submit(c.new_request, {"text": "in flight"})
        busy = wait_for(lambda: next((x["id"] for x in c.status()["containers"] if x["in_flight"]), None),
                        "a request in flight")
        other = "w2" if busy == "w1" else "w1"
        r = requests.delete(f"{c.url}/workers/{busy}", headers=AUTH, timeout=10)
        assert r.status_code == 200 and r.json() == {"draining": busy, "in_flight": 1, "removed": False}
        assert c.container(busy)["status"] == "draining"
        assert [x["id"] for x in json.loads(status_file.read_text())["containers"]] == [other]
        # New requests go elsewhere while the draining one finishes its request.
        assert c.new_request({"text": "new"}).json()["container"]["id"] == other
        done = first.result(timeout=60).json()
        assert done["container"]["id"] == busy and done["result"]["text"] == "in flight"
    finally:
        bg.close()
    wait_for(lambda: c.container(busy) is None, "the drained container to leave the registry")
    assert c.worker_stats(busy)["served"] == 1
    assert requests.delete(f"{c.url}/workers/{busy}", headers=AUTH, timeout=10).status_code == 404
    # An idle container is removed at once.
    r = requests.delete(f"{c.url}/workers/{other}", headers=AUTH, timeout=10)
    assert r.json() == {"draining": other, "in_flight": 0, "removed": True}
    assert c.status()["containers"] == []


def test_callers_connections_are_kept_alive_even_with_a_large_queue(make_cluster):
    """A large queue limit must not cost callers their kept-alive connections
    (gunicorn's threads once did: one per queue place ate the idle-connection room)."""
    c = make_cluster()
    c.start_workers(["w"], service_ms=0)
    c.start_orchestrator(queue_limit=2000)
    c.register()
    conn = http.client.HTTPConnection("127.0.0.1", port_of(c.orchestrator), timeout=10)
    try:
        local_ports = set()
        for _ in range(3):
            conn.request("POST", "/new_request", body=b"{}", headers={"Content-Type": "application/json"})
            response = conn.getresponse()
            assert response.status == 200 and not response.will_close  # HTTP/1.1: kept alive unless "close"
            response.read()
            local_ports.add(conn.sock.getsockname()[1])
        assert len(local_ports) == 1  # one connection served all three
    finally:
        conn.close()


def established_to(port: int) -> int:
    """Open TCP connections (ESTABLISHED, from /proc) whose far end is 127.0.0.1:`port`."""
    count = 0
    for line in open("/proc/net/tcp").read().splitlines()[1:]:
        fields = line.split()
        if fields[3] == "01" and int(fields[2].split(":")[1], 16) == port:
            count += 1
    return count


def test_a_removed_container_keeps_no_connection_from_the_orchestrator(make_cluster):
    c = make_cluster()
    w1, w2 = c.start_workers(["w1", "w2"], service_ms=0)
    c.start_orchestrator()
    c.register()
    for i in range(6):
        assert c.new_request({"text": f"warm {i}"}).status_code == 200
    assert established_to(port_of(w1)) >= 1  # kept alive in the orchestrator's pool
    r = requests.delete(f"{c.url}/workers/w1", headers=AUTH, timeout=10)
    assert r.json() == {"draining": "w1", "in_flight": 0, "removed": True}
    wait_for(lambda: established_to(port_of(w1)) == 0, "the orchestrator to close its connections to w1")
    assert c.new_request({"text": "after"}).json()["container"]["id"] == "w2"
    assert established_to(port_of(w2)) >= 1


def test_a_caller_that_leaves_while_queued_never_reaches_a_container(make_cluster):
    c = make_cluster()
    c.start_workers(["slow"], service_ms=1500)
    c.start_orchestrator()
    c.register()
    bg = Background(1)
    try:
        first = bg.submit(c.new_request, {"text": "in flight"})
        wait_for(lambda: c.container("slow")["in_flight"] == 1, "the first request to be in flight")
        body = b'{"text": "abandoned"}'
        leaver = socket.create_connection(("127.0.0.1", port_of(c.orchestrator)), timeout=10)
        leaver.sendall(b"POST /new_request HTTP/1.1\r\nHost: o\r\nContent-Type: application/json\r\n"
                       b"Content-Length: %d\r\n\r\n%b" % (len(body), body))
        wait_for(lambda: c.status()["queue"]["depth"] == 1, "the second request to wait in the queue")
        leaver.close()
        wait_for(lambda: c.status()["queue"]["depth"] == 0, "the abandoned request to leave the queue")
        assert first.result(timeout=60).json()["result"]["text"] == "in flight"
    finally:
        bg.close()
    # Had it stayed queued, it would be in flight now, on the container the first one freed.
    assert c.container("slow")["in_flight"] == 0
    assert c.worker_stats("slow")["served"] == 1
    assert 'orchestrator_errors_total{kind="caller_gone"} 1.0' in requests.get(c.url + "/metrics", timeout=10).text
    assert c.new_request({"text": "still serving"}).status_code == 200


def test_latency_histograms_count_every_answer(make_cluster):
    c = make_cluster()
    c.start_workers(["w"], service_ms=0)
    c.start_orchestrator()
    c.register()
    for i in range(7):
        assert c.new_request({"text": f"r{i}"}).status_code == 200
    assert c.new_request(data=b"not json").status_code == 400
    metrics = requests.get(c.url + "/metrics", timeout=10).text
    values = {line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1])
              for line in metrics.splitlines() if line and not line.startswith("#")}
    assert values['orchestrator_requests_total{status="200"}'] == 7
    assert values['orchestrator_requests_total{status="400"}'] == 1
    for name in ("orchestrator_request_seconds", "orchestrator_queue_wait_seconds"):
        buckets = [v for k, v in values.items() if k.startswith(name + "_bucket")]
        assert buckets == sorted(buckets) and buckets[-1] == values[name + "_count"] == 7  # cumulative, +Inf last
        assert values[name + '_bucket{le="30.0"}'] == 7
    assert 0 < values["orchestrator_request_seconds_sum"] < 7 * 5


def test_a_canary_is_set_and_ended_with_the_token_and_bad_settings_get_400(cluster):
    url = cluster.url + "/canary"
    assert "Bearer" in error_of(requests.put(url, json={"version": "v2", "percent": 25}, timeout=10), 401)
    for bad in ({"version": "v2"}, {"version": "", "percent": 25}, {"version": "v2", "percent": 100},
                {"version": "v2", "percent": True}, {"version": "v2", "percent": 5, "x": 1}, [1]):
        error_of(requests.put(url, json=bad, headers=AUTH, timeout=10), 400)
    assert cluster.status()["canary"] is None
    r = requests.put(url, json={"version": "v2", "percent": 25}, headers=AUTH, timeout=10)
    assert r.status_code == 200 and cluster.status()["canary"] == {"version": "v2", "percent": 25.0}
    r = requests.delete(url, headers=AUTH, timeout=10)
    assert r.status_code == 200 and cluster.status()["canary"] is None
    bad_version = {"containers": [{"host": "127.0.0.1", "port": 1, "version": 7}]}
    error_of(requests.post(cluster.url + "/workers", json=bad_version, headers=AUTH, timeout=10), 400)
