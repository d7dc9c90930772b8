"""An instance the controller launched that cannot be made ready (issue 20,
elastic/poolprepare.py) against moto's server: the pool runtime's preparation
fails on its host (this machine, the process runtime with an interpreter that
does not exist), the start fails with the reason, an `error` event names it,
and the instance is terminated rather than left billing: a replacement is
launched again at the next EC2 look (the existing rules, within the cap), one
launched to scale is gone. `up`'s own hosts are never prepared nor
terminated."""
from __future__ import annotations

import dataclasses

import pytest

from mlcluster.deploy.host import LocalHost, ServiceSpec
from mlcluster.elastic.aws_fleet import Fleet
from mlcluster.elastic.poolconfig import PoolMember
from mlcluster.elastic.poolhosts import Member, PinnedKeys
from mlcluster.elastic.poolruntime import PoolRuntime
from mlcluster.errors import MlclusterError
from mlcluster.providers.aws.fleet import fleet_of
from mlcluster.providers.aws.options import AWSOptions
from support.aws import make_provider, make_spec, provision
from support.moto import ec2_client, instances_by_name


def states(server, cluster: str, name: str) -> dict[str, str]:
    """Instance id -> state of the instances named `name` tagged for the cluster."""
    return dict(instances_by_name(server, cluster).get(name, []))


def member(name: str, tmp_path) -> Member:
    host = LocalHost(tmp_path)
    config = PoolMember(host=dataclasses.replace(host.config, name=name), host_key="",
                        python=str(tmp_path / "no-such-python"), model="", slots=1)
    found = Member(config, PinnedKeys({}), 0.0)
    found.host = host
    host.facts["python"] = config.python  # as its probe sets it
    return found


def test_an_instance_that_cannot_be_made_ready_is_terminated_and_replaced_again(moto, tmp_path):
    spec = make_spec(moto, workers=2, spot=True)
    instances, state = provision(spec)
    o = AWSOptions.from_spec(spec)
    said: list[tuple[str, str, str]] = []
    fleet = Fleet(fleet_of(make_provider().connect(o), state, o, 22), spec.name, tmp_path,
                  lambda kind, reason, container: said.append((kind, reason, container)))
    members = {n: member(n, tmp_path) for n in ("worker1", "worker2")}
    fresh: set[str] = set()
    runtime = PoolRuntime(spec.name, members, fresh, "", tmp_path, fleet.unready, fleet.ready)
    service = ServiceSpec("worker1-1", "worker", 5000, {})

    ec2_client(moto).terminate_instances(InstanceIds=[instances["worker1"].id])  # reclaimed
    replaced = fleet.look(100.0)
    assert [name for name, _, _ in replaced] == ["worker1"]
    first = fleet.instances["worker1"]
    fresh.add("worker1")  # the pool's `replaced`: the controller launched it
    with pytest.raises(MlclusterError, match="cannot import"):
        runtime.start(members["worker1"], service, "m")
    assert states(moto, spec.name, "worker1")[first] in ("shutting-down", "terminated")
    error = [s for s in said if s[0] == "error"]
    assert error and error[0][2] == "worker1" and "cannot import" in error[0][1] and first in error[0][1]
    assert fleet.look(200.0) and fleet.instances["worker1"] != first  # launched again, within the cap
    assert states(moto, spec.name, "worker1")[fleet.instances["worker1"]] == "running"

    name, _ = fleet.launch()  # one to scale, not ready either: terminated and forgotten
    members[name] = member(name, tmp_path)
    fresh.add(name)
    with pytest.raises(MlclusterError):
        runtime.start(members[name], service, "m")
    assert name not in fleet.instances and set(states(moto, spec.name, name).values()) <= {"shutting-down",
                                                                                           "terminated"}
    with pytest.raises(MlclusterError):  # up's own host: not prepared (its start fails, nothing terminated)
        runtime.start(members["worker2"], service, "m")
    assert states(moto, spec.name, "worker2") == {instances["worker2"].id: "running"}
    assert [s for s in said if s[0] == "prepare"] == []
