"""The pure rule of autoscaling on a pool of hosts (elastic/poolscale.py):
where new containers go, which leave, how many worker instances to launch
(aws) and which to terminate; tables in, plans out, no processes."""
from __future__ import annotations

import pytest

from mlcluster.elastic.placement import PoolHost
from mlcluster.elastic.poolscale import Fleet, Home, Own, leaving, parking, place, plan_scale, returning, room_to_grow
from mlcluster.elastic.settings import autoscale_problem
from mlcluster.state import ClusterSpec


def hosts(**slots: int) -> list[PoolHost]:
    return [PoolHost(name, True, 0.0, n) for name, n in slots.items()]


@pytest.mark.parametrize("desired, current, draining, cap, room", [
    (4, 2, 0, 6, 2),   # towards the wish
    (8, 2, 0, 6, 4),   # never past the cap
    (6, 2, 2, 6, 2),   # draining containers still run: they count against the cap
    (2, 4, 0, 6, 0),   # fewer: nothing starts
    (6, 6, 1, 6, 0),
])
def test_room_to_grow_keeps_the_cap(desired, current, draining, cap, room):
    assert room_to_grow(desired, current, draining, cap) == room


def test_new_containers_go_on_the_roomiest_hosts_each_within_its_slots():
    pool = hosts(w1=2, w2=2, spare=2)
    assert place(pool, {"w1": 2, "w2": 1}, 3) == ["spare", "spare", "w2"]
    assert place(pool, {"w1": 2, "w2": 2, "spare": 2}, 2) == []  # full: nowhere
    unreachable = [PoolHost("w1", False, 0.0, 2), *hosts(w2=2)]
    assert place(unreachable, {}, 3) == ["w2", "w2"]  # never on a host that does not answer


def test_only_own_containers_leave_the_idlest_then_the_newest():
    own = [Own("w1-scale1", "w1", in_flight=1, serial=1), Own("w2-scale2", "w2", 0, 2), Own("s-scale3", "s", 0, 3)]
    assert leaving(own, 2) == ["s-scale3", "w2-scale2"]
    assert leaving(own, 5) == ["s-scale3", "w2-scale2", "w1-scale1"]
    assert leaving([], 3) == []  # up's containers are the floor


def test_ssh_plan_grows_and_shrinks():
    pool = hosts(w1=2, w2=2, spare=2)
    grow = plan_scale(5, 4, 0, 5, pool, {"w1": 2, "w2": 2}, [])
    assert grow.start == ["spare"] and grow.stop == [] and grow.launch == 0
    full = plan_scale(8, 4, 0, 8, pool, {"w1": 2, "w2": 2}, [])
    assert full.start == ["spare", "spare"] and full.held == 2  # no room for the rest, and no instances on ssh
    own = [Own("spare-scale1", "spare", 0, 1), Own("spare-scale2", "spare", 3, 2)]
    shrink = plan_scale(5, 6, 0, 8, pool, {"w1": 2, "w2": 2, "spare": 2}, own)
    assert shrink.stop == ["spare-scale1"] and shrink.start == [] and shrink.terminate == []


def test_aws_plan_launches_within_the_instance_cap():
    pool = hosts(worker1=2)
    used = {"worker1": 2}
    one = plan_scale(6, 2, 0, 6, pool, used, [], Fleet(cap=3, live=1, slots=2))
    assert one.start == [] and one.launch == 2 and one.held == 0  # 4 containers: two hosts of 2
    capped = plan_scale(6, 2, 0, 6, pool, used, [], Fleet(cap=2, live=1, slots=2))
    assert capped.launch == 1 and capped.held == 2  # the cap is the billing cap
    waiting = plan_scale(6, 2, 0, 6, pool, used, [], Fleet(cap=3, live=3, slots=2, coming=4))
    assert waiting.launch == 0 and waiting.held == 0  # those on their way hold them: nothing launched twice


