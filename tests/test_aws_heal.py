"""Replacing lost worker instances (issues 20 + 21): the pure rule on its own
(tables of instances in, plan out), then `heal` against moto's server with a
reclaimed (terminated) spot instance and the cap."""
from __future__ import annotations

import pytest

from mlcluster.elastic import aws_heal as heal
from mlcluster.providers.aws.ec2 import Instance
from mlcluster.providers.aws.fleet import launch_spec_of, worker_cap
from mlcluster.providers.aws.options import AWSOptions, Market
from support.aws import RecordingUI, make_provider, make_spec, provision
from support.moto import Fault, ec2_client, nothing_tagged

SPOT_ASKED = {"InstanceMarketOptions.MarketType": "spot"}


def inst(name: str, state: str, id_: str = "") -> Instance:
    return Instance(id_ or f"i-{name}", name, "m4.large", "us-east-1a", state, "", "")


RECORDED = {"orchestrator": "i-orchestrator", "worker1": "i-worker1", "worker2": "i-worker2", "worker3": "i-worker3"}


@pytest.mark.parametrize("states,cap,replaced,held", [
    # nothing lost: nothing to do, whatever the cap
    (["running", "running", "running"], 3, [], []),
    (["running", "running", "running"], 9, [], []),
    # terminated and shutting-down are lost; stopped and pending are not
    (["terminated", "running", "running"], 3, ["worker1"], []),
    (["shutting-down", "stopped", "pending"], 3, ["worker1"], []),
    # two lost, the cap allows one more: one
    (["terminated", "terminated", "running"], 2, ["worker1"], ["worker2"]),
    # a pending instance counts against the cap
    (["terminated", "pending", "running"], 2, [], ["worker1"]),
    # over the cap already (cap lowered): nothing launched
    (["terminated", "running", "running"], 1, [], ["worker1"]),
    (["terminated", "terminated", "terminated"], 3, ["worker1", "worker2", "worker3"], []),
])
def test_decide(states, cap, replaced, held):
    found = [inst("orchestrator", "running")] + [inst(f"worker{i}", s) for i, s in enumerate(states, 1)]
    plan = heal.decide(RECORDED, found, cap)
    assert [lost.name for lost in plan.replace] == replaced
    assert [lost.name for lost in plan.held] == held
    assert plan.live == sum(1 for s in states if s in ("pending", "running", "stopping", "stopped"))


def test_decide_an_unknown_instance_is_lost_and_a_replaced_one_is_not():
    found = [inst("orchestrator", "running"), inst("worker2", "terminated"),
             inst("worker2", "pending", "i-new2"),  # already replaced; the record still names the old id
             inst("worker3", "running")]
    plan = heal.decide(RECORDED, found, 3)
    assert [(lost.name, lost.old_id) for lost in plan.replace] == [("worker1", "i-worker1")]
    assert "unknown to EC2" in plan.replace[0].reason


def test_decide_orders_workers_by_number():
    recorded = {f"worker{i}": f"i-{i}" for i in (10, 2, 1)}
    plan = heal.decide(recorded, [], 2)
    assert [lost.name for lost in plan.replace] == ["worker1", "worker2"] and plan.held[0].name == "worker10"


def lifecycle_and_tags(server, instance_id: str) -> tuple[str, dict[str, str]]:
    d = ec2_client(server).describe_instances(InstanceIds=[instance_id])["Reservations"][0]["Instances"][0]
    return d.get("InstanceLifecycle", "on-demand"), {t["Key"]: t["Value"] for t in d["Tags"]}


def connect(spec):
    return make_provider().connect(AWSOptions.from_spec(spec))


