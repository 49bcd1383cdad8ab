"""``turnout router``: flags for the router process (filled in by the router package)."""

from __future__ import annotations

import argparse
from typing import Any


def add_router_parser(sub: Any) -> None:
    p = sub.add_parser("router", help="run the router in front of model servers")
    p.add_argument("--config", required=True, help="routes YAML file")


def run_router(args: argparse.Namespace) -> int:
    raise SystemExit("turnout router: not available in this build yet")
