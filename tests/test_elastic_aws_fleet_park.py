"""The Fleet's parking half (elastic/aws_fleet.py) against moto's server:
one of `up`'s worker instances scaled away is terminated and parked, never
replaced as a lost one is (EC2's look launches nothing in its place); it is
launched again under its name, tagged; one that cannot be made ready goes
back to parked; one of `up`'s terminated while it holds only parked
containers is parked, one that holds containers is replaced as before; the
orchestrator's instance and one launched to scale are never scaled away; a
restarted controller knows what is parked."""
from __future__ import annotations

from mlcluster.elastic.aws_fleet import Fleet
from mlcluster.providers.aws.fleet import fleet_of
from mlcluster.providers.aws.options import AWSOptions
from support.aws import make_provider, make_spec, provision
from support.moto import ec2_client, instances_by_name

NAME = "fleetpark"  # unique to this file


def live(server, name: str) -> list[str]:
    return [i for i, state in instances_by_name(server, NAME).get(name, []) if state in ("pending", "running")]


def fleet_of_two_workers(server, directory) -> tuple[Fleet, dict, list[tuple[str, str, str]]]:
    """A provisioned 2-worker cluster's Fleet (what it says goes to the list returned), and its instances."""
    spec = make_spec(server, name=NAME, workers=2)
    instances, state = provision(spec)
    o = AWSOptions.from_spec(spec)
    said: list[tuple[str, str, str]] = []
    fleet = Fleet(fleet_of(make_provider().connect(o), state, o, 22), NAME, directory, lambda *e: said.append(e))
    return fleet, instances, said


def test_scaled_away_is_parked_not_replaced_and_comes_back_under_its_name(moto, tmp_path):
    fleet, instances, said = fleet_of_two_workers(moto, tmp_path)
    old = instances["worker2"].id

    assert fleet.scale_away("orchestrator") == "" and fleet.scale_away("worker9") == ""
    assert fleet.scale_away("worker2") == f"terminated worker2 ({old})"
    assert live(moto, "worker2") == [] and live(moto, "worker1") and live(moto, "orchestrator")
    assert fleet.parked == {"worker2": old} and "worker2" not in fleet.instances

    assert fleet.look(0.0) == [] and live(moto, "worker2") == []  # EC2's look: scaled away is not lost
    assert not [e for e in said if e[0] == "heal"], said
    restarted = Fleet(fleet.config, NAME, tmp_path, lambda *e: None)
    assert restarted.parked == {"worker2": old} and "worker2" not in restarted.instances
    assert fleet.new_name() == "worker3"  # a parked name is never given to a new instance

    name, sentence = fleet.launch("worker2")
    new = fleet.instances["worker2"]
    assert name == "worker2" and sentence.startswith(f"launched worker2 again ({new}, ")
    assert live(moto, "worker2") == [new] and new != old
    assert fleet.parked == {} and fleet.relaunched == {"worker2"} and fleet.grown == set()
    assert [r[:2] for r in fleet.look(1.0)] == [("worker2", new)]  # seen running: its pool host comes back
    assert fleet.terminate("worker2") == ""  # one of up's: never terminated as one launched to scale

    fleet.unready("worker2", "the worker image could not be shipped")  # back to parked, not replaced
    assert live(moto, "worker2") == [] and fleet.parked == {"worker2": new} and fleet.relaunched == set()
    assert any(e[0] == "error" and "its containers stay parked" in e[1] for e in said), said
    assert fleet.look(20.0) == [] and live(moto, "worker2") == []


def test_lost_while_empty_is_parked_and_lost_with_containers_is_replaced(moto, tmp_path):
    fleet, instances, said = fleet_of_two_workers(moto, tmp_path)
    grown, _ = fleet.launch()
    assert grown == "worker3" and fleet.scale_away("worker3") == ""  # one launched to scale: `terminate`'s
    ec2_client(moto).terminate_instances(InstanceIds=[instances["worker1"].id, instances["worker2"].id])

    fleet.look(0.0, frozenset({"worker1"}))  # worker1 held only parked containers; worker2 served
    assert fleet.parked == {"worker1": instances["worker1"].id} and live(moto, "worker1") == []
    assert any(e[0] == "scale_down" and "scaled away, not replaced" in e[1] and e[2] == "worker1" for e in said)
    assert len(live(moto, "worker2")) == 1 and live(moto, "worker2") != [instances["worker2"].id]
    assert any(e[0] == "heal" and e[2] == "worker2" for e in said), said  # lost: replaced, as before
    assert live(moto, "orchestrator") == [instances["orchestrator"].id]
