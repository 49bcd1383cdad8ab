"""loadtests/loop_instructions.py: callgrind's count of a Python program's main-thread instructions
per unit of work, from two runs that differ only in the number of units (real valgrind on a
small program; the model-server probe it drives takes minutes and is run by hand)."""

from __future__ import annotations

import sys

from loadtests import loop_instructions as instructions

PROGRAM = "import sys\ntotal = 0\nfor i in range(int(sys.argv[1])):\n    total += i * i\n"


def _counts(units: list[int]) -> float:
    return instructions.measure({n: [sys.executable, "-c", PROGRAM, str(n)] for n in units})


def test_per_unit_is_the_difference_over_the_difference() -> None:
    assert instructions.per_unit({4000: 3_000_000, 1000: 2_100_000}) == 300.0
    assert instructions.per_unit({10: 500, 30: 900}) == 20.0


def test_a_loops_instructions_per_iteration_are_counted_and_repeatable() -> None:
    first = _counts([20_000, 120_000])
    # one iteration of a multiply-add loop on growing integers in CPython: ~1.5k here
    assert 100 < first < 10_000, first
    again = _counts([20_000, 120_000])
    assert abs(again - first) / first < 0.01, (first, again)  # what timing cannot give here
    # start-up cancels out: other counts give the same per-iteration figure
    assert abs(_counts([40_000, 200_000]) - first) / first < 0.02
