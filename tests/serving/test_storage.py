"""Model storage URIs against servers on loopback: a local web server for ``http://`` and moto's
S3 server for ``s3://``. Downloads are cached by URI and content, atomic (an interrupted one
leaves nothing behind and is retried from scratch), and a bad URI or missing credentials fail
only their own model, with a reason that says what is wrong."""

from __future__ import annotations

import hashlib
import importlib.util
import io
import sys
import threading
from collections.abc import Iterator
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import joblib
import numpy as np
import pytest
import tritonclient.http as httpclient
import yaml
from sklearn.linear_model import LogisticRegression

from serving.storage import StorageError, fetch

ROOT = Path(__file__).resolve().parents[2]
KEY, SECRET = "testing-key", "testing-secret"


def _shared() -> Any:
    spec = importlib.util.spec_from_file_location("turnout_tests_shared", ROOT / "tests" /
                                                  "conftest.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


SHARED = _shared()


class _Handler(SimpleHTTPRequestHandler):
    """Static files, counting GETs; paths under /flaky/ send half a file and hang up once."""

    gets: dict[str, int] = {}
    cut_once: set[str] = set()

    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        _Handler.gets[self.path] = _Handler.gets.get(self.path, 0) + 1
        if self.path.startswith("/flaky/") and self.path not in _Handler.cut_once:
            _Handler.cut_once.add(self.path)
            path = Path(self.translate_path(self.path))
            body = path.read_bytes()
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body[: len(body) // 2])
            self.wfile.flush()
            self.close_connection = True
            return
        super().do_GET()

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Any]:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(120, 4))
    estimator = LogisticRegression(max_iter=300).fit(x, (x[:, 0] + x[:, 1] > 0).astype(int))
    folder = tmp_path_factory.mktemp("artifact")
    joblib.dump(estimator, folder / "model.joblib")
    return folder / "model.joblib", estimator


@pytest.fixture(scope="module")
def web(tmp_path_factory: pytest.TempPathFactory, model: tuple[Path, Any]) -> Iterator[str]:
    docroot = tmp_path_factory.mktemp("www")
    for sub in ("iris", "flaky", "retry"):
        (docroot / sub).mkdir()
        (docroot / sub / "model.joblib").write_bytes(model[0].read_bytes())
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), partial(_Handler, directory=str(docroot)))
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}"
    finally:
        httpd.shutdown()
        httpd.server_close()


@pytest.fixture(scope="module")
def s3(model: tuple[Path, Any]) -> Iterator[str]:
    import boto3
    from moto.server import ThreadedMotoServer

    port = SHARED.free_port()
    moto = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    moto.start()
    endpoint = f"http://127.0.0.1:{port}"
    client = boto3.client("s3", endpoint_url=endpoint, aws_access_key_id=KEY,
                          aws_secret_access_key=SECRET, region_name="us-east-1")
    client.create_bucket(Bucket="models")
    client.upload_file(str(model[0]), "models", "iris/v1/model.joblib")
    client.put_object(Bucket="models", Key="iris/v1/model-card.md", Body=b"# iris\n")
    try:
        yield endpoint
    finally:
        moto.stop()


NO_AWS = {"AWS_ACCESS_KEY_ID": "", "AWS_SECRET_ACCESS_KEY": "", "AWS_SESSION_TOKEN": "",
          "AWS_SHARED_CREDENTIALS_FILE": "/nonexistent", "AWS_CONFIG_FILE": "/nonexistent",
          "AWS_EC2_METADATA_DISABLED": "true", "AWS_DEFAULT_REGION": "us-east-1"}


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, web: str, s3: str) -> Iterator[Any]:
    root = tmp_path_factory.mktemp("storage") / "models"
    s3_options = {"key": KEY, "secret": SECRET, "client_kwargs": {"endpoint_url": s3}}
    models = {
        "from_http": {"storage_uri": f"{web}/iris/model.joblib"},
        "from_s3": {"storage_uri": "s3://models/iris/v1/", "storage_options": s3_options},
        "interrupted": {"storage_uri": f"{web}/flaky/model.joblib"},
        "wrong_uri": {"storage_uri": f"{web}/no-such-model/model.joblib"},
        "no_credentials": {"storage_uri": "s3://models/iris/v1/",
                           "storage_options": {"client_kwargs": {"endpoint_url": s3}}},
        "no_bucket": {"storage_uri": "s3://no-such-bucket/iris/", "storage_options": s3_options},
    }
    for name, settings in models.items():
        (root / name).mkdir(parents=True)
        (root / name / "model-settings.yaml").write_text(yaml.safe_dump(settings))
    cache = root.parent / "cache"
    proc = SHARED.ServerProcess(root, "--trusted-source", f"{web}/", "--trusted-source",
                                "s3://models/",
                                env={**NO_AWS, "TURNOUT_MODEL_CACHE": str(cache)})
    try:
        yield proc.wait_ready(timeout=90)
    finally:
        proc.stop()


