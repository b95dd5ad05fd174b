from __future__ import annotations

import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from krolik.retry import BackoffPolicy


class _Fixed(random.Random):
    """An rng whose uniform() always returns one end of the range."""

    def __init__(self, end: str) -> None:
        super().__init__(0)
        self.end = end

    def uniform(self, a: float, b: float) -> float:
        return a if self.end == "low" else b


def test_delay_is_between_half_the_cap_and_the_cap():
    policy = BackoffPolicy(base_seconds=2.0, max_seconds=1000.0)
    rng = random.Random(42)
    for attempt, cap in [(1, 2.0), (2, 4.0), (3, 8.0), (4, 16.0), (5, 32.0)]:
        for _ in range(50):
            assert cap / 2 <= policy.delay(attempt, rng) <= cap


def test_cap_doubles_per_attempt():
    policy = BackoffPolicy(base_seconds=1.5, max_seconds=10_000.0)
    highs = [policy.delay(attempt, _Fixed("high")) for attempt in range(1, 8)]
    lows = [policy.delay(attempt, _Fixed("low")) for attempt in range(1, 8)]
    assert highs == [1.5 * 2 ** (attempt - 1) for attempt in range(1, 8)]
    assert lows == [high / 2 for high in highs]


def test_delay_is_bounded_by_max():
    policy = BackoffPolicy(base_seconds=1.0, max_seconds=30.0)
    assert policy.delay(6, _Fixed("high")) == 30.0  # 32 capped to 30
    assert policy.delay(1000, _Fixed("high")) == 30.0
    assert policy.delay(10**9, _Fixed("low")) == 15.0


def test_default_rng_is_used_when_none_given():
    policy = BackoffPolicy(base_seconds=1.0, max_seconds=300.0)
    for _ in range(100):
        assert 4.0 <= policy.delay(4) <= 8.0


@pytest.mark.parametrize("attempt", [0, -1, -100])
def test_attempt_below_one_is_rejected(attempt):
    with pytest.raises(ValueError, match="1-based"):
        BackoffPolicy().delay(attempt)


@given(
    attempt=st.integers(min_value=1, max_value=10**6),
    base=st.floats(min_value=0.0, max_value=1e4, allow_nan=False, allow_infinity=False),
    maximum=st.floats(min_value=0.0, max_value=1e6, allow_nan=False, allow_infinity=False),
    seed=st.integers(min_value=0, max_value=2**32),
)
def test_delay_property(attempt, base, maximum, seed):
    policy = BackoffPolicy(base_seconds=base, max_seconds=maximum)
    cap = min(maximum, base * 2.0 ** min(attempt - 1, 62))
    delay = policy.delay(attempt, random.Random(seed))
    assert cap / 2 <= delay <= cap
    assert delay <= maximum
    # the cap never shrinks from one attempt to the next
    assert policy.delay(attempt, _Fixed("high")) <= policy.delay(attempt + 1, _Fixed("high"))
