"""A small PyTorch MLP, exported with ``torch.export`` and saved as ``model.pt2``.

The network standardises its own inputs (and, for regression, its targets), with the training
statistics held as buffers, so it serves raw features. ``forward`` returns a dict: classifiers
give ``predict`` (class, INT64) and ``predict_proba`` (softmax), regressors ``predict``; the
torch runtime serves dict keys as output names, so they match the other frameworks'. The ONNX
copy comes from ``torch.onnx.export``'s TorchScript exporter (the dynamo one needs onnxscript),
kept only when ONNX Runtime answers like the exported program.
"""

from __future__ import annotations

import io
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from runtimes.compiled import Tolerance
from serving.runtime.base import Runtime
from upstream.datasets import Dataset
from upstream.training.base import OutputNames, check_numbers, column_stats, hidden_sizes, resolve_params

ARTIFACT = "model.pt2"
RUNTIME = "torch"
NAMES = OutputNames()
DEFAULTS: dict[str, Any] = {"hidden": 32, "epochs": 40, "lr": 0.01, "batch_size": 32}
ONNX_TOLERANCE = Tolerance(rtol=1e-5, atol=1e-6)  # float32 on both sides
ONNX_SCALES = (0.01, 1.0)
ONNX_OPSET = 17
REPORTS_EPOCHS = True
Report = Callable[[int, dict[str, np.ndarray]], None]


def resolve(task: str, params: dict[str, Any] | None) -> dict[str, Any]:
    resolved = resolve_params("torch", DEFAULTS, params)
    check_numbers(resolved, ints=("epochs", "batch_size"), floats=("lr",))
    resolved["hidden"] = hidden_sizes(resolved["hidden"])
    return resolved


def fit(dataset: Dataset, params: dict[str, Any], seed: int, report: Report | None = None) -> Any:
    """Adam on shuffled minibatches; ``report(epoch, outputs)`` after each epoch with the
    network's outputs on the test split (evaluating draws no random numbers, so reporting
    leaves the training itself unchanged)."""
    import torch

    x, y, outputs, loss_fn = tensors(dataset)
    with torch.random.fork_rng(devices=[]):  # the caller's global RNG is left as it was
        torch.manual_seed(seed)
        model = network(dataset, params["hidden"], outputs)
        optimizer = torch.optim.Adam(model.parameters(), lr=params["lr"])
        batches = torch.Generator().manual_seed(seed)
        model.train()
        for epoch in range(params["epochs"]):
            order = torch.randperm(len(x), generator=batches)
            for start in range(0, len(x), params["batch_size"]):
                index = order[start:start + params["batch_size"]]
                optimizer.zero_grad()
                loss_fn(model.logits(x[index]), y[index]).backward()
                optimizer.step()
            if report is not None:
                report(epoch + 1, evaluate_outputs(model, dataset.X_test))
    return model.eval()


def tensors(dataset: Dataset) -> tuple[Any, Any, int, Any]:
    """The training features and targets as tensors (regression targets standardised), the
    number of network outputs and the loss (mean over a batch): what ``fit`` and the
    distributed trainer (upstream/distributed) share."""
    import torch

    x = torch.from_numpy(dataset.X_train)
    if dataset.task == "classification":
        y = torch.from_numpy(dataset.y_train)
        return x, y, len(dataset.classes or ()), torch.nn.functional.cross_entropy
    y_mean, y_scale = column_stats(dataset.y_train.reshape(-1, 1))
    y = torch.from_numpy(((dataset.y_train - y_mean[0]) / y_scale[0]).astype(np.float32))
    return x, y, 1, _mse


def evaluate_outputs(model: Any, x: np.ndarray) -> dict[str, np.ndarray]:
    """The network's served outputs for rows ``x``, in evaluation mode, then back to training
    mode."""
    import torch

    model.eval()
    with torch.no_grad():
        result = model(torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)))
    model.train()
    return {name: value.numpy() for name, value in result.items()}


def save(model: Any, folder: Path) -> str:
    import torch

    example = torch.zeros(2, model.mean.shape[0])
    program = torch.export.export(model, (example,),
                                  dynamic_shapes=({0: torch.export.Dim("batch")},))
    torch.export.save(program, str(folder / ARTIFACT))
    return ARTIFACT


def predict(folder: Path, x: np.ndarray) -> dict[str, np.ndarray]:
    """The saved exported program run by torch."""
    import torch

    module = torch.export.load(str(folder / ARTIFACT)).module()
    with torch.no_grad():
        result = module(torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)))
    return {name: value.numpy() for name, value in result.items()}


def export_onnx(model: Any, folder: Path, native: Runtime
                ) -> tuple[bytes | None, dict[str, list[int | None]], str]:
    """``torch.onnx.export`` with the native input and output names."""
    import torch

    names = [spec.name for spec in native.outputs]
    input_name = native.inputs[0].name

    class Ordered(torch.nn.Module):
        """The dict outputs as a tuple in the served order: ONNX outputs are positional."""

        def __init__(self) -> None:
            super().__init__()
            self.model = model

        def forward(self, x: Any) -> tuple[Any, ...]:
            result = self.model(x)
            return tuple(result[name] for name in names)

    buffer = io.BytesIO()
    try:
        with warnings.catch_warnings():  # the TorchScript exporter is deprecated, still works
            warnings.simplefilter("ignore")
            torch.onnx.export(Ordered().eval(), (torch.zeros(2, model.mean.shape[0]),), buffer,
                              dynamo=False, input_names=[input_name], output_names=names,
                              dynamic_axes={n: {0: "N"} for n in (input_name, *names)},
                              opset_version=ONNX_OPSET)
    except Exception as exc:  # exporter failures come in many types
        return None, {}, f"torch.onnx.export failed: {type(exc).__name__}: {exc}"
    return buffer.getvalue(), {name: [i, None] for i, name in enumerate(names)}, ""


def network(dataset: Dataset, hidden: list[int], outputs: int) -> Any:
    """The MLP (standardisation statistics from ``dataset``'s training split), initialised
    from torch's global RNG."""
    import torch

    mean, scale = column_stats(dataset.X_train)
    classification = dataset.task == "classification"
    y_mean, y_scale = (np.zeros(1), np.ones(1)) if classification else \
        column_stats(dataset.y_train.reshape(-1, 1))

    class MLP(torch.nn.Module):
        """Standardise, hidden ReLU layers, then classes or one value."""

        def __init__(self) -> None:
            super().__init__()
            layers: list[Any] = []
            width = len(mean)
            for size in hidden:
                layers += [torch.nn.Linear(width, size), torch.nn.ReLU()]
                width = size
            self.net = torch.nn.Sequential(*layers, torch.nn.Linear(width, outputs))
            for name, value in (("mean", mean), ("scale", scale), ("y_mean", y_mean),
                                ("y_scale", y_scale)):
                self.register_buffer(name, torch.from_numpy(value.astype(np.float32)))

        def logits(self, x: Any) -> Any:
            return self.net((x - self.mean) / self.scale)

        def forward(self, x: Any) -> dict[str, Any]:
            out = self.logits(x)
            if classification:
                return {"predict": out.argmax(dim=1), "predict_proba": torch.softmax(out, dim=1)}
            return {"predict": out[:, 0] * self.y_scale + self.y_mean}

    return MLP()


def _mse(predicted: Any, target: Any) -> Any:
    import torch

    return torch.nn.functional.mse_loss(predicted[:, 0], target)
