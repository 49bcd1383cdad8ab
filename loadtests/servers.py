"""The servers under test: how each is laid out, started, probed for readiness and stopped.

| name | what | models | protocols |
| --- | --- | --- | --- |
| turnout | ``turnout serve`` on the models folder | all | REST JSON, REST binary, gRPC |
| turnout-defaults | the same without any ``model-settings.yaml`` | all | REST JSON, REST binary, gRPC |
| mlserver | MLServer 1.7.1: mlserver-sklearn, mlserver-xgboost, an ONNX ``MLModel`` | all | REST JSON, gRPC |
| kserve | KServe 0.21.0, one ``kserve.Model`` subclass per model | all | REST JSON, REST binary, gRPC |
| rayserve | Ray Serve, one FastAPI ingress replica | iris, xgb, mlp | REST JSON, gRPC |
| litserve | LitServe, one ``LitAPI`` per model | iris, xgb, mlp | REST JSON |
| bentoml | BentoML, one async API per model | iris, xgb, mlp | REST JSON |
| pytriton | PyTriton 0.7.0 (Triton), dynamic batching | all | REST JSON, REST binary, gRPC |

(the four above are the apps in ``anchor_apps/``, run with their anchor venv's python)
| bare-rest | ``loadtests.bare_rest`` (raw ASGI + orjson) | mlp | REST JSON, REST binary |
| bare-grpc | ``loadtests.bare_grpc`` (sync grpcio) | mlp | gRPC |

Each server is configured the way a user tuning for speed would: per-request access and latency
logging off where the server has a switch, ONNX Runtime on one intra-op thread (the server is
pinned to one core). Anything else stays at the server's defaults, except what each anchor's
docs recommend for throughput on one core (see each app's docstring). Servers without PyTorch
serve the ``torch`` model from its ONNX twin (``models.ANCHOR_ARTIFACTS``): the same weights.
"""

from __future__ import annotations

import dataclasses
import http.client
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from loadtests import anchors
from loadtests.models import ANCHOR_ARTIFACTS, MODELS

ROOT = Path(__file__).resolve().parent
REPO_ROOT = ROOT.parent
APPS = ROOT / "anchor_apps"

ALL_SERVERS = ("turnout", "turnout-defaults", "turnout-batched", "mlserver", "kserve", "rayserve", "litserve",
               "bentoml", "pytriton", "bare-rest", "bare-grpc")
ANCHORS = anchors.ALL
BARE = ("bare-rest", "bare-grpc")
PROTOCOLS = ("rest-json", "rest-binary", "grpc")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# --- the files written into the work folder at run time -----------------------------------------

KSERVE_MODELS = '''"""KServe custom models for the benchmark: the documented ``kserve.Model`` way.

Written by loadtests/servers.py; run with the KServe venv's python.
"""

import argparse

import numpy as np
from kserve import InferOutput, InferRequest, InferResponse, Model, ModelServer, model_server
from kserve.utils.utils import generate_uuid

DATATYPES = {np.dtype(np.float32): "FP32", np.dtype(np.float64): "FP64",
             np.dtype(np.int64): "INT64", np.dtype(np.int32): "INT32"}


class BenchModel(Model):
    def __init__(self, name, path, framework):
        super().__init__(name)
        self.path, self.framework = path, framework
        self.load()

    def load(self):
        if self.framework == "sklearn":
            import joblib

            self._predict = joblib.load(self.path).predict
        elif self.framework == "xgboost":
            import xgboost as xgb

            booster = xgb.Booster(model_file=self.path)
            booster.set_param({"nthread": 1})
            self._predict = booster.inplace_predict
        else:
            import onnxruntime as ort

            opts = ort.SessionOptions()
            opts.intra_op_num_threads = 1
            opts.inter_op_num_threads = 1
            session = ort.InferenceSession(self.path, opts, providers=["CPUExecutionProvider"])
            name = session.get_inputs()[0].name
            self._predict = lambda x: session.run(None, {name: x.astype(np.float32, copy=False)})[0]
        self.ready = True
        return self.ready

    def predict(self, payload, headers=None, response_headers=None):
        if isinstance(payload, InferRequest):
            x = payload.inputs[0].as_numpy()
            y = np.asarray(self._predict(x))
            binary = payload.use_binary_outputs
            out = InferOutput(name="output-0", shape=list(y.shape), datatype=DATATYPES[y.dtype])
            out.set_data_from_numpy(y, binary_data=binary)
            return InferResponse(response_id=payload.id or generate_uuid(), model_name=self.name,
                                 infer_outputs=[out], use_binary_outputs=binary)
        y = np.asarray(self._predict(np.asarray(payload["instances"])))
        return {"predictions": y.tolist()}


if __name__ == "__main__":
    parser = argparse.ArgumentParser(parents=[model_server.parser])
    parser.add_argument("--bench_model", action="append", default=[],
                        help="name=framework:path, once per model")
    args, _ = parser.parse_known_args()
    models = []
    for spec in args.bench_model:
        name, rest = spec.split("=", 1)
        framework, path = rest.split(":", 1)
        models.append(BenchModel(name, path, framework))
    ModelServer().start(models)
'''

