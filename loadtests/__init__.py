"""Turnout's benchmark harness: ``python -m loadtests.run`` (see loadtests/README.md)."""
