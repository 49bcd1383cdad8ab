"""``turnout convert | crds``: the Kubernetes side of the command line.

``convert`` rewrites KServe ``serving.kserve.io`` manifests into Turnout's own group,
``serving.turnout.dev/v1alpha1`` (:mod:`serving.spec.convert`); ``crds`` prints the
CustomResourceDefinitions of that group (:mod:`serving.spec.crd`), what
``turnout crds | kubectl apply -f -`` installs.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any

COMMANDS = ("convert", "crds", "controller")


def add_parsers(sub: Any) -> None:
    convert = sub.add_parser(
        "convert", help="rewrite KServe serving.kserve.io manifests into Turnout's group "
        "serving.turnout.dev/v1alpha1, losslessly")
    convert.add_argument("-f", "--filename", dest="files", action="append", required=True,
                         help="manifest file, or - for standard input (repeatable; several "
                         "documents per file)")
    convert.add_argument("-o", "--output", type=Path,
                         help="write the converted documents here (default: standard output)")
    sub.add_parser("crds", help="print Turnout's CustomResourceDefinitions "
                   "(turnout crds | kubectl apply -f -)")
    controller = sub.add_parser("controller", help="run the Kubernetes controller "
                                "(docs/kubernetes.md#controller)")
    controller.add_argument("--namespace", default=os.environ.get("TURNOUT_WATCH_NAMESPACE") or None,
                            help="watch one namespace (default: all; TURNOUT_WATCH_NAMESPACE)")
    controller.add_argument("--image", default=os.environ.get("TURNOUT_IMAGE", "turnout:latest"),
                            help="image of the model servers and routers it creates")
    controller.add_argument("--kubeconfig", help="default: in-cluster, else ~/.kube/config")
    controller.add_argument("--prometheus-url", help="what KEDA ScaledObjects query")
    controller.add_argument("--config", default=os.environ.get("TURNOUT_CONTROLLER_CONFIG"),
                            help="the chart's config.yaml: images per framework family, router "
                            "and model-server defaults, KEDA (TURNOUT_CONTROLLER_CONFIG)")
    controller.add_argument("--registry-poll", type=float,
                            default=float(os.environ.get("TURNOUT_REGISTRY_POLL_SECONDS", "30")),
                            help="seconds between checks of models:/NAME@ALIAS aliases "
                            "(TURNOUT_REGISTRY_POLL_SECONDS; the registry is MLFLOW_TRACKING_URI)")


def dispatch(args: argparse.Namespace) -> int | None:
    """Run the command if it is one of ours; None means it is someone else's."""
    if args.command not in COMMANDS:
        return None
    if args.command == "controller":
        from serving.control.kube.controller import run_controller

        try:
            run_controller(args.namespace, image=args.image, kubeconfig=args.kubeconfig,
                           prometheus_url=args.prometheus_url, config=args.config,
                           registry_poll=args.registry_poll)
        except ValueError as exc:  # a config file that cannot be used: say so, no traceback
            print(f"turnout controller: {exc}", file=sys.stderr)
            return 2
        return 0
    if args.command == "crds":
        from serving.spec.crd import render_all

        sys.stdout.write(render_all())
        return 0
    return _convert(args)


def _convert(args: argparse.Namespace) -> int:
    from serving.spec.convert import ConvertError, convert_texts

    texts: list[tuple[str | Path, str]] = []
    try:
        for name in args.files:
            texts.append(("<stdin>", sys.stdin.read()) if name == "-" else
                         (name, Path(name).read_text()))
    except OSError as exc:
        print(f"turnout convert: {exc.filename}: cannot read: {exc.strerror}", file=sys.stderr)
        return 2
    except UnicodeDecodeError as exc:
        print(f"turnout convert: {name}: not text: {exc.reason}", file=sys.stderr)
        return 2
    try:
        converted = convert_texts(texts)
    except ConvertError as exc:
        print(f"turnout convert: {exc}", file=sys.stderr)
        return 2
    for line in converted.warnings:
        print(f"warning: {line}", file=sys.stderr)
    text = converted.text()
    if args.output is None:
        sys.stdout.write(text)
        return 0
    try:
        args.output.write_text(text)
    except OSError as exc:
        print(f"turnout convert: {args.output}: cannot write: {exc.strerror}", file=sys.stderr)
        return 2
    print(f"wrote {len(converted.documents)} document(s) to {args.output}", file=sys.stderr)
    return 0
