"""The benchmark's models, built from fixed seeds, and the rows sent to them.

- ``iris``: scikit-learn LogisticRegression on an iris-like problem (4 features, 3 classes), joblib.
- ``xgb``: XGBoost classifier, 100 trees of depth 6 on 32 features (binary), saved as JSON.
- ``mlp``: an ONNX MLP 64 -> 256 -> 256 -> 10 (ReLU, softmax), built with ``onnx.helper``.
- ``torch``: the heavier model, where batching decides: a deep MLP 256 -> 1536 -> 1536 -> 1536
  -> 10 (ReLU, softmax; 5.1 M weights, 20 MB) saved with ``torch.export`` (``model.pt2``). One row
  reads every weight from memory (milliseconds on one core); a batch of 64 reads them once.
- ``torch-onnx``: the very same weights as an ONNX graph (``model.onnx``). Anchors without
  PyTorch serve the ``torch`` model from this file (``ANCHOR_ARTIFACTS``).

Every server loads the same files; ``build`` reuses them when the stamp beside them matches.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

SEED = 20240611
STAMP_VERSION = 1
INPUT_NAME = "input-0"


@dataclass(frozen=True)
class ModelSpec:
    name: str
    framework: str  # sklearn | xgboost | onnx
    artifact: str  # file name inside the model's folder
    n_features: int
    datatype: str  # OIP datatype of the input rows
    n_classes: int

    @property
    def dtype(self) -> np.dtype:
        return np.dtype(np.float64 if self.datatype == "FP64" else np.float32)


MODELS: dict[str, ModelSpec] = {
    "iris": ModelSpec("iris", "sklearn", "model.joblib", 4, "FP64", 3),
    "xgb": ModelSpec("xgb", "xgboost", "model.json", 32, "FP32", 2),
    "mlp": ModelSpec("mlp", "onnx", "model.onnx", 64, "FP32", 10),
    "torch": ModelSpec("torch", "torch", "model.pt2", 256, "FP32", 10),
    "torch-onnx": ModelSpec("torch-onnx", "onnx", "model.onnx", 256, "FP32", 10),
}
TORCH_SIZES = (256, 1536, 1536, 1536, 10)
# The same weights for servers without PyTorch: model name -> (the model to take the file of,
# its framework).
ANCHOR_ARTIFACTS = {"torch": ("torch-onnx", "onnx")}


def rows(name: str, batch: int) -> np.ndarray:
    """The request rows for ``name``: fixed, in the model's input datatype, C-contiguous."""
    spec = MODELS[name]
    rng = np.random.default_rng(SEED + batch)
    if name == "iris":
        centre = np.array([5.8, 3.0, 3.8, 1.2])
        x = centre + rng.normal(scale=0.6, size=(batch, 4))
    else:
        x = rng.normal(size=(batch, spec.n_features))
    return np.ascontiguousarray(np.round(x, 4).astype(spec.dtype))


def _build_iris(path: Path) -> None:
    import joblib
    from sklearn.linear_model import LogisticRegression

    rng = np.random.default_rng(SEED)
    centres = np.array([[5.0, 3.4, 1.5, 0.2], [5.9, 2.8, 4.3, 1.3], [6.6, 3.0, 5.6, 2.0]])
    y = np.repeat(np.arange(3), 100)
    x = centres[y] + rng.normal(scale=0.35, size=(300, 4))
    model = LogisticRegression(max_iter=500).fit(x, y)
    joblib.dump(model, path)


def _build_xgb(path: Path) -> None:
    import xgboost as xgb

    rng = np.random.default_rng(SEED)
    x = rng.normal(size=(4000, 32)).astype(np.float32)
    w = rng.normal(size=32)
    y = ((x @ w + 0.5 * np.sin(3 * x[:, 0]) + rng.normal(scale=0.5, size=4000)) > 0).astype(int)
    model = xgb.XGBClassifier(n_estimators=100, max_depth=6, learning_rate=0.1,
                              tree_method="hist", random_state=0, n_jobs=1)
    model.fit(x, y)
    model.save_model(str(path))


def _mlp_weights(sizes: tuple[int, ...]) -> list[tuple[np.ndarray, np.ndarray]]:
    """(W, b) per layer from the fixed seed; W is (n_in, n_out)."""
    rng = np.random.default_rng(SEED)
    layers = []
    for n_in, n_out in zip(sizes, sizes[1:], strict=False):
        w = (rng.normal(size=(n_in, n_out)) / np.sqrt(n_in)).astype(np.float32)
        b = (rng.normal(size=(n_out,)) * 0.01).astype(np.float32)
        layers.append((w, b))
    return layers


def _build_mlp(path: Path) -> None:
    _save_onnx_mlp(path, (64, 256, 256, 10), "turnout_bench_mlp")


def _build_torch_onnx(path: Path) -> None:
    _save_onnx_mlp(path, TORCH_SIZES, "turnout_bench_torch")


def _build_torch(path: Path) -> None:
    import torch

    layers = []
    for w, b in _mlp_weights(TORCH_SIZES):
        linear = torch.nn.Linear(*w.shape)
        with torch.no_grad():
            linear.weight.copy_(torch.from_numpy(w.T.copy()))
            linear.bias.copy_(torch.from_numpy(b))
        layers += [linear, torch.nn.ReLU()]
    module = torch.nn.Sequential(*layers[:-1], torch.nn.Softmax(dim=-1)).eval()
    example = (torch.zeros(2, TORCH_SIZES[0]),)
    batch = torch.export.Dim("batch", min=1, max=4096)
    program = torch.export.export(module, example, dynamic_shapes=({0: batch},))
    torch.export.save(program, str(path))