def test_aws_plan_terminates_only_its_own_empty_instances():
    pool = hosts(worker1=1, worker2=1, worker3=1)
    fleet = Fleet(cap=3, live=3, slots=1, launched=("worker2", "worker3"))
    quiet = plan_scale(1, 1, 0, 3, pool, {"worker1": 1, "worker3": 1}, [], fleet)
    assert quiet.terminate == ["worker2"]  # worker3 still holds a (draining) container; worker1 is up's
    busy = plan_scale(3, 2, 0, 3, pool, {"worker1": 1, "worker3": 1}, [], fleet)
    assert busy.start == ["worker2"] and busy.terminate == []  # wanted again: kept
    shrink = plan_scale(1, 2, 0, 3, pool, {"worker1": 1, "worker3": 1}, [Own("worker3-scale1", "worker3")], fleet)
    assert shrink.stop == ["worker3-scale1"] and shrink.terminate == ["worker2"]


@pytest.mark.parametrize("provider", ["local", "ssh", "aws"])
def test_autoscaling_is_accepted_on_every_provider(provider):
    assert autoscale_problem(ClusterSpec(name="x", provider=provider, min_containers=1, max_containers=4)) is None
    assert "above" in autoscale_problem(ClusterSpec(name="x", provider=provider, min_containers=5, max_containers=4))


def up_2x2(**state: dict) -> list[Home]:
    """`up`'s 2 x 2 containers on w1 and w2; `state` sets fields per id."""
    return [Home(cid, cid.split("-")[0], **state.get(cid.replace("-", "_"), {}))
            for cid in ("w1-1", "w1-2", "w2-1", "w2-2")]


def test_ups_containers_leave_the_idlest_then_emptying_a_host_then_the_highest_id():
    assert parking(up_2x2(), 3) == ["w2-2", "w2-1", "w1-2"]  # w2 empties first: one host fewer to pay for
    busy = up_2x2(w2_2={"in_flight": 1}, w1_1={"in_flight": 2})
    assert parking(busy, 3) == ["w2-1", "w1-2", "w2-2"]  # the idle ones first, then the less busy
    # one with a stand-in (its home cut off) or already parked never goes; never more than asked
    odd = up_2x2(w1_2={"serving": False}, w2_1={"parked": True})
    assert parking(odd, 5) == ["w2-2", "w1-1"]
    assert parking(up_2x2(), 0) == []


def test_parked_containers_come_back_first_at_home_lowest_id_first():
    homes = up_2x2(w1_2={"parked": True}, w2_1={"parked": True}, w2_2={"parked": True})
    pool = hosts(w1=2, w2=2, spare=2)
    assert returning(homes, pool, 2) == ["w1-2", "w2-1"]
    cut = [PoolHost("w2", False, 0.0, 2), *hosts(w1=2, spare=2)]
    assert returning(homes, cut, 3) == ["w1-2"]  # never onto a host that does not answer
    used = {"w1": 2, "w2": 2}  # a parked container keeps its slot at home
    back = plan_scale(4, 1, 0, 5, pool, used, [], homes=homes)
    assert back.unpark == ["w1-2", "w2-1", "w2-2"] and back.start == []
    beyond = plan_scale(5, 1, 0, 5, pool, used, [], homes=homes)  # home first, then a new one on the spare
    assert beyond.unpark == ["w1-2", "w2-1", "w2-2"] and beyond.start == ["spare"]
    capped = plan_scale(9, 1, 1, 5, pool, used, [], homes=homes)  # never past the cap, draining counted
    assert len(capped.unpark) + len(capped.start) == 3


def test_fewer_the_controllers_own_go_first_then_ups_down_to_the_wish():
    pool = hosts(w1=2, w2=2, spare=2)
    own = [Own("spare-scale1", "spare", 0, 1)]
    plan = plan_scale(2, 5, 0, 5, pool, {"w1": 2, "w2": 2, "spare": 1}, own, homes=up_2x2())
    assert plan.stop == ["spare-scale1"] and plan.park == ["w2-2", "w2-1"]
    assert plan_scale(4, 4, 0, 5, pool, {"w1": 2, "w2": 2}, [], homes=up_2x2()).park == []