MLSERVER_ONNX = '''"""A custom MLServer runtime for ONNX models (MLServer 1.7 ships none): the documented way.

Written by loadtests/servers.py into the model's folder, which MLServer puts on sys.path.
"""

import numpy as np
import onnxruntime as ort
from mlserver import MLModel
from mlserver.codecs import NumpyCodec
from mlserver.types import InferenceRequest, InferenceResponse
from mlserver.utils import get_model_uri


class OnnxModel(MLModel):
    async def load(self) -> bool:
        path = await get_model_uri(self._settings)
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = 1
        opts.inter_op_num_threads = 1
        self._session = ort.InferenceSession(path, opts, providers=["CPUExecutionProvider"])
        self._input = self._session.get_inputs()[0].name
        return True

    async def predict(self, payload: InferenceRequest) -> InferenceResponse:
        x = NumpyCodec.decode_input(payload.inputs[0]).astype(np.float32, copy=False)
        y = self._session.run(None, {self._input: x})[0]
        return InferenceResponse(model_name=self.name, id=payload.id,
                                 outputs=[NumpyCodec.encode_output("output-0", y)])
'''

# KServe logs two lines per request by default (uvicorn access, kserve.trace timings); a user
# tuning for speed turns them down through its documented --log_config_file.
KSERVE_LOG_CONFIG = {
    "version": 1, "disable_existing_loggers": False,
    "formatters": {"plain": {"format": "%(asctime)s %(process)s %(name)s %(levelname)s %(message)s"}},
    "handlers": {"stderr": {"class": "logging.StreamHandler", "formatter": "plain",
                            "stream": "ext://sys.stderr"}},
    "loggers": {name: {"handlers": ["stderr"], "level": level, "propagate": False}
                for name, level in (("kserve", "WARNING"), ("kserve.trace", "WARNING"),
                                    ("uvicorn", "INFO"), ("uvicorn.error", "INFO"),
                                    ("uvicorn.access", "WARNING"))},
}

MLSERVER_IMPLEMENTATIONS = {"sklearn": "mlserver_sklearn.SKLearnModel",
                            "xgboost": "mlserver_xgboost.XGBoostModel",
                            "onnx": "onnx_runtime.OnnxModel"}


# --- definitions ----------------------------------------------------------------------------------

@dataclass
class ServerDef:
    name: str
    models: tuple[str, ...]
    protocols: tuple[str, ...]
    role: str  # turnout | anchor | bare
    concurrency: tuple[int, ...] | None = None  # measured only at these (None: all)
    args: tuple[str, ...] = ()  # extra command-line flags
    ready_path: str = "/v2/models/{model}/ready"  # GET, 200 when the model is ready
    stop_signal: int = signal.SIGTERM
    start_timeout: float = 120.0
    tuned: bool = True  # Turnout: with TURNOUT_MODEL_SETTINGS (else plain artifacts)
    grpc_metadata: tuple[tuple[str, str], ...] = ()  # sent with every gRPC call

    @property
    def has_http(self) -> bool:
        return any(p.startswith("rest") for p in self.protocols)

    @property
    def has_grpc(self) -> bool:
        return "grpc" in self.protocols


