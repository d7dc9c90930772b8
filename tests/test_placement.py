"""The pool's healing rule (mlcluster/elastic/placement.py), pure: hosts and
containers in, actions out; no processes, the time passed in."""
from __future__ import annotations

import dataclasses

import pytest

from mlcluster.elastic.placement import Placed, PoolHost, occupancy, overdue, plan, roomiest
from mlcluster.elastic.pool_setup import authorized_line
from mlcluster.elastic.poolconfig import PoolConfig, PoolMember, WorkerSpec
from mlcluster.errors import MlclusterError
from mlcluster.providers.ssh.options import parse_options
from mlcluster.resources import HostConfig
from mlcluster.state import ClusterSpec

GRACE, HEAL = 10.0, 5.0


def hosts(*specs: tuple[str, bool, float], slots: int = 2) -> list[PoolHost]:
    return [PoolHost(name, reachable, since, slots) for name, reachable, since in specs]


def up_containers(serving: bool = True, **stand_ins: str) -> list[Placed]:
    """w1-1, w1-2 on w1 and w2-1, w2-2 on w2 (containers_per_worker = 2)."""
    return [Placed(cid, cid.split("-")[0], serving, stand_in=stand_ins.get(cid.replace("-", "_"), ""))
            for cid in ("w1-1", "w1-2", "w2-1", "w2-2")]


def kinds(actions) -> list[tuple[str, str, str]]:
    return [(a.kind, a.container, a.host) for a in actions]


def test_a_host_cut_off_past_its_grace_has_its_containers_moved_to_the_spare():
    pool = hosts(("w1", False, 100.0), ("w2", True, 0.0), ("spare", True, 0.0))
    assert plan(pool, up_containers(), now=109.9, host_grace_s=GRACE, heal_grace_s=HEAL) == []  # within its grace
    actions = plan(pool, up_containers(), now=112.0, host_grace_s=GRACE, heal_grace_s=HEAL)
    assert kinds(actions) == [("move", "w1-1", "spare"), ("move", "w1-2", "spare")]
    assert "w1 unreachable for 12 s (grace 10 s)" in actions[0].reason


def test_moves_only_as_far_as_there_is_room():
    pool = hosts(("w1", False, 0.0), ("w2", True, 0.0), ("spare", True, 0.0))
    spare_has_one = [PoolHost("spare", True, 0.0, 1) if h.name == "spare" else h for h in pool]
    assert kinds(plan(spare_has_one, up_containers(), 60.0, GRACE, HEAL)) == [("move", "w1-1", "spare")]
    full = [h for h in pool if h.name != "spare"]  # w2 holds its two: no room anywhere
    assert plan(full, up_containers(), 60.0, GRACE, HEAL) == []


def test_the_roomiest_host_first_then_by_name():
    pool = hosts(("a", True, 0.0), ("b", True, 0.0), ("c", True, 0.0), slots=3)
    assert roomiest(pool, {"a": 2, "b": 1, "c": 1}, exclude=set()) == "b"
    assert roomiest(pool, {"a": 2, "b": 1, "c": 1}, exclude={"b"}) == "c"
    assert roomiest(pool, {"a": 3, "b": 3, "c": 3}, exclude=set()) is None
    unreachable = [PoolHost("b", False, 0.0, 3), PoolHost("c", True, 0.0, 3)]
    assert roomiest(unreachable, {}, exclude=set()) == "c"


def test_a_moved_container_stays_put_while_its_host_is_away():
    pool = hosts(("w1", False, 0.0), ("w2", True, 0.0), ("spare", True, 0.0))
    moved = up_containers(w1_1="spare", w1_2="spare")
    assert occupancy(moved) == {"w1": 2, "w2": 2, "spare": 2}
    assert plan(pool, moved, 100.0, GRACE, HEAL) == []


def test_a_stand_in_whose_host_drops_off_too_is_replaced_elsewhere():
    pool = hosts(("w1", False, 0.0), ("w2", True, 0.0), ("spare", False, 50.0), ("spare2", True, 0.0))
    moved = up_containers(w1_1="spare", w1_2="spare")
    assert plan(pool, moved, 55.0, GRACE, HEAL) == []  # the spare is within its grace
    actions = plan(pool, moved, 61.0, GRACE, HEAL)
    assert kinds(actions) == [("move", "w1-1", "spare2"), ("move", "w1-2", "spare2")]
    assert "its stand-in on spare is unreachable too" in actions[0].reason