def _save_onnx_mlp(path: Path, sizes: tuple[int, ...], graph_name: str) -> None:
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    inits, nodes, prev = [], [], INPUT_NAME
    for i, (w, b) in enumerate(_mlp_weights(sizes)):
        inits += [numpy_helper.from_array(w, f"W{i}"), numpy_helper.from_array(b, f"B{i}")]
        nodes += [helper.make_node("MatMul", [prev, f"W{i}"], [f"mm{i}"]),
                  helper.make_node("Add", [f"mm{i}", f"B{i}"], [f"z{i}"])]
        prev = f"z{i}"
        if i < len(sizes) - 2:
            nodes.append(helper.make_node("Relu", [prev], [f"h{i}"]))
            prev = f"h{i}"
    nodes.append(helper.make_node("Softmax", [prev], ["probabilities"], axis=-1))
    graph = helper.make_graph(
        nodes, graph_name,
        [helper.make_tensor_value_info(INPUT_NAME, TensorProto.FLOAT, ["batch", sizes[0]])],
        [helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, ["batch", sizes[-1]])],
        inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)],
                              producer_name="turnout-loadtests")
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, str(path))


BUILDERS: dict[str, Callable[[Path], None]] = {
    "iris": _build_iris, "xgb": _build_xgb, "mlp": _build_mlp, "torch": _build_torch,
    "torch-onnx": _build_torch_onnx}


def artifact_path(models_dir: Path, name: str) -> Path:
    return models_dir / name / MODELS[name].artifact


def build(models_dir: Path, names: list[str] | None = None) -> dict[str, Path]:
    """Build each model into ``models_dir/<name>/<artifact>`` (reused when already built)."""
    out = {}
    names = list(names or MODELS)
    # The anchors serve ``torch`` from its ONNX twin: build that too.
    names += [ANCHOR_ARTIFACTS[n][0] for n in names if n in ANCHOR_ARTIFACTS
              and ANCHOR_ARTIFACTS[n][0] not in names]
    for name in names:
        path = artifact_path(models_dir, name)
        stamp = path.parent / ".stamp"
        want = json.dumps({"seed": SEED, "version": STAMP_VERSION})
        if not (path.exists() and stamp.exists() and stamp.read_text() == want):
            path.parent.mkdir(parents=True, exist_ok=True)
            BUILDERS[name](path)
            stamp.write_text(want)
        out[name] = path
    return out


def load_predictor(name: str, path: Path) -> Callable[[np.ndarray], object]:
    """The cheapest direct call into the framework, for the in-process floor."""
    framework = MODELS[name].framework
    if framework == "sklearn":
        import joblib

        model = joblib.load(path)
        return model.predict
    if framework == "xgboost":
        import xgboost as xgb

        booster = xgb.Booster(model_file=str(path))
        booster.set_param({"nthread": 1})
        return booster.inplace_predict
    if framework == "torch":
        import torch

        torch.set_num_threads(1)
        module = torch.export.load(str(path)).module()

        def predict(x: np.ndarray):
            with torch.inference_mode():
                return module(torch.from_numpy(x)).numpy()
        return predict
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.inter_op_num_threads = 1
    session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    return lambda x: session.run(None, {INPUT_NAME: x})


def floor(name: str, path: Path, batches: tuple[int, ...] = (1, 32, 64),
          seconds: float = 0.5) -> list[dict]:
    """Calls per second and rows per second of the bare predict call, per batch size."""
    try:  # one BLAS/OpenMP thread, as the servers get (they run pinned to one core)
        from threadpoolctl import threadpool_limits

        limits = threadpool_limits(1)
    except ImportError:
        limits = None
    try:
        return _floor(name, path, batches, seconds)
    finally:
        if limits is not None:
            limits.restore_original_limits()


def _floor(name: str, path: Path, batches: tuple[int, ...], seconds: float) -> list[dict]:
    predict = load_predictor(name, path)
    return [timed_floor(predict, name, batch, seconds) for batch in batches]


def timed_floor(predict: Callable[[np.ndarray], object], name: str, batch: int,
                seconds: float) -> dict:
    """One floor reading: ``predict`` on ``batch`` rows of ``name`` back to back for
    ``seconds`` (after a warm-up), as calls, rows and µs per call."""
    x = rows(name, batch)
    for _ in range(20):
        predict(x)
    n, start = 0, time.perf_counter()
    deadline = start + seconds
    while True:
        for _ in range(20):
            predict(x)
        n += 20
        now = time.perf_counter()
        if now >= deadline:
            break
    elapsed = now - start
    return {"model": name, "batch": batch, "calls_per_s": n / elapsed,
            "rows_per_s": n * batch / elapsed, "us_per_call": elapsed / n * 1e6}


def repository(work: Path, names: list[str]) -> Path:
    """``work/models``: a model repository (one folder per model, its artifact linked from
    ``work/artifacts``) that ``turnout serve`` loads whole."""
    artifacts = build(work / "artifacts", names)
    repo = work / "models"
    for name in names:
        (repo / name).mkdir(parents=True, exist_ok=True)
        link = repo / name / artifacts[name].name
        if not link.exists():
            link.symlink_to(artifacts[name])
    return repo
