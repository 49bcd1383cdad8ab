"""Graph step conditions in the GJSON syntax KServe's InferenceGraph uses, over a JSON document.

A condition holds when its path *exists* in the document (``gjson.Get(doc, cond).Exists()``
in KServe). Supported subset, enough for KServe's documented forms::

    key.sub.0          keys and array indexes, dot-separated (``\\.`` escapes a dot)
    @this              the document itself
    [@this]            the document wrapped in an array, so a query can test the top level
    #                  the length of an array; ``a.#.b`` maps ``b`` over the array ``a``
    #(cond)            the first element matching cond; ``#(cond)#`` all of them
    cond               ``path op value`` with op in == != < <= > >= % !% (``%`` is a glob with
                       * and ?), value a number, "string", bare word, true, false or null;
                       or just ``path`` (the element has it)

Examples: ``[@this].#(decision_picker=="ENSEMBLE")``, ``instances.#(0>5)``,
``predictions.#(==1)``, ``outputs.#(name=="y")``.
"""

from __future__ import annotations

import fnmatch
import re
from typing import Any

import orjson

_MISSING = object()
_OPS = ("==", "!=", "<=", ">=", "!%", "<", ">", "%", "=")
_NUMBER = re.compile(r"^-?\d+(\.\d+)?([eE][-+]?\d+)?$")


class ConditionError(ValueError):
    """A condition that does not parse."""


def _split(path: str) -> list[str]:
    """Split on dots outside parentheses and quotes, honouring backslash escapes."""
    parts: list[str] = []
    buf: list[str] = []
    depth = 0
    quoted = False
    i = 0
    while i < len(path):
        ch = path[i]
        if ch == "\\" and i + 1 < len(path):
            buf.append(path[i + 1] if depth == 0 else path[i:i + 2])
            i += 2
            continue
        if ch == '"':
            quoted = not quoted
        elif not quoted and ch == "(":
            depth += 1
        elif not quoted and ch == ")":
            depth -= 1
        if ch == "." and depth == 0 and not quoted:
            parts.append("".join(buf))
            buf = []
        else:
            buf.append(ch)
        i += 1
    if depth != 0 or quoted:
        raise ConditionError(f"unbalanced parentheses or quotes in {path!r}")
    parts.append("".join(buf))
    return parts


def get(doc: Any, path: str) -> Any:
    """The value at ``path``, or the private ``_MISSING`` marker."""
    parts = _split(path) if path else []
    if parts and parts[0] == "[@this]":
        doc, parts = [doc], parts[1:]
    return _walk(doc, parts)


def _walk(value: Any, parts: list[str]) -> Any:
    for index, part in enumerate(parts):
        if value is _MISSING:
            return _MISSING
        if part == "@this" or part == "":
            continue
        if part == "#":
            if not isinstance(value, list):
                return _MISSING
            rest = parts[index + 1:]
            if not rest:
                return len(value)
            mapped = [_walk(v, rest) for v in value]
            return [v for v in mapped if v is not _MISSING]
        if part.startswith("#(") and (part.endswith(")") or part.endswith(")#")):
            if not isinstance(value, list):
                return _MISSING
            all_matches = part.endswith(")#")
            query = part[2:-2] if all_matches else part[2:-1]
            matches = [v for v in value if _matches(v, query)]
            if all_matches:
                value = matches
            else:
                value = matches[0] if matches else _MISSING
            continue
        if isinstance(value, dict):
            value = value.get(part, _MISSING)
        elif isinstance(value, list) and part.isdigit():
            position = int(part)
            value = value[position] if position < len(value) else _MISSING
        else:
            return _MISSING
    return value


def _find_op(query: str) -> tuple[int, str] | None:
    depth = 0
    quoted = False
    for i, ch in enumerate(query):
        if ch == '"':
            quoted = not quoted
        if quoted:
            continue
        if ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
        elif depth == 0:
            for op in _OPS:
                if query.startswith(op, i):
                    return i, op
    return None


def _literal(text: str) -> Any:
    text = text.strip()
    if text.startswith('"') and text.endswith('"') and len(text) >= 2:
        return text[1:-1]
    if text in ("true", "false", "null"):
        return {"true": True, "false": False, "null": None}[text]
    if _NUMBER.match(text):
        return float(text)
    return text


def _matches(element: Any, query: str) -> bool:
    found = _find_op(query)
    if found is None:
        return get(element, query.strip()) is not _MISSING
    at, op = found
    left = get(element, query[:at].strip())
    if left is _MISSING:
        return False
    right = _literal(query[at + len(op):])
    if op in ("%", "!%"):
        hit = isinstance(left, str) and fnmatch.fnmatchcase(left, str(right))
        return hit if op == "%" else not hit
    if isinstance(left, bool) or isinstance(right, bool) or left is None or right is None:
        return (left == right) if op in ("==", "=") else (left != right) if op == "!=" else False
    if isinstance(left, int | float) and isinstance(right, float):
        a, b = float(left), right
    elif isinstance(left, str) and not isinstance(right, float):
        a, b = left, str(right)  # type: ignore[assignment]
    elif isinstance(left, str) and isinstance(right, float):
        a, b = left, _literal_text(query[at + len(op):])  # type: ignore[assignment]
    else:
        return op == "!="
    return {"==": a == b, "=": a == b, "!=": a != b, "<": a < b, "<=": a <= b,
            ">": a > b, ">=": a >= b}[op]


def _literal_text(text: str) -> str:
    return text.strip().strip('"')


def holds(condition: str, document: bytes | Any) -> bool:
    """Whether ``condition`` finds something in ``document`` (JSON bytes or parsed)."""
    doc = orjson.loads(document) if isinstance(document, bytes | bytearray | memoryview) else document
    return get(doc, condition) is not _MISSING


def validate(condition: str) -> None:
    """Raise :class:`ConditionError` for a condition that cannot parse."""
    for part in _split(condition):
        if part.startswith("#(") and not (part.endswith(")") or part.endswith(")#")):
            raise ConditionError(f"query {part!r} in {condition!r} is not closed")
