"""Routing decisions as tables: cookies, rules, weighted choice, sticky hashing."""

from __future__ import annotations

import math
import random

import pytest

from router.decide import (
    choose_variant,
    match_rule,
    parse_cookies,
    sticky_choice,
    weighted_choice,
)
from serving.spec.routes import Rule


def within_binomial(count: int, n: int, p: float, z: float = 4.5) -> bool:
    """|count - np| within z standard deviations (z=4.5: a false alarm about once in 150,000)."""
    return abs(count - n * p) <= z * math.sqrt(n * p * (1 - p)) + 1


@pytest.mark.parametrize("header,expected", [
    (None, {}),
    ("", {}),
    ("a=1", {"a": "1"}),
    ("a=1; b=2", {"a": "1", "b": "2"}),
    ('a="quoted"', {"a": "quoted"}),
    ("junk; a=1;;=x; b", {"a": "1"}),
    ("a=1; a=2", {"a": "1"}),
])
def test_parse_cookies(header, expected):
    assert parse_cookies(header) == expected


RULES = [Rule(header={"X-Experiment": "b"}, variant="canary"),
         Rule(cookie={"beta": "1"}, variant="beta"),
         Rule(header={"x-a": "1", "x-b": "2"}, variant="both")]


@pytest.mark.parametrize("headers,cookies,expected", [
    ({}, {}, None),
    ({"x-experiment": "b"}, {}, "canary"),
    ({"x-experiment": "c"}, {}, None),
    ({}, {"beta": "1"}, "beta"),
    ({"x-experiment": "b"}, {"beta": "1"}, "canary"),  # first rule wins
    ({"x-a": "1"}, {}, None),  # every header of a rule must match
    ({"x-a": "1", "x-b": "2"}, {}, "both"),
])
def test_match_rule(headers, cookies, expected):
    assert match_rule(RULES, headers, cookies) == expected


@pytest.mark.parametrize("weights,draw,expected", [
    ([("a", 90), ("b", 10)], 0.0, "a"),
    ([("a", 90), ("b", 10)], 0.8999, "a"),
    ([("a", 90), ("b", 10)], 0.9, "b"),
    ([("a", 90), ("b", 10)], 0.99999, "b"),
    ([("a", 0), ("b", 1)], 0.0, "b"),
    ([("a", 1), ("shadow", 0)], 0.99999, "a"),
    ([("a", 1), ("b", 1), ("c", 2)], 0.49, "b"),
])
def test_weighted_choice(weights, draw, expected):
    assert weighted_choice(weights, draw) == expected


def test_weighted_choice_needs_a_positive_weight():
    with pytest.raises(ValueError):
        weighted_choice([("a", 0)], 0.5)


@pytest.mark.parametrize("weights", [[("a", 50), ("b", 50)], [("a", 90), ("b", 10)],
                                     [("a", 1), ("b", 2), ("c", 7)]])
def test_sticky_choice_follows_weights(weights):
    n = 20000
    counts: dict[str, int] = {}
    for i in range(n):
        name = sticky_choice(f"user-{i}", weights)
        counts[name] = counts.get(name, 0) + 1
    total = sum(w for _, w in weights)
    for name, weight in weights:
        assert within_binomial(counts.get(name, 0), n, weight / total), counts


@pytest.mark.parametrize("before,after,expected_moved", [
    ([("default", 90), ("canary", 10)], [("default", 80), ("canary", 20)], 0.10),
    ([("default", 50), ("canary", 50)], [("default", 10), ("canary", 90)], 0.40),
    ([("default", 1), ("canary", 1)], [("default", 1), ("canary", 1), ("new", 1)], 1 / 3),
])
def test_sticky_reweighting_moves_the_minimal_share(before, after, expected_moved):
    n = 20000
    moved = 0
    for i in range(n):
        old, new = sticky_choice(f"k{i}", before), sticky_choice(f"k{i}", after)
        if old != new:
            moved += 1
            # keys only move towards variants whose share grew
            grew = {name for name, w in after
                    if w / sum(x for _, x in after) > dict(before).get(name, 0) / sum(
                        x for _, x in before)}
            assert new in grew
    assert within_binomial(moved, n, expected_moved)


def test_sticky_choice_is_stable_across_calls():
    weights = [("a", 3), ("b", 1)]
    assert [sticky_choice(f"u{i}", weights) for i in range(50)] == \
           [sticky_choice(f"u{i}", weights) for i in range(50)]


@pytest.mark.parametrize("headers,sticky,draw,expected", [
    ({"x-experiment": "b"}, "user-1", 0.0, ("canary", "rule")),  # rules beat stickiness
    ({}, None, 0.0, ("default", "weight")),
    ({}, None, 0.95, ("canary", "weight")),
    ({}, "user-1", 0.0, (sticky_choice("user-1", [("default", 90), ("canary", 10)]), "sticky")),
])
def test_choose_variant_order(headers, sticky, draw, expected):
    got = choose_variant(rules=RULES[:1], weights=[("default", 90), ("canary", 10)],
                         headers=headers, cookies={}, sticky_key=sticky, draw=draw)
    assert got == expected


def test_weighted_choice_distribution():
    rng = random.Random(1)
    n = 10000
    hits = sum(weighted_choice([("a", 70), ("b", 30)], rng.random()) == "b" for _ in range(n))
    assert within_binomial(hits, n, 0.3)
