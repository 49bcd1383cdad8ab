"""Routing decisions as pure functions: rules, weighted choice, sticky hashing, cookies.

Nothing here does I/O or keeps state, so every decision is tested with plain tables and the
random draw is passed in by the caller.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Mapping, Sequence

from serving.spec.routes import Rule


def parse_cookies(header: str | None) -> dict[str, str]:
    """``a=1; b=2`` → ``{"a": "1", "b": "2"}``; malformed pieces are skipped, not fatal."""
    cookies: dict[str, str] = {}
    if not header:
        return cookies
    for part in header.split(";"):
        name, sep, value = part.strip().partition("=")
        if sep and name:
            cookies.setdefault(name, value.strip().strip('"'))
    return cookies


def match_rule(rules: Sequence[Rule], headers: Mapping[str, str],
               cookies: Mapping[str, str]) -> str | None:
    """The variant of the first rule whose every header and cookie matches, else ``None``.

    ``headers`` has lower-case names (as ASGI and gRPC metadata give them).
    """
    for rule in rules:
        if all(headers.get(k) == v for k, v in rule.header.items()) and all(
                cookies.get(k) == v for k, v in rule.cookie.items()):
            return rule.variant
    return None


def weighted_choice(weights: Sequence[tuple[str, float]], draw: float) -> str:
    """Pick by weight; ``draw`` is uniform in [0, 1). Zero-weight entries are never picked."""
    total = sum(w for _, w in weights)
    point = draw * total
    chosen = None
    for name, weight in weights:
        if weight <= 0:
            continue
        chosen = name
        if point < weight:
            return name
        point -= weight
    if chosen is None:
        raise ValueError("no entry has a positive weight")
    return chosen  # only reached through float rounding at draw≈1


def _unit_hash(key: str, name: str) -> float:
    """A uniform value in (0, 1) from (key, name); stable across processes and restarts."""
    digest = hashlib.blake2b(f"{name}\x00{key}".encode(), digest_size=8).digest()
    return (int.from_bytes(digest, "big") + 0.5) / 2.0**64


def sticky_choice(key: str, weights: Sequence[tuple[str, float]]) -> str:
    """Weighted rendezvous hashing: a key's variant is the one with the highest score.

    Score ``-w / ln(h)`` picks each variant with probability proportional to its weight, and
    changing one weight only moves keys to or from that variant — the fewest any scheme can
    move — so users keep their variant across canary steps unless the step must move them.
    """
    best, best_score = None, -math.inf
    for name, weight in weights:
        if weight <= 0:
            continue
        score = -weight / math.log(_unit_hash(key, name))
        if score > best_score:
            best, best_score = name, score
    if best is None:
        raise ValueError("no entry has a positive weight")
    return best


def choose_variant(*, rules: Sequence[Rule], weights: Sequence[tuple[str, float]],
                   headers: Mapping[str, str], cookies: Mapping[str, str],
                   sticky_key: str | None, draw: float) -> tuple[str, str]:
    """The variant for one request and why: ``(name, "rule" | "sticky" | "weight")``.

    Rules come first (an A/B header must win over chance), then the sticky key, then weights.
    """
    ruled = match_rule(rules, headers, cookies)
    if ruled is not None:
        return ruled, "rule"
    if sticky_key:
        return sticky_choice(sticky_key, weights), "sticky"
    return weighted_choice(weights, draw), "weight"
