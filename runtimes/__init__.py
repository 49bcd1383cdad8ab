"""Turnout's built-in runtimes: scikit-learn, XGBoost and ONNX Runtime.

Each lives in its own module and is found through the ``turnout.runtimes`` entry points, so
importing this package pulls in no framework: a server without xgboost installed still starts
and simply does not offer that runtime.
"""

__all__ = ["onnx", "sklearn", "xgboost"]
