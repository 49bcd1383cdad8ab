"""``turnout registry list | show NAME | alias NAME ALIAS VERSION [--delete]``.

:func:`add_parser` adds the ``registry`` command to ``turnout``'s subparsers; :func:`main` runs
it. Errors are one line on stderr and exit status 2, never a traceback.
``python -m upstream.registry.cli ...`` runs the same command on its own.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from upstream.registry.registry import (
    FRAMEWORK_TAG,
    LINEAGE_TAG_PREFIX,
    METRIC_TAG_PREFIX,
    SIGNATURE_TAG,
    Registry,
    ResolvedVersion,
    redact,
)
from upstream.registry.uris import ModelRef, RegistryError

COMMAND = "registry"


def _common() -> argparse.ArgumentParser:
    """--tracking-uri and --state-dir, accepted before or after the subcommand."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--tracking-uri", default=argparse.SUPPRESS, metavar="URI",
                        help="MLflow tracking URI (http://host:5000, sqlite:///file.db); default: "
                             "$MLFLOW_TRACKING_URI, else sqlite:///STATE_DIR/registry.db")
    common.add_argument("--state-dir", type=Path, default=argparse.SUPPRESS, metavar="DIR",
                        help="the local control plane's state folder, home of the default "
                             "SQLite registry (default: ./.turnout)")
    return common


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Add ``registry`` (and its subcommands) to ``subparsers``; returns its parser."""
    common = _common()
    parser = subparsers.add_parser(
        COMMAND, parents=[common], help="list and inspect models in the MLflow registry, move "
        "aliases", description="The MLflow model registry Turnout resolves models:/ URIs in.")
    sub = parser.add_subparsers(dest="registry_command", required=True, metavar="COMMAND")
    p = sub.add_parser("list", parents=[common], help="registered models, latest versions, aliases")
    p.add_argument("--json", action="store_true", help="one JSON document instead of a table")
    p = sub.add_parser("show", parents=[common], help="a model's versions: aliases, tags, "
                       "metrics, download URIs")
    p.add_argument("name", metavar="NAME")
    p.add_argument("--json", action="store_true", help="one JSON document instead of text")
    p = sub.add_parser("alias", parents=[common], help="point an alias at a version (or delete "
                       "it with --delete)")
    p.add_argument("name", metavar="NAME")
    p.add_argument("alias", metavar="ALIAS")
    p.add_argument("version", metavar="VERSION", nargs="?")
    p.add_argument("--delete", action="store_true", help="delete ALIAS instead of moving it")
    return parser


def main(args: argparse.Namespace) -> int:
    """Run ``turnout registry ...`` as parsed by :func:`add_parser`'s parser."""
    try:
        registry = Registry(getattr(args, "tracking_uri", None),
                            state_dir=getattr(args, "state_dir", None))
        command = args.registry_command
        if command == "list":
            return _list(registry, args)
        if command == "show":
            return _show(registry, args)
        if command == "alias":
            return _alias(registry, args)
        raise RegistryError(f"unknown command {command!r}")
    except RegistryError as exc:
        return _fail(str(exc))
    except KeyboardInterrupt:
        return _fail("interrupted")
    except Exception as exc:  # no traceback for users; the message says what broke
        return _fail(f"{type(exc).__name__}: {' '.join(str(exc).split())}"[:500])


def _fail(message: str) -> int:
    print(f"turnout {COMMAND}: {message}", file=sys.stderr)
    return 2


def _list(registry: Registry, args: argparse.Namespace) -> int:
    models = registry.models()
    if args.json:
        print(json.dumps([{"name": m.name, "latest_version": m.latest_version,
                           "aliases": m.aliases, "description": m.description}
                          for m in models], indent=2))
        return 0
    if not models:
        print(f"no registered models in {redact(registry.registry_uri)}")
        return 0
    rows = [("NAME", "LATEST", "ALIASES", "DESCRIPTION")]
    for model in models:
        aliases = ", ".join(f"{a}={v}" for a, v in sorted(model.aliases.items())) or "-"
        rows.append((model.name, model.latest_version or "-", aliases,
                     _one_line(model.description, 60) or "-"))
    print(_table(rows))
    return 0