def _index(server: Any) -> dict[str, dict[str, Any]]:
    return {e["name"]: e for e in httpx.post(f"{server.url}/v2/repository/index").json()}


def _predict(server: Any, name: str, x: np.ndarray) -> np.ndarray:
    client = httpclient.InferenceServerClient(server.url.removeprefix("http://"))
    tensor = httpclient.InferInput("input-0", list(x.shape), "FP64")
    tensor.set_data_from_numpy(x, binary_data=True)
    result = client.infer(name, [tensor], outputs=[httpclient.InferRequestedOutput(
        "predict_proba", binary_data=True)])
    return result.as_numpy("predict_proba")


def test_models_from_http_and_s3_serve_the_real_model(server: Any, model: tuple[Path, Any]
                                                      ) -> None:
    x = np.random.default_rng(1).normal(size=(6, 4))
    for name in ("from_http", "from_s3"):
        np.testing.assert_allclose(_predict(server, name, x), model[1].predict_proba(x),
                                   err_msg=name)


def test_bad_locations_fail_only_their_model_with_a_clear_reason(server: Any) -> None:
    index = _index(server)
    assert index["from_http"]["state"] == index["from_s3"]["state"] == "READY"
    wrong = index["wrong_uri"]
    assert wrong["state"] == "UNAVAILABLE"
    assert "no-such-model/model.joblib" in wrong["reason"] and "does not exist" in wrong["reason"]
    creds = index["no_credentials"]
    assert creds["state"] == "UNAVAILABLE"
    assert "s3://models/iris/v1/" in creds["reason"] and "credentials" in creds["reason"]
    bucket = index["no_bucket"]
    assert bucket["state"] == "UNAVAILABLE" and "no-such-bucket" in bucket["reason"]


def test_interrupted_download_is_never_served_and_a_retry_succeeds(
        server: Any, model: tuple[Path, Any], tmp_path_factory: pytest.TempPathFactory) -> None:
    entry = _index(server)["interrupted"]
    assert entry["state"] == "UNAVAILABLE"
    assert "download" in entry["reason"]
    reply = httpx.post(f"{server.url}/v2/models/interrupted/infer", json={"inputs": [
        {"name": "input-0", "datatype": "FP64", "shape": [1, 4], "data": [0, 0, 0, 0]}]})
    assert reply.status_code in (400, 404, 503) and "interrupted" in reply.text
    cache = server.log_path.parent / "cache"
    assert not list(cache.glob(".partial-*"))  # nothing half-downloaded is left behind
    entries = sorted(p.name for p in cache.iterdir())
    assert len(entries) == 2, entries  # from_http and from_s3 only
    reply = httpx.post(f"{server.url}/v2/repository/models/interrupted/load", timeout=60)
    assert reply.status_code == 200, reply.text
    x = np.random.default_rng(2).normal(size=(3, 4))
    np.testing.assert_allclose(_predict(server, "interrupted", x), model[1].predict_proba(x))
    assert len(list(cache.iterdir())) == 3 and not list(cache.glob(".partial-*"))


def test_cache_is_reused_and_refreshed_when_the_content_changes(
        web: str, tmp_path: Path, model: tuple[Path, Any]) -> None:
    uri = f"{web}/retry/model.joblib"
    first = fetch(uri, cache_dir=tmp_path)
    gets = _Handler.gets.get("/retry/model.joblib", 0)
    again = fetch(uri, cache_dir=tmp_path)  # a restart: listed again, not downloaded again
    assert again == first and _Handler.gets.get("/retry/model.joblib", 0) == gets
    assert first.read_bytes() == model[0].read_bytes()
    assert [p.name for p in tmp_path.iterdir()] == [first.parent.name]


