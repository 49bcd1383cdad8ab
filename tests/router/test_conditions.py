"""Switch/Sequence conditions in KServe's GJSON forms."""

from __future__ import annotations

import pytest

from serving.spec.conditions import holds

DOC = {
    "decision_picker": "ENSEMBLE",
    "instances": [[1, 2], [7, 8]],
    "inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 2], "data": [3.5, 4]}],
    "predictions": [0, 1, 2],
    "flag": True,
    "user": {"name": "ana", "tier": "gold", "a.b": 1},
}


@pytest.mark.parametrize("condition,expected", [
    ("decision_picker", True),
    ("missing", False),
    ("user.name", True),
    ("user.tier.x", False),
    ("user.a\\.b", True),
    ("instances.1.0", True),
    ("instances.5", False),
    ("[@this].#(decision_picker==ENSEMBLE)", True),
    ('[@this].#(decision_picker=="ENSEMBLE")', True),
    ("[@this].#(decision_picker==SEQUENCE)", False),
    ("[@this].#(decision_picker!=SEQUENCE)", True),
    ("[@this].#(user.tier==gold)", True),
    ("[@this].#(flag==true)", True),
    ("[@this].#(flag==false)", False),
    ("predictions.#(==1)", True),
    ("predictions.#(>5)", False),
    ("predictions.#(>=2)", True),
    ("instances.#(0>5)", True),
    ("instances.#(0>50)", False),
    ("inputs.#(name==x)", True),
    ("inputs.#(name%\"x*\")", True),
    ("inputs.#(name!%\"x*\")", False),
    ("inputs.#(datatype==\"FP32\").shape", True),
    ("inputs.#(data.0<4)", True),
    ("predictions.#(>5)#", True),  # GJSON: an all-matches query exists even when empty
    ("@this.user", True),
])
def test_conditions(condition, expected):
    assert holds(condition, DOC) is expected


def test_conditions_on_bytes():
    assert holds("[@this].#(a==1)", b'{"a": 1}')
