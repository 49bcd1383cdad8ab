"""``models:/`` URIs and the names inside them: pure functions, no MLflow.

Turnout accepts two forms, both pointing at one registered model version:

* ``models:/NAME/VERSION`` — a fixed version (what a revision pins);
* ``models:/NAME@ALIAS`` — whatever version the alias points at now (it can move).

Everything else MLflow knows is refused with a message saying why: ``models:/NAME`` alone,
``models:/NAME/latest`` and stage names (``Production``) are not reproducible; ``models:/m-<id>``
names an MLflow 3 logged model, not a registry version; ``models://profile@host/...`` names
another workspace.

Names are stricter than MLflow's (which allows almost anything except ``/`` and ``:``): a name
becomes a folder in the model cache and a label in metrics, so Turnout allows letters, digits,
``.``, ``_`` and ``-``, starting with a letter or digit, up to 255 characters (a file name's
limit on most filesystems; MLflow's own is 256).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

SCHEME = "models:"
PREFIX = "models:/"

MAX_NAME_LENGTH = 255  # a folder name in the model cache; MLflow's column holds 256
MAX_ALIAS_LENGTH = 255  # MLflow's limit for alias names

_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*", re.ASCII)
_ALIAS_RE = re.compile(r"[A-Za-z0-9_-]+", re.ASCII)
_VERSION_RE = re.compile(r"[1-9][0-9]{0,18}", re.ASCII)
_RESERVED_ALIAS_RE = re.compile(r"[vV][0-9]+", re.ASCII)
_LOGGED_MODEL_RE = re.compile(r"m-[0-9a-f]{32}", re.ASCII)


class RegistryError(Exception):
    """Something the registry cannot do for the given input: an unknown model, version or alias,
    a malformed URI, an unreachable server. The message is meant for users as is."""


@dataclass(frozen=True)
class ModelRef:
    """One registered model version, by number or by alias (exactly one of them is set)."""

    name: str
    version: str | None = None
    alias: str | None = None

    def __post_init__(self) -> None:
        check_name(self.name)
        if (self.version is None) == (self.alias is None):
            raise RegistryError(f"model {self.name!r}: give a version or an alias (one of them)")
        if self.version is not None:
            check_version(self.version)
        if self.alias is not None:
            check_alias(self.alias)

    @property
    def uri(self) -> str:
        """``models:/name/version`` or ``models:/name@alias``."""
        if self.version is not None:
            return f"{PREFIX}{self.name}/{self.version}"
        return f"{PREFIX}{self.name}@{self.alias}"

    def __str__(self) -> str:
        return self.uri


def is_registry_uri(uri: str) -> bool:
    """Whether ``uri`` is a ``models:`` URI (valid or not: :func:`parse_models_uri` says)."""
    return isinstance(uri, str) and uri.startswith(SCHEME)


def _shown(value: str, limit: int = 80) -> str:
    return repr(value if len(value) <= limit else value[:limit] + "...")


def check_name(name: str) -> str:
    """``name`` if Turnout accepts it as a registered model name, else :class:`RegistryError`."""
    if not isinstance(name, str) or not name:
        raise RegistryError("model name is empty")
    if len(name) > MAX_NAME_LENGTH:
        raise RegistryError(f"model name {_shown(name)} is {len(name)} characters long; "
                            f"the most is {MAX_NAME_LENGTH}")
    if not _NAME_RE.fullmatch(name):
        raise RegistryError(f"invalid model name {_shown(name)}: use letters, digits, '.', '_' "
                            "and '-', starting with a letter or digit")
    return name


def check_version(version: str) -> str:
    """``version`` (a positive integer, as text) or :class:`RegistryError`."""
    if not isinstance(version, str) or not _VERSION_RE.fullmatch(version):
        raise RegistryError(f"invalid model version {_shown(str(version))}: versions are "
                            "positive integers (1, 2, ...)")
    return version


def check_alias(alias: str) -> str:
    """``alias`` if MLflow accepts it as an alias name, else :class:`RegistryError`."""
    if not isinstance(alias, str) or not alias:
        raise RegistryError("alias is empty")
    if len(alias) > MAX_ALIAS_LENGTH:
        raise RegistryError(f"alias {_shown(alias)} is {len(alias)} characters long; the most "
                            f"is {MAX_ALIAS_LENGTH}")
    if not _ALIAS_RE.fullmatch(alias):
        raise RegistryError(f"invalid alias {_shown(alias)}: use letters, digits, '_' and '-'")
    if alias.lower() == "latest":
        raise RegistryError("'latest' is not an alias (MLflow reserves it); pin a version or "
                            "set an alias such as 'champion'")
    if _RESERVED_ALIAS_RE.fullmatch(alias):
        raise RegistryError(f"alias {alias!r} is reserved by MLflow for version numbers; "
                            f"use models:/NAME/{alias[1:]} for that version")
    return alias


def parse_models_uri(uri: str) -> ModelRef:
    """``models:/name/3`` or ``models:/name@alias`` as a :class:`ModelRef`; anything else is a
    :class:`RegistryError` whose message says what was expected."""
    if not is_registry_uri(uri):
        raise RegistryError(f"{_shown(str(uri))} is not a models:/ URI; expected "
                            "models:/NAME/VERSION or models:/NAME@ALIAS")
    rest = uri[len(SCHEME):]
    if rest.startswith("//"):
        raise RegistryError(f"{_shown(uri)}: models:// URIs that name another registry are not "
                            "supported; choose the registry with --tracking-uri or "
                            "MLFLOW_TRACKING_URI and use models:/NAME/VERSION")
    if not rest.startswith("/"):
        raise RegistryError(f"{_shown(uri)}: expected models:/NAME/VERSION or models:/NAME@ALIAS")
    rest = rest[1:]
    if "?" in rest or "#" in rest:
        raise RegistryError(f"{_shown(uri)}: a models:/ URI takes no query or fragment")
    if "@" in rest:
        name, _, alias = rest.partition("@")
        if "/" in alias:
            raise RegistryError(f"{_shown(uri)}: expected models:/NAME@ALIAS, with nothing after "
                                "the alias")
        if "/" in name:
            raise RegistryError(f"{_shown(uri)}: invalid model name {_shown(name)}: model names "
                                "cannot contain '/'")
        return ModelRef(check_name(name), alias=check_alias(alias))
    name, slash, version = rest.partition("/")
    if _LOGGED_MODEL_RE.fullmatch(name) and not slash:
        raise RegistryError(f"{_shown(uri)} names an MLflow logged model, not a registered "
                            "model version; register it and use models:/NAME/VERSION")
    if not slash or not version:
        raise RegistryError(f"{_shown(uri)}: no version or alias; use models:/{name}/VERSION "
                            f"or models:/{name}@ALIAS")
    if "/" in version:
        raise RegistryError(f"{_shown(uri)}: expected models:/NAME/VERSION; model names "
                            "cannot contain '/'")
    check_name(name)
    if version.lower() == "latest":
        raise RegistryError(f"{_shown(uri)}: 'latest' changes whenever a version is registered; "
                            "pin a version (models:/NAME/3) or use an alias (models:/NAME@champion)")
    if not version.isdigit():
        raise RegistryError(f"{_shown(uri)}: {_shown(version)} is not a version number (model "
                            "stages are deprecated in MLflow); use an alias: "
                            f"models:/{name}@ALIAS")
    return ModelRef(name, version=check_version(version))


def pinned_uri(name: str, version: str) -> str:
    """``models:/name/version``."""
    return f"{PREFIX}{name}/{version}"