def test_a_reclaimed_spot_worker_is_replaced_by_a_tagged_one_within_the_cap(moto):
    spec = make_spec(moto, workers=3, spot=True)
    instances, state = provision(spec)
    ec2_client(moto).terminate_instances(InstanceIds=[instances["worker1"].id, instances["worker2"].id])
    aws = connect(spec)
    launch, zones, market = launch_spec_of(aws, state)
    assert market == Market(spot=True) and launch.image.id and launch.group_id == state.resources.aws.security_group

    result = heal.heal(aws, launch, zones, state.resources.aws.instances, cap=2, market=market)
    assert [(r.name, r.old_id, r.market) for r in result.replaced] == [("worker1", instances["worker1"].id, "spot")]
    assert [lost.name for lost in result.held] == ["worker2"] and result.refused == []
    new = result.replaced[0].new_id
    lifecycle, tags = lifecycle_and_tags(moto, new)
    assert lifecycle == "spot"
    assert (tags["mlcluster:cluster"] == "lab" and tags["mlcluster:name"] == "worker1"
            and tags["mlcluster:role"] == "worker")
    heal.record(state, aws, result)
    assert state.resources.aws.instances["worker1"] == new and state.resources.aws.markets["worker1"] == "spot"

    again = heal.heal(aws, launch, zones, state.resources.aws.instances, cap=2, market=market)
    assert again.replaced == [] and [lost.name for lost in again.held] == ["worker2"]
    assert moto.faults.count("RunInstances") == 4 + 1  # the cap held: no second launch
    more = heal.heal(aws, launch, zones, state.resources.aws.instances, cap=3, market=market)
    assert [r.name for r in more.replaced] == ["worker2"]

    options = {"region": "us-east-1", "endpoint_url": moto.url}
    assert make_provider(options=options).down("lab", state, RecordingUI()) == []
    assert nothing_tagged(moto, "lab")


def test_a_replacement_refused_spot_falls_back_or_is_refused(moto):
    spec = make_spec(moto, workers=2, spot=True)
    instances, state = provision(spec)
    ec2_client(moto).terminate_instances(InstanceIds=[instances["worker1"].id, instances["worker2"].id])
    aws = connect(spec)
    launch, zones, _ = launch_spec_of(aws, state)
    moto.faults.inject(Fault("RunInstances", "SpotMaxPriceTooLow", times=-1, when=SPOT_ASKED))
    refused = heal.heal(aws, launch, zones, state.resources.aws.instances, cap=2, market=Market(True, "never"))
    assert refused.replaced == [] and [(lost.name, code) for lost, code in refused.refused] == [
        ("worker1", "SpotMaxPriceTooLow"), ("worker2", "SpotMaxPriceTooLow")]
    fell_back = heal.heal(aws, launch, zones, state.resources.aws.instances, cap=2, market=Market(True))
    assert [(r.name, r.market, r.refused) for r in fell_back.replaced] == [
        ("worker1", "on-demand", "SpotMaxPriceTooLow"), ("worker2", "on-demand", "SpotMaxPriceTooLow")]
    assert lifecycle_and_tags(moto, fell_back.replaced[0].new_id)[0] == "on-demand"


def test_worker_cap():
    from mlcluster.state import ClusterSpec
    assert worker_cap(ClusterSpec(name="x", provider="aws", workers=3)) == 3
    elastic = ClusterSpec(name="x", provider="aws", workers=1, containers_per_worker=2, min_containers=1,
                          max_containers=5)
    assert worker_cap(elastic) == 3  # 5 containers need 3 hosts of 2


def test_the_controllers_entry_point_replaces_records_and_writes_the_events(moto):
    from mlcluster.elastic.events import read
    from mlcluster.state import ClusterState
    spec = make_spec(moto, workers=2, spot=True)
    instances, state = provision(spec)
    ec2_client(moto).terminate_instances(InstanceIds=[instances["worker2"].id])
    moto.faults.inject(Fault("RunInstances", "SpotMaxPriceTooLow", when=SPOT_ASKED))
    result = heal.replace_lost_workers(state, clock=lambda: 1000.0)  # cap: the 2 workers asked for
    assert [(r.name, r.market, r.refused) for r in result.replaced] == [("worker2", "on-demand", "SpotMaxPriceTooLow")]
    saved = ClusterState.load("lab").resources.aws
    assert saved.instances["worker2"] == result.replaced[0].new_id and saved.markets["worker2"] == "on-demand"
    kinds = [(e.kind, e.container, e.time) for e in read(state.dir)]
    assert ("heal", "worker2", 1000.0) in kinds and ("spot_fallback", "worker2", 1000.0) in kinds
    (healed,) = [e for e in read(state.dir) if e.kind == "heal"]
    assert instances["worker2"].id in healed.reason and result.replaced[0].new_id in healed.reason
    assert heal.replace_lost_workers(ClusterState.load("lab")).replaced == []  # replaced: nothing more to do
