"""A small TensorFlow MLP, saved as a SavedModel that is the model folder itself.

The TensorFlow runtime serves the ``serving_default`` signature of ``saved_model.pb`` in the
version folder, so the SavedModel (``saved_model.pb``, ``variables/``) lies beside
``model-settings.yaml``. The signature takes ``x`` (FP32 ``[-1, features]``) and returns
``predict`` (class, INT64) and ``predict_proba`` for classifiers, ``predict`` for regressors,
like the other frameworks. A plain ``tf.Module`` trained by a hand-written Adam step keeps Keras
out (its import alone costs seconds). No ONNX copy: tf2onnx is not a dependency.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from runtimes.compiled import Tolerance
from serving.runtime.base import Runtime
from upstream.datasets import Dataset
from upstream.training.base import OutputNames, check_numbers, column_stats, hidden_sizes, resolve_params

ARTIFACT = "saved_model.pb"
RUNTIME = "tensorflow"
SIGNATURE = "serving_default"
NAMES = OutputNames()
DEFAULTS: dict[str, Any] = {"hidden": 32, "epochs": 40, "lr": 0.01, "batch_size": 32}
ONNX_TOLERANCE = Tolerance(rtol=1e-5, atol=1e-6)
ONNX_SCALES = (1.0,)
ADAM = (0.9, 0.999, 1e-7)  # beta1, beta2, epsilon: Keras's defaults


def resolve(task: str, params: dict[str, Any] | None) -> dict[str, Any]:
    resolved = resolve_params("tensorflow", DEFAULTS, params)
    check_numbers(resolved, ints=("epochs", "batch_size"), floats=("lr",))
    resolved["hidden"] = hidden_sizes(resolved["hidden"])
    return resolved


def fit(dataset: Dataset, params: dict[str, Any], seed: int) -> Any:
    import tensorflow as tf

    classification = dataset.task == "classification"
    if classification:
        y = dataset.y_train.astype(np.int64)
        outputs = len(dataset.classes or ())
    else:
        y_mean, y_scale = column_stats(dataset.y_train.reshape(-1, 1))
        y = ((dataset.y_train - y_mean[0]) / y_scale[0]).astype(np.float32)
        outputs = 1
    model = _network(tf, dataset, params["hidden"], outputs, seed)
    beta1, beta2, epsilon = ADAM
    slots = [(tf.Variable(tf.zeros_like(v)), tf.Variable(tf.zeros_like(v)))
             for v in model.trainable]
    steps = tf.Variable(0.0)
    lr = float(params["lr"])

    @tf.function(input_signature=[tf.TensorSpec([None, dataset.n_features], tf.float32),
                                  tf.TensorSpec([None], tf.int64 if classification else tf.float32)])
    def step(xb: Any, yb: Any) -> None:
        with tf.GradientTape() as tape:
            out = model.logits(xb)
            if classification:
                loss = tf.reduce_mean(
                    tf.nn.sparse_softmax_cross_entropy_with_logits(labels=yb, logits=out))
            else:
                loss = tf.reduce_mean(tf.square(out[:, 0] - yb))
        grads = tape.gradient(loss, model.trainable)
        steps.assign_add(1.0)
        correction = tf.sqrt(1.0 - beta2 ** steps) / (1.0 - beta1 ** steps)
        for var, grad, (m, v) in zip(model.trainable, grads, slots, strict=True):
            m.assign(beta1 * m + (1.0 - beta1) * grad)
            v.assign(beta2 * v + (1.0 - beta2) * tf.square(grad))
            var.assign_sub(lr * correction * m / (tf.sqrt(v) + epsilon))

    order = np.random.default_rng(seed)
    batch = params["batch_size"]
    for _ in range(params["epochs"]):
        index = order.permutation(len(y))
        for start in range(0, len(y), batch):
            rows = index[start:start + batch]
            step(dataset.X_train[rows], y[rows])
    return model


def save(model: Any, folder: Path) -> str:
    import tensorflow as tf

    tf.saved_model.save(model, str(folder),
                        signatures={SIGNATURE: model.serve.get_concrete_function()})
    return ARTIFACT


def predict(folder: Path, x: np.ndarray) -> dict[str, np.ndarray]:
    """The SavedModel's serving signature run by TensorFlow."""
    import tensorflow as tf

    signature = tf.saved_model.load(str(folder)).signatures[SIGNATURE]
    result = signature(x=tf.constant(np.asarray(x, dtype=np.float32)))
    return {name: tensor.numpy() for name, tensor in result.items()}


def export_onnx(model: Any, folder: Path, native: Runtime
                ) -> tuple[bytes | None, dict[str, list[int | None]], str]:
    return None, {}, "no ONNX converter for TensorFlow is installed (tf2onnx is not a dependency)"


def _network(tf: Any, dataset: Dataset, hidden: list[int], outputs: int, seed: int) -> Any:
    mean, scale = column_stats(dataset.X_train)
    classification = dataset.task == "classification"
    y_mean, y_scale = (np.zeros(1), np.ones(1)) if classification else \
        column_stats(dataset.y_train.reshape(-1, 1))

    class MLP(tf.Module):
        """Standardise, hidden ReLU layers, then classes or one value."""

        def __init__(self) -> None:
            super().__init__()
            self.mean = tf.constant(mean, tf.float32)
            self.scale = tf.constant(scale, tf.float32)
            self.y_mean = tf.constant(y_mean, tf.float32)
            self.y_scale = tf.constant(y_scale, tf.float32)
            self.layers = []
            width = len(mean)
            for i, size in enumerate([*hidden, outputs]):
                limit = float(np.sqrt(6.0 / (width + size)))  # Glorot uniform
                kernel = tf.random.stateless_uniform((width, size), seed=(seed, i),
                                                     minval=-limit, maxval=limit)
                self.layers.append((tf.Variable(kernel), tf.Variable(tf.zeros((size,)))))
                width = size
            self.trainable = [v for layer in self.layers for v in layer]
            self.serve = tf.function(self._serve, input_signature=[
                tf.TensorSpec([None, len(mean)], tf.float32, name="x")])

        def logits(self, x: Any) -> Any:
            h = (x - self.mean) / self.scale
            for kernel, bias in self.layers[:-1]:
                h = tf.nn.relu(tf.matmul(h, kernel) + bias)
            kernel, bias = self.layers[-1]
            return tf.matmul(h, kernel) + bias

        def _serve(self, x: Any) -> dict[str, Any]:
            out = self.logits(x)
            if classification:
                return {"predict": tf.argmax(out, axis=1), "predict_proba": tf.nn.softmax(out)}
            return {"predict": out[:, 0] * self.y_scale + self.y_mean}

    return MLP()