DEFS = {
    "turnout": ServerDef("turnout", tuple(MODELS), PROTOCOLS, "turnout"),
    # As a new user runs it: plain artifacts, no model-settings.yaml (issue 19's first column).
    "turnout-defaults": ServerDef("turnout-defaults", tuple(MODELS), PROTOCOLS, "turnout",
                                  tuned=False),
    # Adaptive batching on, for the batched-floor target (ONNX MLP at concurrency 64).
    "turnout-batched": ServerDef("turnout-batched", ("mlp", "torch", "torch-onnx"), PROTOCOLS,
                                 "turnout", concurrency=(64,),
                                 args=("--max-batch-size", "64", "--max-batch-latency-ms", "1")),
    # MLServer and KServe serve the three models of the original comparison (no torch runtime)
    "mlserver": ServerDef("mlserver", ("iris", "xgb", "mlp"), PROTOCOLS, "anchor"),
    "kserve": ServerDef("kserve", ("iris", "xgb", "mlp"), PROTOCOLS, "anchor"),
    "rayserve": ServerDef("rayserve", ("iris", "xgb", "mlp"), ("rest-json", "grpc"), "anchor",
                          start_timeout=240.0, grpc_metadata=(("application", "bench"),)),
    "litserve": ServerDef("litserve", ("iris", "xgb", "mlp"), ("rest-json",), "anchor",
                          ready_path="/health"),
    "bentoml": ServerDef("bentoml", ("iris", "xgb", "mlp"), ("rest-json",), "anchor",
                         ready_path="/readyz"),
    # Triton stops cleanly only on SIGINT (SIGTERM leaves its server and stubs behind).
    "pytriton": ServerDef("pytriton", ("iris", "xgb", "mlp", "torch"), PROTOCOLS, "anchor",
                          stop_signal=signal.SIGINT),
    "bare-rest": ServerDef("bare-rest", ("mlp",), ("rest-json", "rest-binary"), "bare"),
    "bare-grpc": ServerDef("bare-grpc", ("mlp",), ("grpc",), "bare"),
}


# How a performance-minded user configures Turnout for these models (docs/runtimes.md): the
# linear sklearn model and the XGBoost booster are served through their verified ONNX
# compilations, cached after the first start (later starts never import scikit-learn or
# XGBoost). The anchors have no such option and serve the frameworks themselves.
TURNOUT_MODEL_SETTINGS = {"iris": "parameters: {compile: onnx}\n",
                          "xgb": "parameters: {compile: onnx}\n"}


@dataclass
class Launch:
    argv: list[str]
    env: dict[str, str] = field(default_factory=dict)
    cwd: Path | None = None
    cleanup: list[Path] = field(default_factory=list)  # folders removed once it stopped


