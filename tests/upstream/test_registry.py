"""The MLflow model registry layer against its embedded default: SQLite in a state folder.

Real MLflow, a real trained scikit-learn model; the server-backed half is in
``test_registry_server.py``.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import yaml

from tests.conftest import free_port
from upstream.registry import (
    ModelRef,
    Registry,
    RegistryError,
    ResolvedVersion,
    is_registry_uri,
    parse_models_uri,
)
from upstream.registry import cli as registry_cli

ROOT = Path(__file__).resolve().parents[2]
INPUTS = [{"name": "features", "datatype": "FP64", "shape": [-1, 4]}]
OUTPUTS = [{"name": "predict", "datatype": "INT64", "shape": [-1]}]
LOGGED_MODEL_ID = "m-0123456789abcdef0123456789abcdef"
ENV_URIS = ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI")


# ---- helpers shared with test_registry_server.py ------------------------------------------


def make_model_folder(folder: Path, *, c: float = 1.0) -> dict[str, float]:
    """Train a small logistic regression on iris into ``folder``: model.joblib,
    model-settings.yaml (with inputs/outputs), metrics.json and a nested binary file.
    Returns the metrics written."""
    import joblib
    from sklearn.datasets import load_iris
    from sklearn.linear_model import LogisticRegression

    x, y = load_iris(return_X_y=True)
    model = LogisticRegression(C=c, max_iter=500).fit(x, y)
    folder.mkdir(parents=True, exist_ok=True)
    joblib.dump(model, folder / "model.joblib")
    (folder / "model-settings.yaml").write_text(yaml.safe_dump({
        "name": "iris", "runtime": "sklearn", "artifact": "model.joblib",
        "inputs": INPUTS, "outputs": OUTPUTS}))
    metrics = {"accuracy": float(model.score(x, y)), "train_rows": float(len(x))}
    (folder / "metrics.json").write_text(json.dumps(metrics))
    (folder / "extra").mkdir(exist_ok=True)
    (folder / "extra" / "notes.txt").write_bytes(b"C=%r\n\x00\xff binary tail" % c)
    return metrics


def tree(folder: Path) -> dict[str, bytes]:
    """Every file under ``folder`` by relative path, with its bytes."""
    return {p.relative_to(folder).as_posix(): p.read_bytes()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def predictions(folder: Path) -> list[int]:
    import joblib
    from sklearn.datasets import load_iris

    x, _ = load_iris(return_X_y=True)
    return joblib.load(folder / "model.joblib").predict(x).tolist()


# ---- fixtures -----------------------------------------------------------------------------


@pytest.fixture(autouse=True)
def _no_registry_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ENV_URIS:
        monkeypatch.delenv(name, raising=False)


@pytest.fixture(scope="module")
def work(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """One SQLite registry (the default: ``<state_dir>/registry.db``) with model ``iris``:
    version 1 (alias champion, lineage, params) and version 2, registered from a scratch
    working directory so anything written to the CWD would show."""
    base = tmp_path_factory.mktemp("registry")
    folders = {"v1": base / "trained" / "v1", "v2": base / "trained" / "v2"}
    metrics = {key: make_model_folder(folder, c=c)
               for (key, folder), c in zip(folders.items(), (1.0, 0.05), strict=True)}
    cwd = base / "cwd"
    cwd.mkdir()
    with pytest.MonkeyPatch.context() as patch:
        for name in ENV_URIS:
            patch.delenv(name, raising=False)
        patch.chdir(cwd)
        registry = Registry()  # state_dir defaults to ./.turnout
        v1 = registry.register(
            folders["v1"], "iris", framework="sklearn", alias="champion",
            params={"C": 1.0, "solver": "lbfgs", "grid": {"max_iter": 500}},
            lineage={"pipeline_run": "run-42", "pipeline": "iris-train", "dataset": "iris@v1"},
            description="first try")
        v2 = registry.register(folders["v2"], "iris", framework="sklearn")
    return {"base": base, "cwd": cwd, "state": cwd / ".turnout", "registry": registry,
            "folders": folders, "metrics": metrics, "v1": v1, "v2": v2}


# ---- models:/ URIs (pure) -----------------------------------------------------------------


@pytest.mark.parametrize(("uri", "ref"), [
    ("models:/iris/3", ModelRef("iris", version="3")),
    ("models:/iris@champion", ModelRef("iris", alias="champion")),
    ("models:/fraud.detector-v2_x/12", ModelRef("fraud.detector-v2_x", version="12")),
    ("models:/a@b-c_D9", ModelRef("a", alias="b-c_D9")),
    ("models:/" + "n" * 255 + "/1", ModelRef("n" * 255, version="1")),
])
def test_parse_models_uri_accepts_versions_and_aliases(uri: str, ref: ModelRef) -> None:
    assert parse_models_uri(uri) == ref
    assert ref.uri == uri
    assert is_registry_uri(uri)


@pytest.mark.parametrize(("uri", "says"), [
    ("models:/iris", "no version or alias"),
    ("models:/iris/", "no version or alias"),
    (f"models:/{LOGGED_MODEL_ID}", "logged model"),
    ("models:/iris/latest", "'latest' changes"),
    ("models:/iris/Production", "stages are deprecated"),
    ("models:/iris/0", "positive integers"),
    ("models:/iris/-1", "not a version number"),
    ("models:/iris/1/extra", "names cannot contain '/'"),
    ("models:/iris@", "alias is empty"),
    ("models:/iris@a/b", "nothing after the alias"),
    ("models:/iris@v2", "reserved by MLflow"),
    ("models:/iris@latest", "'latest' is not an alias"),
    ("models:/iris@no good", "invalid alias"),
    ("models:/../etc/1", "cannot contain '/'"),
    ("models:/..@x", "invalid model name"),
    ("models:/.hidden/1", "invalid model name"),
    ("models:/ir is/1", "invalid model name"),
    ("models:/ïris/1", "invalid model name"),
    ("models:/" + "n" * 256 + "/1", "256 characters long"),
    ("models:/" + "n" * 5000 + "@x", "5000 characters long"),
    ("models://profile@databricks/iris/1", "another registry"),
    ("models:iris/1", "expected models:/NAME/VERSION"),
    ("models:/iris/1?x=1", "no query"),
    ("s3://bucket/iris", "not a models:/ URI"),
    ("", "not a models:/ URI"),
])
def test_parse_models_uri_refuses_with_a_reason(uri: str, says: str) -> None:
    with pytest.raises(RegistryError) as raised:
        parse_models_uri(uri)
    message = str(raised.value)
    assert says in message
    assert len(message) < 400  # hostile lengths are cut, not echoed whole
    assert "\n" not in message


def test_is_registry_uri() -> None:
    assert is_registry_uri("models:/x/1")
    assert not is_registry_uri("s3://b/models:/x")
    assert not is_registry_uri("/models/x")


def test_importing_the_package_and_pure_functions_leave_mlflow_out(tmp_path: Path) -> None:
    code = f"""
