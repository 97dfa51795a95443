"""The node-health state machine against the K/M rules, by example and by property."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from dfms.healthmon.state import Health, NodeTrack, Thresholds, seed, step

H, S, D = Health.HEALTHY, Health.SUSPECT, Health.DOWN
LIMITS = Thresholds(failures_to_down=3, successes_to_healthy=2)


def run(start: Health, outcomes: list[bool], limits: Thresholds = LIMITS) -> list[Health]:
    track = seed(start, limits)
    states = []
    for ok in outcomes:
        track = step(track, ok, limits)
        states.append(track.health)
    return states


def expected(start: Health, outcomes: list[bool], limits: Thresholds) -> list[Health]:
    """The rules read straight off the outcome history (no counters), as a reference.

    The seeded history: a down node has K failures behind it; a suspect node none (a
    stored suspect may come from passive marking, not from a probe).
    """
    seeded = {H: [], S: [], D: [False] * limits.failures_to_down}[start]
    history = list(seeded)
    state = start
    states = []
    for ok in outcomes:
        history.append(ok)
        streak = 0
        for past in reversed(history):
            if past != ok:
                break
            streak += 1
        if ok and streak >= limits.successes_to_healthy:
            state = H
        elif not ok:
            state = D if state is D or streak >= limits.failures_to_down else S
        states.append(state)
    return states


@pytest.mark.parametrize(("start", "outcomes", "states"), [
    (H, [True, True], [H, H]),
    (H, [False], [S]),
    (H, [False, False], [S, S]),
    (H, [False, False, False], [S, S, D]),
    (H, [False, True, False, False], [S, S, S, S]),  # a success restarts the failure streak
    (H, [False, True, True], [S, S, H]),  # suspect needs M successes too
    (H, [False, False, False, True, True], [S, S, D, D, H]),  # down → healthy, no suspect
    (D, [True, False, True, True], [D, D, D, H]),  # an interrupted streak starts again
    (D, [True, False, False, False], [D, D, D, D]),  # a down node never drops to suspect
    (S, [False, False, False], [S, S, D]),  # a stored suspect: K failed probes of its own
    (S, [False, True, True], [S, S, H]),
    (S, [True], [S]),
    (S, [True, True], [S, H]),  # M good probes bring it back
])
def test_rules_by_example(start: Health, outcomes: list[bool], states: list[Health]) -> None:
    assert run(start, outcomes) == states


def test_k_equal_one_goes_down_on_the_first_failure() -> None:
    limits = Thresholds(failures_to_down=1, successes_to_healthy=1)
    assert run(H, [False, True, False], limits) == [D, H, D]


def test_counters_stay_bounded() -> None:
    track = seed(H, LIMITS)
    for _ in range(1000):
        track = step(track, True, LIMITS)
    assert track == NodeTrack(H, successes=LIMITS.successes_to_healthy)
    for _ in range(1000):
        track = step(track, False, LIMITS)
    assert track == NodeTrack(D, failures=LIMITS.failures_to_down)


def test_seed_and_thresholds() -> None:
    assert seed("healthy", LIMITS) == NodeTrack(H)
    assert seed("suspect", LIMITS) == NodeTrack(S)
    assert seed("down", LIMITS) == NodeTrack(D, failures=3)
    with pytest.raises(ValueError, match="valid Health"):
        seed("sleepy", LIMITS)
    with pytest.raises(ValueError, match="at least 1"):
        Thresholds(failures_to_down=0, successes_to_healthy=2)


limits_st = st.builds(Thresholds, st.integers(1, 6), st.integers(1, 6))
outcomes_st = st.lists(st.booleans(), max_size=60)


@given(st.sampled_from(list(Health)), outcomes_st, limits_st)
def test_state_always_follows_the_rules(start: Health, outcomes: list[bool],
                                        limits: Thresholds) -> None:
    assert run(start, outcomes, limits) == expected(start, outcomes, limits)


@given(outcomes_st, limits_st)
def test_transitions_need_full_streaks(outcomes: list[bool], limits: Thresholds) -> None:
    """Starting healthy: down only after K failures in a row, healthy again only after M
    successes in a row, and a failure never leaves a node healthy."""
    states = run(H, outcomes, limits)
    before = H
    for i, (ok, now) in enumerate(zip(outcomes, states, strict=True)):
        if now is D and before is not D:
            k = limits.failures_to_down
            assert i + 1 >= k and not any(outcomes[i + 1 - k:i + 1])
        if now is H and before is not H:
            m = limits.successes_to_healthy
            assert i + 1 >= m and all(outcomes[i + 1 - m:i + 1])
        if not ok:
            assert now is not H
        if ok:
            assert now is H or now is before  # a success never makes things worse
        before = now