def prepare(name: str, work: Path, artifacts: dict[str, Path], models: list[str],
            http_port: int, grpc_port: int, turnout_args: list[str]) -> Launch:
    """Write the server's configuration into ``work`` and say how to start it."""
    defn = DEFS[name]
    served = [m for m in models if m in defn.models]
    work = work.resolve()
    artifacts = {m: p.resolve() for m, p in artifacts.items()}
    py = sys.executable
    if defn.role == "turnout":
        repo = work / ("turnout-repo" if defn.tuned else f"{name}-repo")
        if repo.is_dir():  # a model an earlier run served here would be loaded (and measured)
            for stale in repo.iterdir():
                if stale.name in served:
                    continue
                if stale.is_dir() and not stale.is_symlink():
                    shutil.rmtree(stale)
                else:
                    stale.unlink()
        for m in served:
            folder = repo / m
            if folder.is_symlink():  # older harness versions linked the artifact folder
                folder.unlink()
            folder.mkdir(parents=True, exist_ok=True)
            link = folder / artifacts[m].name
            if not link.exists():
                link.symlink_to(artifacts[m])
            settings = TURNOUT_MODEL_SETTINGS.get(m) if defn.tuned else None
            if settings:
                (folder / "model-settings.yaml").write_text(settings)
        return Launch([py, "-m", "serving.cli", "serve", str(repo), "--http-port", str(http_port),
                       "--grpc-port", str(grpc_port), *defn.args, *turnout_args], cwd=REPO_ROOT,
                      env={"XDG_CACHE_HOME": str(work.parent / "turnout-cache")})
    if name == "bare-rest":
        return Launch([py, "-m", "loadtests.bare_rest", str(artifacts["mlp"]), "--name", "mlp",
                       "--port", str(http_port)], cwd=REPO_ROOT)
    if name == "bare-grpc":
        return Launch([py, "-m", "loadtests.bare_grpc", str(artifacts["mlp"]), "--name", "mlp",
                       "--port", str(grpc_port)], cwd=REPO_ROOT)
    if name == "mlserver":
        root = work / "mlserver-repo"
        root.mkdir(parents=True, exist_ok=True)
        (root / "settings.json").write_text(json.dumps({
            "debug": False, "parallel_workers": 0, "host": "127.0.0.1"}))
        for m in served:
            spec = MODELS[m]
            folder = root / m
            folder.mkdir(exist_ok=True)
            if spec.framework == "onnx":
                (folder / "onnx_runtime.py").write_text(MLSERVER_ONNX)
            (folder / "model-settings.json").write_text(json.dumps({
                "name": m, "implementation": MLSERVER_IMPLEMENTATIONS[spec.framework],
                "parameters": {"uri": str(artifacts[m].resolve()), "version": "1"}}))
        bindir = anchors.python_of("mlserver").parent
        return Launch([str(bindir / "mlserver"), "start", str(root)], cwd=root, env={
            "MLSERVER_HTTP_PORT": str(http_port), "MLSERVER_GRPC_PORT": str(grpc_port),
            "MLSERVER_METRICS_PORT": str(free_port())})
    if name in APP_ANCHORS:
        return _app_launch(name, work, artifacts, served, http_port, grpc_port)
    if name == "kserve":
        root = work / "kserve"
        root.mkdir(parents=True, exist_ok=True)
        script = root / "kserve_models.py"
        script.write_text(KSERVE_MODELS)
        log_config = root / "log-config.json"
        log_config.write_text(json.dumps(KSERVE_LOG_CONFIG))
        # -W ignore: with the FastAPI that pip resolves for KServe 0.21, every response warns
        # that ORJSONResponse is deprecated, a stderr write per request.
        argv = [str(anchors.python_of("kserve")), "-W", "ignore", str(script),
                "--http_port", str(http_port), "--grpc_port", str(grpc_port),
                "--enable_latency_logging", "false", "--log_config_file", str(log_config)]
        for m in served:
            argv += ["--bench_model", f"{m}={MODELS[m].framework}:{artifacts[m].resolve()}"]
        return Launch(argv, cwd=root)
    raise ValueError(f"unknown server {name!r}")


APP_ANCHORS = ("rayserve", "litserve", "bentoml", "pytriton")


def anchor_model_args(artifacts: dict[str, Path], served: list[str]) -> list[str]:
    """``name=framework:DATATYPE:features:path`` per model for the apps in ``anchor_apps/``:
    a model the anchors cannot load as is (``torch``) is given its ONNX twin's file."""
    out = []
    for m in served:
        spec = MODELS[m]
        source, framework = ANCHOR_ARTIFACTS.get(m, (m, spec.framework))
        path = artifacts[m].parent.parent / source / MODELS[source].artifact \
            if source != m else artifacts[m]
        out.append(f"{m}={framework}:{spec.datatype}:{spec.n_features}:{path.resolve()}")
    return out


def _app_launch(name: str, work: Path, artifacts: dict[str, Path], served: list[str],
                http_port: int, grpc_port: int) -> Launch:
    py = str(anchors.python_of(name))
    specs = anchor_model_args(artifacts, served)
    env = {"PYTHONPATH": str(APPS)}
    if name == "bentoml":
        root = work / "bentoml"
        root.mkdir(parents=True, exist_ok=True)
        env.update(BENCH_MODELS=";".join(specs), BENTOML_HOME=str(root / "home"),
                   BENTOML_DO_NOT_TRACK="True")
        return Launch([str(anchors.python_of(name).parent / "bentoml"), "serve",
                       "bentoml_app:Bench", "--host", "127.0.0.1", "--port", str(http_port),
                       "--working-dir", str(APPS)], env=env, cwd=APPS)
    argv = [py, str(APPS / f"{name}_app.py"), "--http-port", str(http_port)]
    if name in ("rayserve", "pytriton"):
        argv += ["--grpc-port", str(grpc_port)]
    for spec in specs:
        argv += ["--model", spec]
    if name == "rayserve":
        # Ray's session sockets must fit AF_UNIX's 107 bytes: a short folder, removed at stop.
        tmp = Path(tempfile.mkdtemp(prefix="ray-", dir="/tmp"))
        env.update(RAY_SERVE_THROUGHPUT_OPTIMIZED="1", RAY_USAGE_STATS_ENABLED="0",
                   RAY_TMPDIR=str(tmp))
        # The proxy pickles requests as tritonclient's top-level ``grpc_service_pb2`` classes:
        # the replicas must import that module by the same name.
        site = next((anchors.venv_dir(name) / "lib").glob("python3*/site-packages"), None)
        if site is not None:
            env["PYTHONPATH"] += os.pathsep + str(site / "tritongrpcclient")
        return Launch(argv, env=env, cwd=APPS, cleanup=[tmp])
    if name == "pytriton":
        argv += ["--metrics-port", str(free_port())]
        # The stub must load the interpreter's own libpython (else: an RLock error at load).
        libdir = sysconfig.get_config_var("LIBDIR") or ""
        env["LD_LIBRARY_PATH"] = os.pathsep.join(
            p for p in (libdir, os.environ.get("LD_LIBRARY_PATH")) if p)
    return Launch(argv, env=env, cwd=APPS)


