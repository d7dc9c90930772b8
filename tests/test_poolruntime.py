"""The environment a stand-in gets on another pool host, for each pair of runtimes
(elastic/poolruntime.py's pure part), and the pool config's runtime fields."""
from __future__ import annotations

import pytest

from mlcluster.elastic.poolconfig import PoolConfig, PoolMember
from mlcluster.elastic.poolruntime import stand_in_service
from mlcluster.resources import HostConfig
from mlcluster.services import BIND, MARKER_VAR


def member(name: str, runtime: str, model: str) -> PoolMember:
    host = HostConfig(name=name, address=f"10.9.0.{len(name)}", private_address=f"10.9.0.{len(name)}", user="u",
                      port=22, key="k", runtime=runtime, python="", workdir=f"/w/{name}", bind=f"10.9.0.{len(name)}")
    return PoolMember(host=host, host_key="ssh-ed25519 AAAA", python="python3", model=model, slots=2, runtime=runtime,
                      images={"worker": "mlcluster-worker:abc"} if runtime == "docker" else {})


@pytest.mark.parametrize("home_runtime, there_runtime, bind, model", [
    ("docker", "docker", "0.0.0.0:5003", "/model"),
    ("process", "docker", "0.0.0.0:5003", "/model"),
    ("docker", "process", "10.9.0.5:5003", "/m/spare"),
    ("process", "process", "10.9.0.5:5003", "/m/spare"),
])
def test_a_local_model_stand_in_binds_and_finds_its_model_as_its_runtime_wants(home_runtime, there_runtime, bind,
                                                                                model):
    home, there = member("w1", home_runtime, "/m/w1"), member("spare", there_runtime, "/m/spare")
    env = {BIND: "whatever:5000", "MODEL": "/model" if home_runtime == "docker" else "/m/w1", "WORKER_ID": "w1-1",
           MARKER_VAR: "ssh:c:w1", "WORKER_TOKEN": "t"}
    service = stand_in_service(env, "/m/w1", home, there, "w1-1-on-spare", 5003, "ssh:c:spare")
    assert (service.id, service.kind, service.port, service.model_dir) == ("w1-1-on-spare", "worker", 5003, "/m/spare")
    assert service.env == {BIND: bind, "MODEL": model, "WORKER_ID": "w1-1-on-spare", MARKER_VAR: "ssh:c:spare",
                           "WORKER_TOKEN": "t"}
    assert env["WORKER_ID"] == "w1-1"  # the home container's own is left as it was


def test_a_hub_model_stays_a_hub_model():
    home, there = member("w1", "docker", "org/model"), member("spare", "docker", "org/model")
    service = stand_in_service({BIND: "0.0.0.0:5000", "MODEL": "org/model"}, "", home, there, "x", 5001, "m")
    assert service.env["MODEL"] == "org/model" and service.model_dir == ""


def test_the_config_keeps_each_hosts_runtime_and_images():
    config = PoolConfig(cluster="c", admin_url="http://127.0.0.1:1", token="t", worker_port=5000, host_grace_s=2,
                        heal_grace_s=1, docker="docker",
                        hosts=[member("w1", "docker", "/m"), member("w2", "process", "/m")])
    again = PoolConfig.from_json(config.to_json())
    assert again == config
    assert [(m.runtime, m.images) for m in again.hosts] == [("docker", {"worker": "mlcluster-worker:abc"}),
                                                             ("process", {})]
