"""P2C, passive ejection with re-admission, active-check verdicts and the retry budget."""

from __future__ import annotations

import random

import pytest

from router.balance import Endpoint, Pool, RetryBudget, p2c


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


@pytest.mark.parametrize("outstanding,expected", [
    ([0, 5], 0),
    ([5, 0], 1),
    ([3, 3], None),  # a tie keeps the first sample; either is fine
])
def test_p2c_prefers_fewer_outstanding(outstanding, expected):
    endpoints = [Endpoint(str(i), outstanding=o) for i, o in enumerate(outstanding)]
    for seed in range(20):
        chosen = p2c(endpoints, random.Random(seed))
        if expected is not None:
            assert chosen is endpoints[expected]


def test_p2c_never_picks_the_busiest_of_three():
    endpoints = [Endpoint("a", outstanding=1), Endpoint("b", outstanding=2),
                 Endpoint("c", outstanding=9)]
    rng = random.Random(0)
    assert all(p2c(endpoints, rng) is not endpoints[2] for _ in range(500))


def test_pool_excludes_tried_endpoints_and_ends():
    pool = Pool([Endpoint("a"), Endpoint("b")])
    first = pool.choose()
    second = pool.choose({first})
    assert second is not first and pool.choose({first, second}) is None


def test_ejection_after_consecutive_failures_and_readmission():
    clock = Clock()
    a, b = Endpoint("a"), Endpoint("b")
    pool = Pool([a, b], eject_after=3, eject_seconds=5, clock=clock)
    assert [pool.record_failure(a) for _ in range(3)] == [False, False, True]
    assert all(pool.choose() is b for _ in range(50))
    clock.now += 5
    assert {pool.choose().address for _ in range(100)} == {"a", "b"}  # re-admitted


def test_success_resets_the_failure_streak():
    pool = Pool([Endpoint("a")], eject_after=2)
    a = pool.endpoints[0]
    pool.record_failure(a)
    pool.record_success(a)
    assert pool.record_failure(a) is False


def test_repeated_ejection_doubles_up_to_the_cap():
    clock = Clock()
    a = Endpoint("a")
    pool = Pool([a, Endpoint("b")], eject_after=1, eject_seconds=2, max_eject_seconds=5,
                clock=clock)
    durations = []
    for _ in range(4):
        assert pool.record_failure(a)
        durations.append(a.ejected_until - clock.now)
        clock.now = a.ejected_until
    assert durations == [2, 4, 5, 5]


def test_all_ejected_panics_to_the_whole_pool():
    clock = Clock()
    pool = Pool([Endpoint("a"), Endpoint("b")], eject_after=1, clock=clock)
    for e in pool.endpoints:
        pool.record_failure(e)
    assert pool.choose() is not None


@pytest.mark.parametrize("checks,healthy_after,unhealthy_after,expected", [
    ([False], 1, 2, True),
    ([False, False], 1, 2, False),
    ([False, False, True], 1, 2, True),
    ([False, False, True], 2, 2, False),
    ([False, False, True, True], 2, 2, True),
    ([False, True, False], 1, 2, True),  # a pass breaks the failing streak
])
def test_active_check_verdicts(checks, healthy_after, unhealthy_after, expected):
    pool = Pool([Endpoint("a")])
    for ok in checks:
        pool.record_check(pool.endpoints[0], ok, healthy_after=healthy_after,
                          unhealthy_after=unhealthy_after)
    assert pool.endpoints[0].healthy is expected


def test_unhealthy_endpoint_is_not_chosen():
    pool = Pool([Endpoint("a", healthy=False), Endpoint("b")])
    assert all(pool.choose().address == "b" for _ in range(50))


def test_retry_budget_is_a_share_of_requests():
    clock = Clock()
    budget = RetryBudget(ratio=0.2, min_per_second=0, clock=clock)
    for _ in range(100):
        budget.deposit()
    spent = sum(budget.try_spend() for _ in range(100))
    assert spent == 20


def test_retry_budget_floor_refills_per_second():
    clock = Clock()
    budget = RetryBudget(ratio=0.0, min_per_second=5, clock=clock)
    assert sum(budget.try_spend() for _ in range(20)) == 5
    clock.now += 1
    assert sum(budget.try_spend() for _ in range(20)) == 5


def test_retry_budget_tokens_expire():
    clock = Clock()
    budget = RetryBudget(ratio=1.0, min_per_second=0, window=10, clock=clock)
    for _ in range(10):
        budget.deposit()
    clock.now += 20
    assert not budget.try_spend()


def test_a_pool_is_ready_while_an_endpoint_passes_its_checks():
    a, b = Endpoint("a"), Endpoint("b")
    pool = Pool([a, b])
    assert pool.ready
    a.healthy = b.healthy = False
    assert pool.ready  # kept until refreshed (done when a verdict changes)
    assert pool.refresh() is False and not pool.ready
    b.healthy = True
    assert pool.refresh() and pool.ready
    assert not Pool([]).ready  # none listed (scaled to zero)
    assert Pool([Endpoint("c", healthy=False)], checked=False).ready  # checks off: listed = ready