import sys
import upstream.registry as r
import upstream.registry.cli
assert r.parse_models_uri("models:/iris@champion").alias == "champion"
assert r.is_registry_uri("models:/iris/1")
try:
    r.parse_models_uri("models:/iris")
except r.RegistryError:
    pass
registry = r.Registry(state_dir={str(tmp_path / 'none')!r})
assert registry.models() == []  # no database yet: nothing to open, nothing created
try:
    registry.resolve("models:/iris/1")
except r.RegistryError as exc:
    assert "holds no registered models" in str(exc), exc
loaded = sorted(m for m in sys.modules if m == "mlflow" or m.startswith("mlflow."))
assert not loaded, loaded
print("ok")
"""
    env = {k: v for k, v in os.environ.items() if k not in ENV_URIS}
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "ok"
    assert not (tmp_path / "none").exists()


# ---- choosing the registry ----------------------------------------------------------------


def test_registry_choice_follows_mlflow_conventions(tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    default = Registry()
    assert default.tracking_uri == f"sqlite:///{tmp_path / '.turnout' / 'registry.db'}"
    assert default.registry_uri == default.tracking_uri
    assert Registry(state_dir=tmp_path / "s").tracking_uri == f"sqlite:///{tmp_path}/s/registry.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://tracking.example:5000")
    assert Registry().tracking_uri == "http://tracking.example:5000"
    monkeypatch.setenv("MLFLOW_REGISTRY_URI", "http://registry.example:5000")
    assert Registry().registry_uri == "http://registry.example:5000"
    explicit = Registry("http://explicit.example:5000")  # an argument beats the environment
    assert (explicit.tracking_uri, explicit.registry_uri) == ("http://explicit.example:5000",) * 2
    assert Registry("sqlite:///a.db", registry_uri="sqlite:///b.db").registry_uri == "sqlite:///b.db"
    assert "MLFLOW_DISABLE_TELEMETRY" in os.environ  # set (by default) before MLflow is imported


def test_an_unreachable_server_is_a_clear_error_not_minutes_of_retries() -> None:
    port = free_port()
    started = time.monotonic()
    with pytest.raises(RegistryError, match=rf"cannot reach the MLflow tracking server at "
                       rf"http://127.0.0.1:{port}"):
        Registry(f"http://127.0.0.1:{port}").resolve("models:/iris/1")
    assert time.monotonic() - started < 10
    with pytest.raises(RegistryError, match="cannot reach"):
        Registry(f"http://user:secret@127.0.0.1:{port}").models()
    try:
        Registry(f"http://user:secret@127.0.0.1:{port}").models()
    except RegistryError as exc:
        assert "secret" not in str(exc)


# ---- register, resolve, fetch (SQLite) ----------------------------------------------------


def test_register_writes_a_version_whose_download_location_is_the_folder(work: dict) -> None:
    v1: ResolvedVersion = work["v1"]
    assert (v1.name, v1.version, v1.pinned_uri) == ("iris", "1", "models:/iris/1")
    assert v1.aliases == ("champion",)
    assert v1.run_id
    artifacts = work["state"] / "mlartifacts"
    assert v1.download_uri.startswith(artifacts.as_uri() + "/"), v1.download_uri
    assert v1.download_uri.endswith("/artifacts/model")
    # the folder's files, nothing more, nothing less, byte for byte
    assert tree(Path(v1.download_uri[len("file://"):])) == tree(work["folders"]["v1"])
    # nothing landed in the working directory (no ./mlruns, no ./mlartifacts)
    assert sorted(p.name for p in work["cwd"].iterdir()) == [".turnout"]
    assert sorted(p.name for p in work["state"].iterdir() if not p.name.endswith(".lock")) == \
        ["mlartifacts", "registry.db"]


def test_tags_carry_framework_signature_metrics_and_lineage(work: dict) -> None:
    v1: ResolvedVersion = work["registry"].resolve("models:/iris/1")
    assert v1.tags["turnout.framework"] == "sklearn" == v1.framework
    assert json.loads(v1.tags["turnout.signature"]) == {"inputs": INPUTS, "outputs": OUTPUTS}
    assert v1.signature == {"inputs": INPUTS, "outputs": OUTPUTS}
    expected = work["metrics"]["v1"]  # read from the folder's metrics.json
    assert {k: float(v) for k, v in v1.tags.items() if k.startswith("turnout.metric.")} == \
        {f"turnout.metric.{k}": v for k, v in expected.items()}
    assert v1.metrics == expected
    assert v1.tags["turnout.lineage.pipeline_run"] == "run-42"
    assert v1.lineage == {"pipeline_run": "run-42", "pipeline": "iris-train",
                          "dataset": "iris@v1"}
    assert v1.description == "first try"
    v2 = work["registry"].resolve("models:/iris/2")
    assert v2.metrics == work["metrics"]["v2"]
    assert v2.metrics["accuracy"] != v1.metrics["accuracy"]
    assert v2.lineage == {}


def test_the_run_holds_params_and_metrics(work: dict) -> None:
    from mlflow import MlflowClient

    registry: Registry = work["registry"]
    run = MlflowClient(tracking_uri=registry.tracking_uri).get_run(work["v1"].run_id)
    assert run.info.status == "FINISHED"
    assert run.data.params == {"C": "1.0", "solver": "lbfgs", "grid.max_iter": "500"}
    assert run.data.metrics == work["metrics"]["v1"]
    assert run.data.tags["turnout.registered_model"] == "iris"
    assert run.data.tags["turnout.lineage.pipeline"] == "iris-train"


def test_resolve_by_version_and_by_alias(work: dict) -> None:
    registry: Registry = work["registry"]
    by_alias = registry.resolve("models:/iris@champion")
    assert by_alias == registry.resolve("models:/iris/1") == registry.resolve(ModelRef("iris", "1"))
    assert by_alias.pinned_uri == "models:/iris/1"
    v2 = registry.resolve("models:/iris/2")
    assert v2.version == "2" and v2.aliases == ()
    assert v2.download_uri != by_alias.download_uri


def test_fetch_gives_the_registered_files_byte_for_byte(work: dict, tmp_path: Path) -> None:
    registry: Registry = work["registry"]
    for key in ("v1", "v2"):
        resolved = registry.resolve(f"models:/iris/{key[1]}")
        location = Path(registry.fetch(resolved, cache_dir=tmp_path))
        assert location.is_dir()
        assert tree(location) == tree(work["folders"][key])
        assert predictions(location) == predictions(work["folders"][key])
    assert list(tmp_path.iterdir()) == []  # local files are served in place, not copied


def test_models_and_versions_list_what_is_registered(work: dict) -> None:
    registry: Registry = work["registry"]
    iris = next(m for m in registry.models() if m.name == "iris")
    assert iris.latest_version == "2"
    assert iris.aliases == {"champion": "1"}
    versions = registry.versions("iris")
    assert [v.version for v in versions] == ["2", "1"]
    assert versions[1].aliases == ("champion",)
    assert versions[1].metrics == work["metrics"]["v1"]
    assert versions[1].download_uri == work["v1"].download_uri


def test_aliases_move_and_go(work: dict) -> None:
    registry: Registry = work["registry"]
    registry.register(work["folders"]["v1"], "iris-moving", framework="sklearn",
                      alias="champion")
    registry.register(work["folders"]["v2"], "iris-moving", framework="sklearn")
    assert registry.resolve("models:/iris-moving@champion").version == "1"
    registry.set_alias("iris-moving", "champion", "2")
    assert registry.resolve("models:/iris-moving@champion").version == "2"
    assert registry.resolve("models:/iris-moving/1").aliases == ()
    assert registry.resolve("models:/iris-moving/2").aliases == ("champion",)
    registry.set_alias("iris-moving", "challenger", "1")
    summary = next(m for m in registry.models() if m.name == "iris-moving")
    assert summary.aliases == {"champion": "2", "challenger": "1"}
    registry.delete_alias("iris-moving", "champion")
    with pytest.raises(RegistryError, match=r"model 'iris-moving' has no alias 'champion' "
                       r"\(aliases: challenger -> 1\)"):
        registry.resolve("models:/iris-moving@champion")
    # a new version registered with an alias takes it over
    v3 = registry.register(work["folders"]["v1"], "iris-moving", framework="sklearn",
                           alias="challenger")
    assert registry.resolve("models:/iris-moving@challenger") == v3
    assert v3.version == "3"


def test_set_tag_on_a_version(work: dict) -> None:
    registry: Registry = work["registry"]
    registry.set_tag("iris", "2", "turnout.rollout", "promoted")
    assert registry.resolve("models:/iris/2").tags["turnout.rollout"] == "promoted"
    assert "turnout.rollout" not in registry.resolve("models:/iris/1").tags


def test_unknown_model_version_and_alias_say_so(work: dict) -> None:
    registry: Registry = work["registry"]
    cases = [
        (lambda: registry.resolve("models:/nope/1"), "unknown model 'nope' in the registry at "
         f"sqlite:///{work['state']}/registry.db (registered models: iris"),
        (lambda: registry.resolve("models:/iris/99"), "model 'iris' has no version 99 "
         "(the latest is 2)"),
        (lambda: registry.resolve("models:/iris@staging"), "model 'iris' has no alias "
         "'staging' (aliases: champion -> 1)"),
        (lambda: registry.set_alias("iris", "canary", "99"), "model 'iris' has no version 99"),
        (lambda: registry.set_alias("nope", "canary", "1"), "unknown model 'nope'"),
        (lambda: registry.delete_alias("iris", "staging"), "model 'iris' has no alias 'staging'"),
        (lambda: registry.set_tag("iris", "99", "k", "v"), "model 'iris' has no version 99"),
        (lambda: registry.versions("nope"), "unknown model 'nope'"),
    ]
    for call, message in cases:
        with pytest.raises(RegistryError) as raised:
            call()
        assert message in str(raised.value)
        assert "Traceback" not in str(raised.value)


def test_an_empty_state_folder_is_an_empty_registry_and_stays_empty(tmp_path: Path) -> None:
    registry = Registry(state_dir=tmp_path / "fresh")
    assert registry.models() == []
    with pytest.raises(RegistryError, match="unknown model 'iris': the registry at .* holds no "
                       "registered models"):
        registry.resolve("models:/iris@champion")
    with pytest.raises(RegistryError, match="unknown model"):
        registry.set_alias("iris", "champion", "1")
    assert not (tmp_path / "fresh").exists()


# ---- hostile input ------------------------------------------------------------------------


@pytest.mark.parametrize(("name", "says"), [
    ("../evil", "invalid model name"),
    ("..", "invalid model name"),
    ("a/b", "invalid model name"),
    ("x" * 300, "300 characters long"),
    ("name\nwith newline", "invalid model name"),
    ("", "model name is empty"),
])
def test_hostile_names_are_refused_before_anything_is_written(work: dict, name: str,
                                                              says: str) -> None:
    registry: Registry = work["registry"]
    before = sorted(p.name for p in (work["state"] / "mlartifacts").rglob("*"))
    with pytest.raises(RegistryError, match=says):
        registry.register(work["folders"]["v1"], name, framework="sklearn")
    with pytest.raises(RegistryError, match=says):
        registry.versions(name)
    with pytest.raises(RegistryError, match=says):
        registry.set_alias(name, "champion", "1")
    assert sorted(p.name for p in (work["state"] / "mlartifacts").rglob("*")) == before
    assert all(m.name in ("iris", "iris-moving") for m in registry.models())


def test_hostile_aliases_versions_and_folders(work: dict, tmp_path: Path) -> None:
    registry: Registry = work["registry"]
    for alias, says in [("../x", "invalid alias"), ("v3", "reserved"), ("LATEST", "MLflow reserves it"),
                        ("a" * 256, "256 characters long")]:
        with pytest.raises(RegistryError, match=says):
            registry.set_alias("iris", alias, "1")
        with pytest.raises(RegistryError, match=says):
            registry.register(work["folders"]["v1"], "iris", framework="sklearn", alias=alias)
    for version in ("0", "1.0", "-1", "one", "1; drop table"):
        with pytest.raises(RegistryError, match="invalid model version"):
            registry.set_alias("iris", "champion", version)
    (tmp_path / "empty").mkdir()
    (tmp_path / "file").write_text("x")
    for folder, says in [(tmp_path / "missing", "is not a folder"),
                         (tmp_path / "file", "is not a folder"),
                         (tmp_path / "empty", "holds no files")]:
        with pytest.raises(RegistryError, match=says):
            registry.register(folder, "iris", framework="sklearn")
    with pytest.raises(RegistryError, match="framework is empty"):
        registry.register(work["folders"]["v1"], "iris", framework=" ")
    broken = tmp_path / "broken"
    shutil.copytree(work["folders"]["v1"], broken)
    (broken / "model-settings.yaml").write_text("inputs: [unclosed")
    with pytest.raises(RegistryError, match="cannot read .*model-settings.yaml"):
        registry.register(broken, "iris", framework="sklearn")
    assert registry.resolve("models:/iris@champion").version == "1"  # nothing moved


def test_fetch_refuses_a_hostile_resolved_version(work: dict, tmp_path: Path) -> None:
    registry: Registry = work["registry"]
    bad = ResolvedVersion(name="../../escape", version="1", pinned_uri="models:/x/1",
                          download_uri="mlflow-artifacts:/1/abc/artifacts/model")
    with pytest.raises(RegistryError, match="invalid model name"):
        registry.fetch(bad, cache_dir=tmp_path / "cache")
    assert not (tmp_path / "cache").exists()


# ---- fetch: pass-through, missing files, one download for many callers ---------------------


@pytest.mark.parametrize("uri", ["s3://bucket/models/iris/1", "gs://bucket/iris",
                                 "https://models.example/iris.tar", "http://host/iris"])
def test_fetch_leaves_object_store_and_http_uris_to_the_model_server(uri: str,
                                                                    tmp_path: Path) -> None:
    resolved = ResolvedVersion("iris", "1", "models:/iris/1", uri)
    assert Registry(state_dir=tmp_path).fetch(resolved, cache_dir=tmp_path / "c") == uri
    assert not (tmp_path / "c").exists()


def test_fetch_of_a_local_location_that_is_gone_says_where(tmp_path: Path) -> None:
    gone = tmp_path / "elsewhere" / "model"
    resolved = ResolvedVersion("iris", "1", "models:/iris/1", gone.as_uri())
    with pytest.raises(RegistryError, match=f"models:/iris/1: its files are at {gone}, which "
                       "does not exist on this machine"):
        Registry(state_dir=tmp_path).fetch(resolved)


class _SlowRegistry(Registry):
    """Downloads by copying a folder, slowly, counting the downloads."""

    def __init__(self, source: Path, state_dir: Path, *, fail: bool = False) -> None:
        super().__init__(state_dir=state_dir)
        self.source, self.fail, self.calls = source, fail, 0
        self._count = threading.Lock()

    def _download(self, uri: str, destination: Path) -> str:
        with self._count:
            self.calls += 1
        time.sleep(0.5)
        if self.fail:
            (destination / "model").mkdir()
            (destination / "model" / "half").write_text("x")
            raise RegistryError(f"download {uri}: connection reset")
        return shutil.copytree(self.source, destination / "model")


def test_concurrent_fetches_download_once_atomically(work: dict, tmp_path: Path) -> None:
    registry = _SlowRegistry(work["folders"]["v1"], tmp_path / "state")
    resolved = ResolvedVersion("iris", "1", "models:/iris/1",
                               "mlflow-artifacts:/1/0123/artifacts/model")
    cache = tmp_path / "cache"
    results: list[str] = []
    threads = [threading.Thread(target=lambda: results.append(registry.fetch(resolved, cache)))
               for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert registry.calls == 1
    assert len(set(results)) == 1 and len(results) == 4
    location = Path(results[0])
    assert location.parent == cache / "iris" and location.name.startswith("1-")
    assert tree(location) == tree(work["folders"]["v1"])
    assert [p.name for p in (cache / "iris").iterdir() if p.name.startswith(".partial")] == []
    assert registry.fetch(resolved, cache) == results[0] and registry.calls == 1
    # the same name and version from another registry is another cache entry
    other = ResolvedVersion("iris", "1", "models:/iris/1", "mlflow-artifacts:/9/fff/artifacts/model")
    assert registry.fetch(other, cache) != results[0] and registry.calls == 2


def test_a_failed_fetch_leaves_nothing_behind_and_the_next_one_retries(work: dict,
                                                                      tmp_path: Path) -> None:
    failing = _SlowRegistry(work["folders"]["v1"], tmp_path / "state", fail=True)
    resolved = ResolvedVersion("iris", "1", "models:/iris/1",
                               "mlflow-artifacts:/1/0123/artifacts/model")
    cache = tmp_path / "cache"
    with pytest.raises(RegistryError, match="connection reset"):
        failing.fetch(resolved, cache)
    assert [p.name for p in (cache / "iris").iterdir() if not p.name.startswith(".lock")] == []
    working = _SlowRegistry(work["folders"]["v1"], tmp_path / "state")
    assert tree(Path(working.fetch(resolved, cache))) == tree(work["folders"]["v1"])


# ---- the CLI against SQLite (in process) --------------------------------------------------


def run_cli(capsys: pytest.CaptureFixture, *argv: str) -> tuple[int, str, str]:
    code = registry_cli.cli(["registry", *argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_cli_list_show_and_alias(work: dict, capsys: pytest.CaptureFixture) -> None:
    state = ["--state-dir", str(work["state"])]
    code, out, err = run_cli(capsys, *state, "list")
    assert code == 0, err
    lines = out.splitlines()
    assert lines[0].split() == ["NAME", "LATEST", "ALIASES", "DESCRIPTION"]
    assert any(line.split()[:3] == ["iris", "2", "champion=1"] for line in lines)

    code, out, err = run_cli(capsys, "show", "iris", *state)  # options after the command too
    assert code == 0, err
    assert "aliases: champion -> 1" in out
    assert "version 1  [champion]" in out and "version 2" in out
    assert work["v1"].download_uri in out and work["v2"].download_uri in out
    assert f"accuracy={work['metrics']['v1']['accuracy']:g}" in out
    assert "framework:   sklearn" in out
    assert "inputs:      features FP64 [-1, 4]" in out
    assert "lineage:     dataset=iris@v1  pipeline=iris-train  pipeline_run=run-42" in out

    code, out, err = run_cli(capsys, *state, "show", "iris", "--json")
    shown = json.loads(out)
    assert [v["version"] for v in shown["versions"]] == ["2", "1"]
    assert shown["versions"][1]["metrics"] == work["metrics"]["v1"]

    registry: Registry = work["registry"]
    registry.register(work["folders"]["v1"], "iris-cli", framework="sklearn", alias="champion")
    registry.register(work["folders"]["v2"], "iris-cli", framework="sklearn")
    code, out, err = run_cli(capsys, *state, "alias", "iris-cli", "champion", "2")
    assert code == 0, err
    assert out.strip() == "models:/iris-cli@champion -> models:/iris-cli/2 (was 1)"
    assert registry.resolve("models:/iris-cli@champion").version == "2"
    code, out, err = run_cli(capsys, *state, "alias", "iris-cli", "champion", "--delete")
    assert code == 0, err
    assert "deleted alias champion of iris-cli (it pointed at version 2)" in out
    with pytest.raises(RegistryError, match="no alias 'champion'"):
        registry.resolve("models:/iris-cli@champion")


@pytest.mark.parametrize(("argv", "says"), [
    (["show", "nope"], "unknown model 'nope'"),
    (["show", "../etc"], "invalid model name"),
    (["alias", "iris", "champion", "99"], "model 'iris' has no version 99"),
    (["alias", "iris", "staging", "--delete"], "model 'iris' has no alias 'staging'"),
    (["alias", "iris", "champion"], "alias needs NAME ALIAS VERSION"),
    (["alias", "iris", "x" * 300, "1"], "300 characters long"),
])
def test_cli_errors_are_one_line_and_exit_2(work: dict, capsys: pytest.CaptureFixture,
                                            argv: list[str], says: str) -> None:
    code, out, err = run_cli(capsys, "--state-dir", str(work["state"]), *argv)
    assert code == 2
    assert out == ""
    assert err.count("\n") == 1 and err.startswith("turnout registry: ")
    assert says in err
    assert "Traceback" not in err


def test_cli_on_an_empty_or_unreachable_registry(tmp_path: Path,
                                                 capsys: pytest.CaptureFixture) -> None:
    code, out, _ = run_cli(capsys, "--state-dir", str(tmp_path / "none"), "list")
    assert code == 0 and out.startswith("no registered models in sqlite:///")
    port = free_port()
    code, out, err = run_cli(capsys, "list", "--tracking-uri", f"http://127.0.0.1:{port}")
    assert code == 2
    assert err.strip() == (f"turnout registry: cannot reach the MLflow tracking server at "
                           f"http://127.0.0.1:{port}: Connection refused")
