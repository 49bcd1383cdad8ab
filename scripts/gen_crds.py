"""Regenerate charts/turnout/crds/ from the manifest models (serving/spec/crd.py).

One file per CustomResourceDefinition, named after it, in the Helm chart's ``crds/`` folder
(Helm installs those before the chart's templates). The models that ``turnout up`` validates are
the only source: edit them, then run this.

Usage: python scripts/gen_crds.py [--check]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from serving.spec.crd import crds, file_name, render  # noqa: E402

OUTPUT = ROOT / "charts" / "turnout" / "crds"


def expected() -> dict[Path, str]:
    """Each CRD file's path and the text a fresh generation gives it."""
    return {OUTPUT / file_name(crd): render(crd) for crd in crds()}


def stale() -> list[Path]:
    """Generated files that are missing or differ from a fresh generation."""
    return [path for path, text in expected().items()
            if not path.exists() or path.read_text() != text]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true",
                        help="exit 1 if the committed files differ from a fresh generation")
    args = parser.parse_args(argv)
    if args.check:
        out_of_date = stale()
        for path in out_of_date:
            print(f"{path.relative_to(ROOT)} is out of date; run python scripts/gen_crds.py",
                  file=sys.stderr)
        return 1 if out_of_date else 0
    OUTPUT.mkdir(parents=True, exist_ok=True)
    for path, text in expected().items():
        path.write_text(text)
        print(f"wrote {path.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
