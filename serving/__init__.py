"""Turnout's model server, control plane and the layers they share."""

from serving import native  # noqa: F401 - first: decides compiled or source modules
