"""The control plane's link to the model registry (MLflow's): ``models:/`` URIs resolved to one
version and a location replicas load, and rollout outcomes written back as version tags.

Why here and not in the model server: importing MLflow costs ~1,300 modules and ~140 MiB and
installs global log handlers. The plane (``turnout up``, the Kubernetes controller) resolves a
``models:/name@alias`` URI once per revision, pins the version it found, and hands replicas a
plain location, so a replica never imports MLflow and a restarted one never loads another
version. ``turnout serve models:/...`` resolves in a short-lived child process for the same
reason (:func:`locate_in_child`). Every call here blocks (SQLite, HTTP): the plane runs them in
a thread.
"""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

from serving.control.policy.revisions import Pin

REGISTRY_SCHEME = "models:/"
# Tag keys written on registry versions by rollouts: the outcome and its reason.
ROLLOUT_TAG = "turnout.rollout"
ROLLOUT_REASON_TAG = "turnout.rollout.reason"
ROLLOUT_SERVICE_TAG = "turnout.rollout.service"


class RegistryProblem(Exception):
    """A ``models:/`` URI that cannot be served: unknown model, version or alias, unreachable
    registry. The message is for users (no traceback, no internals)."""


def is_registry_uri(uri: str) -> bool:
    return uri.startswith(REGISTRY_SCHEME)


def follows_alias(uri: str) -> bool:
    """Whether ``uri`` names an alias (``models:/fraud@champion``), which can move."""
    return is_registry_uri(uri) and "@" in uri[len(REGISTRY_SCHEME):]


@dataclass(frozen=True)
class Located:
    name: str          # registered model name
    version: str       # the version the URI resolved to now
    pinned_uri: str    # models:/name/version
    location: str      # what replicas load: a local folder, or an s3/gs/http URI they fetch

    @property
    def pin(self) -> Pin:
        return Pin(uri=self.pinned_uri, version=self.version)


@dataclass
class RegistryLink:
    """One registry, chosen by MLflow's conventions: ``tracking_uri`` when given, else
    ``MLFLOW_TRACKING_URI``, else the SQLite database under ``state_dir``."""

    state_dir: Path | None = None
    tracking_uri: str | None = None

    def _registry(self):  # noqa: ANN202 - upstream's type, imported lazily
        from upstream.registry import Registry

        return Registry(self.tracking_uri, state_dir=self.state_dir)

    def locate(self, uri: str, *, fetch: bool = True) -> Located:
        """Resolve ``uri`` to one version and make its files loadable (blocking). Without
        ``fetch`` the location is the registry's own download URI (what a Kubernetes pod is
        given: it fetches the files itself)."""
        from upstream.registry import RegistryError

        try:
            registry = self._registry()
            resolved = registry.resolve(uri)
            location = registry.fetch(resolved) if fetch else resolved.download_uri
        except RegistryError as exc:
            raise RegistryProblem(str(exc)) from None
        return Located(name=resolved.name, version=resolved.version,
                       pinned_uri=resolved.pinned_uri, location=location)

    def record(self, pinned_uri: str, *, outcome: str, reason: str, service: str) -> None:
        """Write a rollout's outcome on the registry version (blocking), so whoever looks at
        the registry sees which versions were promoted or rolled back, and why."""
        from upstream.registry import RegistryError, parse_models_uri

        try:
            ref = parse_models_uri(pinned_uri)
            registry = self._registry()
            assert ref.version is not None
            registry.set_tag(ref.name, ref.version, ROLLOUT_TAG, outcome)
            registry.set_tag(ref.name, ref.version, ROLLOUT_REASON_TAG, reason[:500])
            registry.set_tag(ref.name, ref.version, ROLLOUT_SERVICE_TAG, service)
        except RegistryError as exc:
            raise RegistryProblem(str(exc)) from None


def locate_in_child(uri: str, *, timeout: float = 600.0) -> Located:
    """:meth:`RegistryLink.locate` in a child process, so the caller (``turnout serve``) never
    imports MLflow; the registry is chosen by the same environment."""
    try:
        done = subprocess.run([sys.executable, "-m", "serving.control.registry", uri],
                              capture_output=True, text=True, timeout=timeout, check=False)
    except subprocess.TimeoutExpired:
        raise RegistryProblem(f"resolving {uri} took more than {timeout:.0f} s") from None
    if done.returncode != 0:
        lines = [line for line in done.stderr.strip().splitlines() if line.strip()]
        raise RegistryProblem(lines[-1] if lines else f"resolving {uri} failed")
    return Located(**json.loads(done.stdout.strip().splitlines()[-1]))


def main(argv: list[str] | None = None) -> int:
    """``python -m serving.control.registry URI``: one JSON line on stdout, or one error line
    on stderr and exit status 2."""
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python -m serving.control.registry models:/NAME/VERSION|models:/NAME@ALIAS",
              file=sys.stderr)
        return 2
    try:
        located = RegistryLink().locate(args[0])
    except RegistryProblem as exc:
        print(str(exc), file=sys.stderr)
        return 2
    print(json.dumps(asdict(located)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