def test_back_home_and_serving_the_stand_ins_leave():
    pool = hosts(("w1", True, 200.0), ("w2", True, 0.0), ("spare", True, 0.0))
    not_yet = up_containers(serving=False, w1_1="spare", w1_2="spare")
    assert plan(pool, not_yet, 201.0, GRACE, HEAL) == []  # home answers SSH, its containers not yet ready
    actions = plan(pool, up_containers(w1_1="spare", w1_2="spare"), 202.0, GRACE, HEAL)
    assert kinds(actions) == [("return", "w1-1", "spare"), ("return", "w1-2", "spare")]


def test_a_dead_process_on_a_host_that_answers_is_healed_in_place_after_its_grace():
    pool = hosts(("w1", True, 0.0), ("w2", True, 0.0), ("spare", True, 0.0))
    containers = up_containers()
    containers[2] = Placed("w2-1", "w2", False, down_since=100.0)
    assert plan(pool, containers, 104.0, GRACE, HEAL) == []
    actions = plan(pool, containers, 105.0, GRACE, HEAL)
    assert kinds(actions) == [("heal", "w2-1", "w2")] and "gone for 5 s" in actions[0].reason


def test_a_dead_stand_in_is_restarted_after_the_same_grace():
    assert overdue({"w1-1-on-spare": 100.0, "w1-2-on-spare": 103.0}, now=105.0, grace_s=HEAL) == ["w1-1-on-spare"]
    assert overdue({}, now=105.0, grace_s=HEAL) == []


def test_a_host_unknown_to_the_pool_is_left_alone():
    """Nothing the user started by hand (nor a container on a host outside the pool) is touched."""
    pool = hosts(("w2", True, 0.0), ("spare", True, 0.0))
    containers = [Placed("w1-1", "w1", False, down_since=0.0)]
    assert plan(pool, containers, 1000.0, GRACE, HEAL) == []


# -- the [ssh] settings the pool is made of (providers/ssh/options.py) ---------------
def test_spares_join_the_pool_and_a_host_cannot_be_both():
    def options(**table):
        base = {"orchestrator": "10.0.0.10", "workers": ["10.0.0.11"], "runtime": "process", **table}
        return parse_options(ClusterSpec(name="lab", provider="ssh", provider_options={"ssh": base}))

    parsed = options(spares=["10.0.0.13", {"address": "10.0.0.14", "name": "big"}], host_grace=5,
                     authorized_keys="/etc/ssh/keys/root")
    assert [h.name for h in parsed.hosts()] == ["orchestrator", "worker1", "spare1", "big"]
    assert (parsed.host_grace, parsed.authorized_keys) == (5.0, "/etc/ssh/keys/root")
    defaults = options()
    assert (defaults.spares, defaults.host_grace, defaults.authorized_keys) == ([], 20.0, "~/.ssh/authorized_keys")
    for table, words in [({"spares": ["10.0.0.11"]}, "already a host of the cluster"),
                         ({"spares": "10.0.0.13"}, "spares must be a list"),
                         ({"host_grace": -1}, "host_grace"),
                         ({"authorized_keys": ""}, "authorized_keys must be the path")]:
        with pytest.raises(MlclusterError, match=words):
            options(**table)


def test_the_controllers_key_line_is_restricted_to_the_orchestrators_address():
    line = authorized_line("ssh-ed25519 AAAAC3Nza", "lab", "10.0.0.10")
    assert line == ('from="10.0.0.10",no-agent-forwarding,no-port-forwarding,no-X11-forwarding,no-pty '
                    "ssh-ed25519 AAAAC3Nza mlcluster-controller:lab")
    assert authorized_line("ssh-ed25519 AAAAC3Nza", "lab", "orch.internal").startswith("no-agent-forwarding,")


def test_the_controllers_config_round_trips_and_a_new_pid_is_no_new_config():
    host = HostConfig(name="w1", address="10.0.0.11", private_address="10.0.0.11", user="root", port=22,
                      key="/work/controller_key", runtime="process", python="/usr/bin/python3", workdir="/w",
                      bind="10.0.0.11")
    config = PoolConfig(cluster="lab", admin_url="http://127.0.0.1:8001", token="t", worker_port=5000,
                        host_grace_s=20, heal_grace_s=5, host="orch",
                        hosts=[PoolMember(host, "ssh-ed25519 AAAA", "/usr/bin/python3", "/w/model", 2)],
                        workers=[WorkerSpec("w1-1", "w1", 5000, {"MODEL": "/w/model"}, pid=10, log="/w/w1-1.log")])
    assert PoolConfig.from_json(config.to_json()) == config
    healed = dataclasses.replace(config, workers=[dataclasses.replace(config.workers[0], pid=11)])
    assert healed.digest() == config.digest()
    assert dataclasses.replace(config, host_grace_s=30).digest() != config.digest()
