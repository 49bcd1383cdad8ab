"""``.turnout/state.json``: the plane's state, written atomically once per change and read back
at start, so a restarted ``turnout up`` resumes every service, revision, weight and rollout.

What is kept is exactly what the pure policies need (the applied manifests, each service's
:class:`~serving.control.policy.revisions.ServiceState` with its rollout step and metric
baseline, the graphs); replicas are processes and are started again. A file that cannot be
read, is not this format, or was written by a newer Turnout is an error that names the file —
never a silent reset that would forget a rollout in flight.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from serving.control.policy.revisions import ServiceState
from serving.spec.graph import InferenceGraph
from serving.spec.inferenceservice import InferenceService

FORMAT = 1


class StateFileError(RuntimeError):
    """The state file cannot be used; the message names it and says what to do."""


@dataclass
class SavedService:
    manifest: InferenceService
    base: Path                    # the manifest's folder: relative storage URIs start there
    state: ServiceState


@dataclass
class Saved:
    services: dict[str, SavedService] = field(default_factory=dict)
    graphs: dict[str, InferenceGraph] = field(default_factory=dict)


def render(saved: Saved) -> str:
    doc = {"format": FORMAT,
           "services": {name: {"manifest": s.manifest.model_dump(mode="json", exclude_unset=True),
                               "base": str(s.base), "state": s.state.model_dump(mode="json")}
                        for name, s in saved.services.items()},
           "graphs": {name: g.model_dump(mode="json", exclude_unset=True)
                      for name, g in saved.graphs.items()}}
    return json.dumps(doc, indent=1, sort_keys=True)


class StateFile:
    """One file, written only when what it would say changed."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._written: str | None = None

    def write(self, saved: Saved) -> bool:
        text = render(saved)
        if text == self._written:
            return False
        tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
        with tmp.open("w") as out:
            out.write(text)
            out.flush()
            os.fsync(out.fileno())
        tmp.replace(self.path)
        self._written = text
        return True

    def read(self) -> Saved:
        """The saved state; an empty one when there is no file yet."""
        try:
            text = self.path.read_text()
        except FileNotFoundError:
            return Saved()
        except OSError as exc:
            raise StateFileError(f"{self.path}: cannot read: {exc.strerror}") from None
        try:
            doc = json.loads(text)
        except ValueError as exc:
            raise self._bad(f"not JSON ({exc})") from None
        if not isinstance(doc, dict) or not isinstance(doc.get("format"), int):
            raise self._bad("no format number: not a Turnout state file, or one written by a "
                            "Turnout before 0.1 that never read it back")
        if doc["format"] > FORMAT:
            raise StateFileError(f"{self.path}: written by a newer Turnout (format "
                                 f"{doc['format']}, this one reads {FORMAT}); upgrade, or move "
                                 "the file away to start from the manifests alone")
        try:
            saved = Saved(
                services={name: _service(entry) for name, entry in doc["services"].items()},
                graphs={name: InferenceGraph.model_validate(g)
                        for name, g in doc["graphs"].items()})
        except (KeyError, TypeError, AttributeError, ValidationError) as exc:
            raise self._bad(f"unreadable entry: {_short(exc)}") from None
        self._written = render(saved)
        return saved

    def _bad(self, why: str) -> StateFileError:
        return StateFileError(f"{self.path}: {why}; move it away to start from the manifests "
                              "alone (running services and rollouts in it are then forgotten)")


def _service(entry: dict[str, Any]) -> SavedService:
    return SavedService(manifest=InferenceService.model_validate(entry["manifest"]),
                        base=Path(entry["base"]),
                        state=ServiceState.model_validate(entry["state"]))


def _short(exc: Exception) -> str:
    text = str(exc).splitlines()
    return text[0] if len(text) == 1 else "; ".join(line.strip() for line in text[:3])
