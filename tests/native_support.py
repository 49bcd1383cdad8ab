"""A check for compiled code's one unsafe use: weak references to compiled instances.

mypyc (serving/native.py) gives a compiled class that inherits a Python class — uvicorn's
HTTP protocol, asyncio's Protocol — a weak-reference slot, but its deallocator releases that
slot as if it owned a reference (mypyc/mypyc#1102) instead of clearing the weak references:
one that outlives its object is freed twice and corrupts memory, a crash that lands far from
its cause (router/rest.py's ClientConnection replaced such a reference)."""

from __future__ import annotations

import gc
import weakref

from serving import native


def weakly_referenced_compiled() -> list[str]:
    """Live objects of classes defined in the compiled modules that something holds a weak
    reference to (checked whether or not the modules run compiled now)."""
    modules = set(native.MODULES)
    found = []
    for obj in gc.get_objects():
        if isinstance(obj, weakref.ref):
            target = obj()
            if target is not None and not isinstance(target, type) and any(
                    cls.__module__ in modules for cls in type(target).__mro__):
                found.append(f"{type(target).__module__}.{type(target).__qualname__}")
    return found
