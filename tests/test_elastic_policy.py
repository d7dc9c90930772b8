"""The autoscaling rule alone (mlcluster/elastic/policy.py): tables of figures
in, desired counts out, with a fake clock (the times given to `decide`)."""
from __future__ import annotations

import pytest

from mlcluster.elastic.policy import AutoscaleConfig, Figures, Memory, decide, wanted

CONFIG = AutoscaleConfig(min_containers=1, max_containers=6, target_ongoing=2, upscale_delay_s=3,
                         downscale_delay_s=10)


def run(looks: list[tuple[float, int, int, int]], config: AutoscaleConfig = CONFIG) -> list[int]:
    """Apply the rule to (time, queued, in flight, current) looks, carrying
    its memory; the desired count of each look."""
    memory, out = Memory(), []
    for now, queued, in_flight, current in looks:
        decision = decide(Figures(queued=queued, in_flight=in_flight, current=current), config, memory, now)
        memory = decision.memory
        out.append(decision.desired)
        assert decision.reason
    return out


@pytest.mark.parametrize("ongoing,expected", [(0, 1), (1, 1), (2, 1), (3, 2), (8, 4), (11, 6), (12, 6), (500, 6)])
def test_wanted_is_ongoing_over_target_clipped(ongoing, expected):
    assert wanted(ongoing, CONFIG) == expected


@pytest.mark.parametrize("looks,expected", [
    # Queue at the minimum: up at once, counting the queue (8 + 1 in flight, target 2 -> 5).
    ([(0, 8, 1, 1)], [5]),
    # Above the minimum the wish must hold for the upscale delay (3 s), in real seconds.
    ([(0, 4, 4, 2), (1, 4, 4, 2), (2.9, 4, 4, 2), (3.0, 4, 4, 2)], [2, 2, 2, 4]),
    # Many looks in a short time are not enough (Ray #62004: delays counted in ticks).
    ([(t / 100, 4, 4, 2) for t in range(100)], [2] * 100),
    # One look back within target starts the delay over.
    ([(0, 4, 4, 2), (2, 0, 4, 2), (4, 4, 4, 2), (6, 4, 4, 2), (7, 4, 4, 2)], [2, 2, 2, 2, 4]),
    # Growing settles on the quietest look of the window, not on a spike.
    ([(0, 2, 4, 2), (1, 20, 4, 2), (3, 20, 4, 2)], [2, 2, 3]),
    # In-flight requests alone (no queue) also count.
    ([(0, 0, 8, 2), (3, 0, 8, 2)], [2, 4]),
])
def test_scaling_up(looks, expected):
    assert run(looks) == expected


@pytest.mark.parametrize("looks,expected", [
    # Load gone: down to the minimum only after the downscale delay (10 s).
    ([(0, 0, 0, 4), (5, 0, 0, 4), (9.9, 0, 0, 4), (10, 0, 0, 4)], [4, 4, 4, 1]),
    # Shrinking settles on the busiest look of the window (5 ongoing -> 3 containers).
    ([(0, 0, 1, 6), (4, 0, 5, 6), (10, 0, 0, 6)], [6, 6, 3]),
    # A burst during the wait starts it over.
    ([(0, 0, 0, 4), (8, 0, 7, 4), (12, 0, 0, 4), (20, 0, 0, 4), (22, 0, 0, 4)], [4, 4, 4, 4, 1]),
])
def test_scaling_down(looks, expected):
    assert run(looks) == expected


def test_the_maximum_is_a_hard_cap():
    for queued in (0, 5, 50, 10_000):
        for current in range(1, 7):
            assert run([(0, queued, current, current), (100, queued, current, current)])[-1] <= 6
    # More containers than the cap (e.g. a config lowered on a running cluster): down to it at once.
    assert run([(0, 100, 9, 9)]) == [6]


def test_below_the_minimum_goes_up_at_once():
    assert run([(0, 0, 0, 0)], AutoscaleConfig(2, 4, 1)) == [2]


def test_a_load_around_the_threshold_never_flaps():
    """Ongoing swinging between 3 and 5 every second (wanting 2, then 3, of target 2)
    with 3 containers: a downscale wish never holds for its delay, and nothing moves."""
    looks = [(t, 0, 5 if t % 2 else 3, 3) for t in range(200)]
    assert set(run(looks)) == {3}


def test_a_step_then_quiet_goes_up_then_down_once_each():
    config = AutoscaleConfig(1, 4, 1, upscale_delay_s=2, downscale_delay_s=5)
    memory, current, changes = Memory(), 2, []
    for t in range(60):
        ongoing = 10 if 5 <= t < 30 else 0
        d = decide(Figures(queued=max(0, ongoing - current), in_flight=min(ongoing, current), current=current),
                   config, memory, float(t))
        memory = d.memory
        if d.desired != current:
            changes.append((t, current, d.desired))
            current = d.desired
    assert changes == [(7, 2, 4), (35, 4, 1)]


def test_reasons_say_why():
    d = decide(Figures(queued=14, in_flight=2, current=2), CONFIG, Memory(1, 0.0, 16), 3.0)
    assert d.desired == 6 and d.reason == ("16 ongoing (2 in flight + 14 queued) over 2 containers for 3 s "
                                           "> target 2 -> 6 containers")
    d = decide(Figures(queued=0, in_flight=1, current=3), CONFIG, Memory(), 0.0)
    assert d.desired == 3 and "wants 1 container for 0 s of 10 s" in d.reason


@pytest.mark.parametrize("config,problem", [
    (AutoscaleConfig(0, 2, 1), "at least 1"),
    (AutoscaleConfig(3, 2, 1), "above --max-containers"),
    (AutoscaleConfig(1, 0, 1), "--max-containers must be at least 1"),
    (AutoscaleConfig(1, 2, 0), "--target-ongoing"),
    (AutoscaleConfig(1, 2, 1, upscale_delay_s=-1), "negative"),
])
def test_bad_settings_are_named(config, problem):
    assert problem in config.problem()
    assert AutoscaleConfig(1, 2, 1).problem() is None