def with_metadata(defn: ServerDef, payload):
    """The payload with the server's gRPC metadata among its headers (Ray's ``application``),
    for h2load's -H and the probe alike."""
    if payload.protocol != "grpc" or not defn.grpc_metadata:
        return payload
    extra = tuple(f"{k}: {v}" for k, v in defn.grpc_metadata)
    return dataclasses.replace(payload, headers=payload.headers + extra)


def available(name: str) -> str | None:
    """None when the server can run here, else why not."""
    if name in ANCHORS and not anchors.is_ready(name):
        return f"{name}'s venv is not installed (python -m loadtests.anchors install {name})"
    return None


# --- running ----------------------------------------------------------------------------------------

class Running:
    """A started server: its process (a session of its own, so it is stopped as a group)."""

    def __init__(self, name: str, launch: Launch, http_port: int, grpc_port: int, cpu: int | None,
                 log_path: Path) -> None:
        self.name, self.http_port, self.grpc_port = name, http_port, grpc_port
        self.defn = DEFS[name]
        argv = (["taskset", "-c", str(cpu)] if cpu is not None else []) + launch.argv
        env = {**os.environ, "PYTHONUNBUFFERED": "1", **launch.env}
        for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
            env.setdefault(var, "1")
        log_path.parent.mkdir(parents=True, exist_ok=True)
        self.log_path = log_path
        self._log = log_path.open("wb")
        self.started = time.perf_counter()
        self._cleanup = launch.cleanup
        self.proc = subprocess.Popen(argv, cwd=launch.cwd, env=env, stdout=self._log,
                                     stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                     start_new_session=True)
        self.ready_s: float | None = None

    def wait_ready(self, models: list[str], timeout: float | None = None) -> float:
        """Seconds from process start until every served model is ready on every protocol.

        A model the server reports as failed to load (OIP metadata ``state: UNAVAILABLE``, as
        Turnout does) is not waited for: it lands in ``self.failed`` with its reason, and the
        other models are measured.
        """
        served = [m for m in models if m in self.defn.models]
        self.failed: dict[str, str] = {}
        timeout = timeout or self.defn.start_timeout
        deadline = self.started + timeout
        pending_http = list(served) if self.defn.has_http else []
        pending_grpc = list(served) if self.defn.has_grpc else []
        next_state_check = self.started + 1.0
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self.proc.returncode} while starting;"
                                   f" see {self.log_path}:\n{self.log_tail()}")
            pending_http = [m for m in pending_http if not http_model_ready(
                self.http_port, m, self.defn.ready_path)]
            if pending_http and time.perf_counter() >= next_state_check:
                next_state_check = time.perf_counter() + 0.5
                for m in pending_http:
                    reason = http_model_failed(self.http_port, m)
                    if reason:
                        self.failed[m] = reason
                pending_http = [m for m in pending_http if m not in self.failed]
            if not pending_http:
                pending_grpc = [m for m in pending_grpc if m not in self.failed
                                and not grpc_model_ready(self.grpc_port, m,
                                                         self.defn.grpc_metadata)]
            if not pending_http and not pending_grpc:
                if len(self.failed) == len(served):
                    raise RuntimeError(f"{self.name}: no model loaded: {self.failed}")
                self.ready_s = time.perf_counter() - self.started
                return self.ready_s
            if time.perf_counter() > deadline:
                raise RuntimeError(f"{self.name} not ready after {timeout}s (waiting for "
                                   f"{pending_http or pending_grpc}); see {self.log_path}")
            time.sleep(0.01)

    def log_tail(self, n: int = 2000) -> str:
        try:
            return self.log_path.read_bytes()[-n:].decode(errors="replace")
        except OSError:
            return ""

    def pids(self) -> list[int]:
        """The server's processes: everything in the session it was started in (Linux /proc)."""
        return session_pids(self.proc.pid)

    def rss_bytes(self) -> int:
        """Resident memory of the server's whole process tree (shared pages once per process)."""
        return sum(rss_of(pid) for pid in self.pids())

    def pss_bytes(self) -> int:
        """Proportional set size of the tree: pages shared between its processes (a model
        loaded before fork) count once in total, so this is what the server really occupies."""
        return sum(pss_of(pid) for pid in self.pids())

    def stop(self, grace: float = 10.0) -> None:
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, self.defn.stop_signal)
            except ProcessLookupError:
                pass
            try:
                self.proc.wait(grace)
            except subprocess.TimeoutExpired:
                try:
                    os.killpg(self.proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                self.proc.wait(5)
        # Children of its session may linger after the leader (Ray's raylet, LitServe's
        # workers, Triton's stubs): a few seconds to finish, then SIGKILL.
        deadline = time.monotonic() + 5.0
        while session_pids(self.proc.pid) and time.monotonic() < deadline:
            time.sleep(0.1)
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        for path in self._cleanup:
            shutil.rmtree(path, ignore_errors=True)
        self._log.close()


def start(name: str, work: Path, artifacts: dict[str, Path], models: list[str], cpu: int | None,
          turnout_args: list[str], log_dir: Path, env: dict[str, str] | None = None) -> Running:
    http_port, grpc_port = free_port(), free_port()
    launch = prepare(name, work, artifacts, models, http_port, grpc_port, turnout_args)
    launch.env.update(env or {})
    return Running(name, launch, http_port, grpc_port, cpu, log_dir / f"{name}.log")


PAGE_SIZE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


def session_pids(sid: int) -> list[int]:
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        # pid (comm) state ppid pgrp session ...; comm may hold spaces and parentheses
        fields = stat[stat.rindex(")") + 2:].split()
        if int(fields[3]) == sid:
            pids.append(int(entry.name))
    return sorted(pids)


def rss_of(pid: int) -> int:
    try:
        return int(Path(f"/proc/{pid}/statm").read_text().split()[1]) * PAGE_SIZE
    except (OSError, IndexError, ValueError):
        return 0


def pss_of(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                return int(line.split()[1]) * 1024
    except (OSError, IndexError, ValueError):
        pass
    return 0


# --- readiness probes -------------------------------------------------------------------------------

def http_model_ready(port: int, model: str, path: str = "/v2/models/{model}/ready") -> bool:
    try:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
        conn.request("GET", path.format(model=model))
        status = conn.getresponse().status
        conn.close()
        return status == 200
    except OSError:
        return False


def http_model_failed(port: int, model: str) -> str | None:
    """The reason a model failed to load, when the server's metadata says so."""
    try:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
        conn.request("GET", f"/v2/models/{model}")
        response = conn.getresponse()
        body = response.read()
        conn.close()
        doc = json.loads(body) if response.status == 200 else {}
    except (OSError, ValueError):
        return None
    if isinstance(doc, dict) and str(doc.get("state", "")).upper() in ("UNAVAILABLE", "FAILED"):
        return str(doc.get("reason") or doc.get("state"))
    return None


def grpc_model_ready(port: int, model: str,
                     metadata: tuple[tuple[str, str], ...] = ()) -> bool:
    import grpc

    from serving.protocol import proto

    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            call = channel.unary_unary(f"/{proto.SERVICE_NAME}/ModelReady",
                                       request_serializer=proto.ModelReadyRequest.SerializeToString,
                                       response_deserializer=proto.ModelReadyResponse.FromString)
            return bool(call(proto.ModelReadyRequest(name=model), timeout=2,
                             metadata=metadata or None).ready)
    except grpc.RpcError:
        return False