def _show(registry: Registry, args: argparse.Namespace) -> int:
    versions = registry.versions(args.name)
    if args.json:
        print(json.dumps({"name": args.name, "registry": redact(registry.registry_uri),
                          "versions": [_as_json(v) for v in versions]}, indent=2))
        return 0
    aliases = sorted((a, v.version) for v in versions for a in v.aliases)
    print(f"model {args.name}  (registry {redact(registry.registry_uri)})")
    print("aliases: " + (", ".join(f"{a} -> {v}" for a, v in aliases) or "none"))
    if not versions:
        print("no versions")
    for version in versions:
        print()
        print(_describe(version))
    return 0


def _alias(registry: Registry, args: argparse.Namespace) -> int:
    if args.delete:
        if args.version is not None:
            raise RegistryError("alias --delete takes NAME ALIAS, no VERSION")
        before = _alias_target(registry, args.name, args.alias)
        registry.delete_alias(args.name, args.alias)
        print(f"deleted alias {args.alias} of {args.name} (it pointed at version {before})")
        return 0
    if args.version is None:
        raise RegistryError("alias needs NAME ALIAS VERSION (or NAME ALIAS --delete)")
    before = _alias_target(registry, args.name, args.alias)
    registry.set_alias(args.name, args.alias, args.version)
    moved = f" (was {before})" if before not in (None, args.version) else \
        " (unchanged)" if before == args.version else " (new alias)"
    print(f"models:/{args.name}@{args.alias} -> models:/{args.name}/{args.version}{moved}")
    return 0


def _alias_target(registry: Registry, name: str, alias: str) -> str | None:
    """The version ``alias`` points at now, or None (an unknown model or alias is reported by
    the change itself)."""
    try:
        return registry.resolve(ModelRef(name, alias=alias)).version
    except RegistryError:
        return None


def _describe(version: ResolvedVersion) -> str:
    title = f"version {version.version}"
    if version.aliases:
        title += "  [" + ", ".join(version.aliases) + "]"
    lines = [title, f"  uri:         {version.pinned_uri}",
             f"  download:    {redact(version.download_uri)}"]
    if version.run_id:
        lines.append(f"  run:         {version.run_id}")
    if version.framework:
        lines.append(f"  framework:   {version.framework}")
    if version.description:
        lines.append(f"  description: {_one_line(version.description, 200)}")
    metrics = version.metrics
    if metrics:
        lines.append("  metrics:     " + "  ".join(f"{k}={v:g}" for k, v in sorted(metrics.items())))
    signature = version.signature
    if signature:
        lines.append(f"  inputs:      {_tensors(signature.get('inputs'))}")
        lines.append(f"  outputs:     {_tensors(signature.get('outputs'))}")
    lineage = version.lineage
    if lineage:
        lines.append("  lineage:     " + "  ".join(f"{k}={v}" for k, v in sorted(lineage.items())))
    shown = {FRAMEWORK_TAG, SIGNATURE_TAG}
    others = {k: v for k, v in version.tags.items() if k not in shown
              and not k.startswith((METRIC_TAG_PREFIX, LINEAGE_TAG_PREFIX))}
    for key, value in sorted(others.items()):
        lines.append(f"  tag:         {key}={_one_line(value, 200)}")
    return "\n".join(lines)


def _tensors(specs: Any) -> str:
    if not isinstance(specs, list) or not specs:
        return "-"
    shown = []
    for spec in specs:
        if isinstance(spec, dict):
            shape = spec.get("shape")
            shown.append(" ".join(str(p) for p in (spec.get("name", "?"), spec.get("datatype", "?"),
                                                   shape if shape is not None else "") if p != ""))
        else:
            shown.append(str(spec))
    return "; ".join(shown)


def _as_json(version: ResolvedVersion) -> dict[str, Any]:
    return {"version": version.version, "pinned_uri": version.pinned_uri,
            "download_uri": redact(version.download_uri), "run_id": version.run_id,
            "aliases": list(version.aliases), "framework": version.framework,
            "metrics": version.metrics, "signature": version.signature,
            "lineage": version.lineage, "tags": version.tags,
            "description": version.description}


def _one_line(text: str, limit: int) -> str:
    text = " ".join((text or "").split())
    return text if len(text) <= limit else text[:limit - 3] + "..."


def _table(rows: Sequence[Sequence[str]]) -> str:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip()
                     for row in rows)


def cli(argv: Sequence[str] | None = None) -> int:
    """``python -m upstream.registry.cli ...``: the command without the rest of ``turnout``."""
    parser = argparse.ArgumentParser(prog="turnout")
    add_parser(parser.add_subparsers(dest="command", required=True))
    return main(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(cli())
