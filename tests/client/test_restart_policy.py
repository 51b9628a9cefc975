"""`RestartPolicy`: backoff doubles within a streak of quick deaths, resets after a stable run, and a
crash loop ends supervision."""

from __future__ import annotations

from bailing.supervise import RestartPolicy


def test_backoff_doubles_up_to_the_cap_then_a_crash_loop_stops_it():
    policy = RestartPolicy(first_delay_s=1.0, max_delay_s=4.0, stable_s=60.0, max_streak=5)
    t = 1000.0
    policy.started("w", t)
    delays = []
    for _ in range(4):
        t += 5.0  # dies 5 s after each start
        delays.append(policy.died("w", t))
        assert policy.waiting("w") and not policy.due("w", t)
        t += delays[-1]
        assert policy.due("w", t)
        policy.started("w", t)
        assert not policy.waiting("w")
    assert delays == [1.0, 2.0, 4.0, 4.0]
    assert policy.died("w", t + 1.0) is None  # the 5th quick death in a row
    assert policy.restarts() == {"w": 4}


def test_a_stable_run_starts_a_new_streak():
    policy = RestartPolicy(first_delay_s=1.0, stable_s=60.0, max_streak=3)
    policy.started("g", 0.0)
    assert policy.died("g", 10.0) == 1.0
    policy.started("g", 11.0)
    assert policy.died("g", 12.0) == 2.0
    policy.started("g", 14.0)
    assert policy.died("g", 14.0 + 61.0) == 1.0  # ran a minute: a fresh streak, not the 3rd death
    assert policy.restarts() == {"g": 3}


def test_a_limit_of_one_never_restarts():
    policy = RestartPolicy(max_streak=1)
    policy.started("v", 0.0)
    assert policy.died("v", 500.0) is None
    assert policy.restarts() == {}
