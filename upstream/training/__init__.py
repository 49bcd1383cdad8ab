"""Training components: a dataset and hyperparameters in, a servable model folder out.

``train(framework, dataset, out_dir)`` writes the framework's native artifact, the signature in
``model-settings.yaml``, held-out ``metrics.json`` and, where a verified converter exists, an
ONNX copy in ``onnx/``. Importing this package imports no ML framework: each component imports
its own on first use.
"""

from upstream.training.base import TrainResult
from upstream.training.core import (
    FRAMEWORKS,
    EpochCallback,
    evaluate,
    package,
    predict_in_process,
    reports_epochs,
    train,
)

__all__ = ["FRAMEWORKS", "EpochCallback", "TrainResult", "evaluate", "package", "predict_in_process",
           "reports_epochs", "train"]
