from __future__ import annotations

import itertools

import pytest

from krolik.states import ALLOWED, FINAL_STATES, TaskStatus, Transition, can_apply


@pytest.mark.parametrize(("transition", "status"), list(itertools.product(Transition, TaskStatus)))
def test_can_apply_matches_allowed(transition, status):
    starts, _ = ALLOWED[transition]
    assert can_apply(transition, status) is (status in starts)


def test_every_transition_is_described():
    assert set(ALLOWED) == set(Transition)
    for starts, ends in ALLOWED.values():
        assert starts
        assert ends
        assert starts <= set(TaskStatus)
        assert ends <= set(TaskStatus)


def test_final_states():
    assert {TaskStatus.DONE, TaskStatus.FAILED, TaskStatus.CANCELLED, TaskStatus.EXPIRED} == (
        FINAL_STATES
    )
    for status in TaskStatus:
        assert status.is_final is (status in FINAL_STATES)
    assert not TaskStatus.PENDING.is_final
    assert not TaskStatus.PROCESSING.is_final


def test_no_transition_starts_from_done_and_only_retry_leaves_failed_or_cancelled():
    for transition, (starts, _) in ALLOWED.items():
        assert TaskStatus.DONE not in starts
        if transition is not Transition.RETRY:
            assert not starts & FINAL_STATES


def test_transitions_reaching_a_final_state_start_from_a_live_one():
    for starts, ends in ALLOWED.values():
        if ends & FINAL_STATES:
            assert starts <= {TaskStatus.PENDING, TaskStatus.PROCESSING}


def test_status_values_are_the_stored_strings():
    assert [s.value for s in TaskStatus] == [
        "pending",
        "processing",
        "done",
        "failed",
        "cancelled",
        "expired",  # new in 0.2; the seed's statuses are unchanged
    ]
    assert TaskStatus("processing") is TaskStatus.PROCESSING
