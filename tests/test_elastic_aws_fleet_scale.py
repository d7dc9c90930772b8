"""The Fleet's scaling half (elastic/aws_fleet.py) against moto's server: a
worker instance launched for containers with no room is tagged for the
cluster under the next free name and seen running; only an instance it
launched is terminated (never `up`'s workers, never the orchestrator); a
restarted controller knows what it launched."""
from __future__ import annotations

from mlcluster.elastic.aws_fleet import Fleet
from mlcluster.providers.aws.fleet import fleet_of
from mlcluster.providers.aws.options import AWSOptions
from support.aws import make_provider, make_spec, provision
from support.moto import instances_by_name


def states(server, cluster: str) -> dict[str, list[str]]:
    """Instance name -> the states of the instances of that name tagged for the cluster."""
    return {name: [state for _, state in found] for name, found in instances_by_name(server, cluster).items()}


def test_a_launched_worker_is_tagged_running_and_the_only_kind_terminated(moto, tmp_path):
    spec = make_spec(moto, workers=2, spot=True)
    instances, state = provision(spec)
    o = AWSOptions.from_spec(spec)
    config = fleet_of(make_provider().connect(o), state, o, 22)
    fleet = Fleet(config, spec.name, tmp_path, lambda *e: None)
    assert fleet.coming() == 0 and fleet.new_name() == "worker3"

    name, sentence = fleet.launch()
    assert name == "worker3" and "launched worker3" in sentence and "spot" in sentence
    assert states(moto, spec.name)["worker3"] == ["running"] and fleet.coming() == 1
    assert fleet.look(0.0) and fleet.coming() == 0  # seen running: a pool host from now on

    assert fleet.terminate("worker1") == "" and fleet.terminate("orchestrator") == ""  # not its own
    assert Fleet(config, spec.name, tmp_path, lambda *e: None).grown == {"worker3"}  # a restarted controller
    assert "terminated worker3" in fleet.terminate("worker3")
    found = states(moto, spec.name)
    assert found["worker3"][0] in ("shutting-down", "terminated")
    assert found["worker1"] == ["running"] and found["orchestrator"] == ["running"]
    assert "worker3" not in fleet.instances and fleet.grown == set()
    assert instances["worker1"].id == fleet.instances["worker1"]
