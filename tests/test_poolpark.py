"""The pure rule of scaling `up`'s worker instances away on aws
(elastic/poolscale.py): when one of `up`'s instances counts as empty, when
it is terminated, and that its parked containers come back on it, launched
again, within the cap; tables in, plans out, no processes, no clock."""
from __future__ import annotations

import pytest

from mlcluster.elastic.placement import PoolHost
from mlcluster.elastic.poolscale import Fleet, Home, due, emptied, empty_since, plan_scale


def hosts(**slots: int) -> list[PoolHost]:
    return [PoolHost(name, True, 0.0, n) for name, n in slots.items()]


def up_2x2(parked: tuple[str, ...] = ()) -> list[Home]:
    """`up`'s 2 x 2 containers on worker1 and worker2; those named in `parked` are parked."""
    return [Home(cid, cid.split("-")[0], parked=cid in parked)
            for cid in ("worker1-1", "worker1-2", "worker2-1", "worker2-2")]


@pytest.mark.parametrize("parked, others, empty", [
    ((), {}, []),                                              # everything serves
    (("worker2-2",), {}, []),                                  # one of worker2's still runs there
    (("worker2-1", "worker2-2"), {}, ["worker2"]),              # all of worker2's parked: empty
    (("worker2-1", "worker2-2"), {"worker2": 1}, []),           # a stand-in or one of the controller's there
    (("worker2-1", "worker2-2"), {"worker1": 2}, ["worker2"]),  # what runs elsewhere does not matter
    (("worker1-1", "worker1-2", "worker2-1", "worker2-2"), {}, ["worker1", "worker2"]),
])
def test_an_instance_is_empty_when_all_of_ups_containers_there_are_parked_and_nothing_else_runs(
        parked, others, empty):
    assert emptied(["worker1", "worker2"], up_2x2(parked), others) == empty


def test_only_the_instances_asked_about_count_and_a_draining_container_still_runs():
    homes = up_2x2(("worker2-1", "worker2-2"))
    assert emptied(["worker1"], homes, {}) == []  # worker2 is not a candidate (the orchestrator's, one launched)
    draining = [h if h.id != "worker2-2" else Home("worker2-2", "worker2", parked=False) for h in homes]
    assert emptied(["worker2"], draining, {}) == []  # drained but not stopped yet: it runs
    assert emptied(["spare"], homes, {}) == []  # an instance with none of up's containers is none of this rule's


def test_empty_since_keeps_the_first_time_and_starts_over_when_a_container_is_back():
    since = empty_since(["worker2"], {}, 10.0)
    assert since == {"worker2": 10.0}
    assert empty_since(["worker2", "worker3"], since, 14.0) == {"worker2": 10.0, "worker3": 14.0}
    assert empty_since(["worker3"], {"worker2": 10.0, "worker3": 14.0}, 15.0) == {"worker3": 14.0}
    assert empty_since([], {"worker3": 14.0}, 16.0) == {}


def test_empty_since_starts_over_while_the_rule_wants_more():
    # one launched again for its parked container and ready, while the load wants it: its delay has not begun
    since = empty_since(["worker2"], {"worker2": 10.0}, 14.0, wanting=True)
    assert since == {"worker2": 14.0}
    assert due(fleet(empty=(("worker2", 0.0),), park_after_s=3)) == []
    assert empty_since(["worker2"], since, 18.0) == {"worker2": 14.0}  # nothing more wanted: the delay runs


def fleet(**kw) -> Fleet:
    return Fleet(**{"cap": 2, "live": 2, "slots": 1, **kw})


def test_an_empty_instance_goes_only_after_the_downscale_delay_and_only_when_nothing_more_is_wanted():
    pool, used = hosts(worker1=1, worker2=1), {"worker1": 1, "worker2": 1}  # worker2-1 parked keeps its slot
    homes = [Home("worker1-1", "worker1"), Home("worker2-1", "worker2", parked=True)]
    early = fleet(empty=(("worker2", 2.9),), park_after_s=3.0)
    assert plan_scale(1, 1, 0, 2, pool, used, [], early, homes=homes).scale_away == []
    late = fleet(empty=(("worker2", 3.0),), park_after_s=3.0)
    assert plan_scale(1, 1, 0, 2, pool, used, [], late, homes=homes).scale_away == ["worker2"]
    assert plan_scale(1, 1, 0, 2, pool, used, [], late, wants_more=True, homes=homes).scale_away == []
    back = plan_scale(2, 1, 0, 2, pool, used, [], late, homes=homes)  # wanted again: it comes back, nothing goes
    assert back.unpark == ["worker2-1"] and back.scale_away == [] and back.launch == 0
    several = fleet(empty=(("worker10", 5.0), ("worker2", 5.0), ("worker3", 1.0)), park_after_s=3.0)
    assert due(several) == ["worker2", "worker10"]  # those past the delay, in the order of their numbers
    assert due(None) == []  # ssh: no instances


def test_parked_containers_whose_home_is_gone_come_back_on_it_launched_again_before_a_new_one():
    pool, used = hosts(worker1=1), {"worker1": 1}  # worker2 scaled away: not a host of the pool
    homes = [Home("worker1-1", "worker1"), Home("worker2-1", "worker2", parked=True)]
    away = fleet(live=1, parked=(("worker2", 1),))
    plan = plan_scale(2, 1, 0, 2, pool, used, [], away, homes=homes)
    assert plan.unpark == [] and plan.start == []   # its home does not answer: not started anywhere else
    assert plan.relaunch == ["worker2"] and plan.launch == 0 and plan.held == 0
    on_its_way = fleet(live=2, parked=(), coming=1)  # launched again: its parked container is on its way
    waiting = plan_scale(2, 1, 0, 2, pool, used, [], on_its_way, homes=homes)
    assert waiting.relaunch == [] and waiting.launch == 0 and waiting.held == 0  # nothing launched twice


def test_launching_again_keeps_the_caps_on_instances_and_containers():
    pool, used = hosts(worker1=2), {"worker1": 2}
    away = Fleet(cap=3, live=1, slots=2, parked=(("worker2", 2), ("worker3", 2)))
    one = plan_scale(4, 2, 0, 6, pool, used, [], away)
    assert one.relaunch == ["worker2"] and one.launch == 0  # 2 more: worker2's two parked ones
    both = plan_scale(6, 2, 0, 6, pool, used, [], away)
    assert both.relaunch == ["worker2", "worker3"] and both.launch == 0
    capped = plan_scale(6, 2, 0, 6, pool, used, [], Fleet(cap=2, live=1, slots=2, parked=away.parked))
    assert capped.relaunch == ["worker2"] and capped.launch == 0 and capped.held == 2  # the billing cap
    containers = plan_scale(9, 2, 1, 5, pool, used, [], away)  # 5 containers at most, one still draining
    assert containers.relaunch == ["worker2"] and containers.held == 0
    beyond = plan_scale(6, 2, 0, 6, pool, used, [], Fleet(cap=3, live=1, slots=2, parked=(("worker2", 1),)))
    assert beyond.relaunch == ["worker2"] and beyond.launch == 1  # its one parked, then a new instance
    assert beyond.held == 1  # 4 wanted: 1 back on worker2, 2 on the new one, 1 waits for room


def test_room_on_a_running_host_is_used_before_any_instance_is_launched():
    pool, used = hosts(worker1=2), {"worker1": 1}
    plan = plan_scale(2, 1, 0, 4, pool, used, [], fleet(cap=2, live=1, parked=(("worker2", 1),)))
    assert plan.start == ["worker1"] and plan.relaunch == [] and plan.launch == 0