def test_local_paths_and_file_uris_are_used_in_place(model: tuple[Path, Any], tmp_path: Path
                                                     ) -> None:
    path = model[0]
    assert fetch(str(path), cache_dir=tmp_path) == path
    assert fetch(f"file://{path}", cache_dir=tmp_path) == path
    assert fetch("model.joblib", base=path.parent, cache_dir=tmp_path) == path
    with pytest.raises(StorageError, match="does not exist"):
        fetch(f"file://{path}.missing", cache_dir=tmp_path)
    assert not list(tmp_path.iterdir())


def test_s3_prefix_downloads_every_object(s3: str, tmp_path: Path,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in NO_AWS.items():
        monkeypatch.setenv(name, value)
    options = {"key": KEY, "secret": SECRET, "client_kwargs": {"endpoint_url": s3}}
    folder = fetch("s3://models/iris/v1", options=options, cache_dir=tmp_path)
    assert sorted(p.name for p in folder.iterdir()) == [".turnout-source.json", "model-card.md",
                                                        "model.joblib"]
    with pytest.raises(StorageError, match="does not exist"):
        fetch("s3://models/iris/v9/model.joblib", options=options, cache_dir=tmp_path)


def test_cli_fetches_a_remote_path_with_progress(
        web: str, tmp_path: Path, model: tuple[Path, Any], monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    from serving import storage
    from serving.cli import _local_model_path

    monkeypatch.setenv("TURNOUT_MODEL_CACHE", str(tmp_path))
    monkeypatch.setattr(storage, "PROGRESS_MIN_BYTES", 0)  # the model is small
    local = _local_model_path(f"{web}/iris/model.joblib", [f"{web}/iris/"])
    assert local.read_bytes() == model[0].read_bytes()
    assert "downloading" not in capsys.readouterr().err  # not a terminal: no bars
    terminal = _Terminal()
    monkeypatch.setattr(sys, "stderr", terminal)
    monkeypatch.setenv("TURNOUT_MODEL_CACHE", str(tmp_path / "again"))
    assert _local_model_path(f"{web}/iris/model.joblib", [f"{web}/iris/"]).read_bytes() == \
        model[0].read_bytes()
    size = model[0].stat().st_size
    drawn = terminal.getvalue()
    assert "downloading model.joblib" in drawn and "\x1b[" in drawn  # rich, with colours
    assert f"{size}/{size} bytes" in drawn, drawn  # every byte counted
    assert drawn.count("\x1b[?25l") == 1  # one bar, started once and stopped once
    with pytest.raises(ValueError, match="does not exist"):
        _local_model_path(f"{web}/nothing-here.joblib", ["*"])


class _Terminal(io.StringIO):
    """stderr as a terminal would be: rich draws bars on it."""

    def isatty(self) -> bool:
        return True


def test_remote_pickles_load_only_from_trusted_sources(web: str, model: tuple[Path, Any],
                                                       start_server, tmp_path: Path) -> None:
    import subprocess
    import sys

    uri = f"{web}/iris/model.joblib"
    refused = subprocess.run([sys.executable, "-m", "serving.cli", "serve", uri, "--http-port",
                              str(SHARED.free_port()), "--grpc-port", "0"],
                             capture_output=True, text=True, timeout=120,
                             env={**SHARED.os.environ, "TURNOUT_MODEL_CACHE": str(tmp_path)})
    assert refused.returncode == 2
    assert "refusing to load model.joblib" in refused.stderr and "--trusted-source" in \
        refused.stderr
    # a model-settings storage_uri from an untrusted source fails that model only, with the reason
    folder = tmp_path / "repo" / "untrusted"
    folder.mkdir(parents=True)
    (folder / "model-settings.yaml").write_text(yaml.safe_dump({"storage_uri": uri}))
    server = start_server(tmp_path / "repo", "--trusted-source", f"{web}/elsewhere/")
    entry = _index(server)["untrusted"]
    assert entry["state"] == "UNAVAILABLE" and "pickle files run code" in entry["reason"]
    trusted = start_server(tmp_path / "repo", "--trusted-source", f"{web}/iris/")
    assert _index(trusted)["untrusted"]["state"] == "READY"


@pytest.mark.parametrize("uri, want", [
    ("s3://b/m.onnx", ("s3://b/m.onnx", None)),
    ("s3://b/m.onnx#sha256=" + "AB" * 32, ("s3://b/m.onnx", "ab" * 32)),
    ("/models/m#other", ("/models/m#other", None)),          # a fragment that is no pin
])
def test_sha256_pins_ride_in_the_uri_fragment(uri: str, want: tuple[str, str | None]) -> None:
    from serving.storage import split_pin

    assert split_pin(uri) == want


@pytest.mark.parametrize("bad", ["#sha256=abc", "#sha256=" + "g" * 64, "#sha256="])
def test_a_malformed_pin_is_refused(bad: str) -> None:
    from serving.storage import StorageError, split_pin

    with pytest.raises(StorageError, match="64 hex digits"):
        split_pin("https://h/m.joblib" + bad)


def test_a_pinned_download_is_checked_every_time_it_is_used(
        web: str, model: tuple[Path, Any], tmp_path: Path) -> None:
    from serving.storage import StorageError, fetch

    good = hashlib.sha256(model[0].read_bytes()).hexdigest()
    uri = f"{web}/iris/model.joblib"
    assert fetch(f"{uri}#sha256={good}", cache_dir=tmp_path).read_bytes() == \
        model[0].read_bytes()
    with pytest.raises(StorageError, match="is not the pinned"):   # cached copy, other pin
        fetch(f"{uri}#sha256={'0' * 64}", cache_dir=tmp_path)
    assert fetch(model[0].as_posix() + f"#sha256={good}") == model[0]     # local files too
    with pytest.raises(StorageError, match="names a folder"):
        fetch(model[0].parent.as_posix() + f"#sha256={good}")


def test_turnout_serve_and_the_plane_refuse_a_file_that_is_not_the_pinned_one(
        model: tuple[Path, Any], tmp_path: Path) -> None:
    import subprocess
    import sys

    from serving.control.local.checks import resolve, storage_problems
    from serving.spec import load_texts

    wrong = f"{model[0]}#sha256={'1' * 64}"
    refused = subprocess.run([sys.executable, "-m", "serving.cli", "serve", wrong,
                              "--http-port", str(SHARED.free_port()), "--grpc-port", "0"],
                             capture_output=True, text=True, timeout=120)
    assert refused.returncode == 2 and "is not the pinned" in refused.stderr
    assert "Traceback" not in refused.stderr
    good = f"{model[0]}#sha256={hashlib.sha256(model[0].read_bytes()).hexdigest()}"
    for uri, problem in [(wrong, "is not the pinned"), (good, None)]:
        isvc = load_texts([(tmp_path / "m.yaml", f"""
apiVersion: serving.kserve.io/v1beta1
kind: InferenceService
metadata: {{name: iris}}
spec: {{predictor: {{model: {{modelFormat: {{name: sklearn}}, storageUri: "{uri}"}}}}}}
""")]).services[0]
        found = storage_problems(isvc, tmp_path)
        assert (problem in found[0]) if problem else found == []
    assert resolve(good, tmp_path) == good                   # the replica checks it again


def test_the_plane_refuses_local_models_outside_its_model_roots(
        model: tuple[Path, Any], tmp_path: Path) -> None:
    from serving.control.local.checks import storage_problems
    from serving.spec import load_texts

    inside = tmp_path / "models"
    inside.mkdir()
    (inside / "link.joblib").symlink_to(model[0])           # a link out of the root
    (inside / "real.joblib").write_bytes(model[0].read_bytes())

    def problems(uri: str) -> list[str]:
        isvc = load_texts([(tmp_path / "m.yaml", f"""
apiVersion: serving.kserve.io/v1beta1
kind: InferenceService
metadata: {{name: iris}}
spec: {{predictor: {{model: {{modelFormat: {{name: sklearn}}, storageUri: "{uri}"}}}}}}
""")]).services[0]
        return storage_problems(isvc, tmp_path, roots=(inside,))

    assert problems("models/real.joblib") == []
    assert "outside the allowed model roots" in problems(str(model[0]))[0]
    assert "outside the allowed model roots" in problems("models/link.joblib")[0]
    (tmp_path / "beside.joblib").write_bytes(model[0].read_bytes())
    assert "outside the allowed model roots" in problems("models/../beside.joblib")[0]
