"""Which Turnout runtime serves a predictor: KServe's ``modelFormat.name`` and ``runtime``.

KServe picks a ServingRuntime from the model format (``sklearn``, ``pytorch``...) or by the
name in ``runtime`` (``kserve-sklearnserver``, ``kserve-mlserver``...). Turnout has one runtime
per framework, so both map onto its runtime names; a format no Turnout runtime serves (Triton's
model repositories, PMML, Paddle, Hugging Face) is refused at apply rather than accepted and
never ready. Pure.
"""

from __future__ import annotations

# KServe model format -> Turnout runtime (entry-point name in ``turnout.runtimes``).
FORMAT_RUNTIMES: dict[str, str] = {
    "sklearn": "sklearn", "xgboost": "xgboost", "lightgbm": "lightgbm", "onnx": "onnx",
    "pytorch": "torch", "torch": "torch", "tensorflow": "tensorflow",
}
UNSERVED_FORMATS = ("triton", "pmml", "paddle", "huggingface", "mlflow")

# KServe ServingRuntime names -> the formats each serves here. MLServer's runtime serves the
# same three frameworks; TensorFlow Serving serves SavedModels. TorchServe (.mar archives),
# Triton (model repositories with config.pbtxt), PMML, Paddle and Hugging Face have no runtime.
KSERVE_RUNTIMES: dict[str, tuple[str, ...]] = {
    "kserve-sklearnserver": ("sklearn",),
    "kserve-xgbserver": ("xgboost",),
    "kserve-lgbserver": ("lightgbm",),
    "kserve-mlserver": ("sklearn", "xgboost", "lightgbm"),
    "kserve-tensorflow-serving": ("tensorflow",),
}
UNSERVED_RUNTIMES = ("kserve-torchserve", "kserve-tritonserver", "kserve-pmmlserver",
                     "kserve-paddleserver", "kserve-huggingfaceserver")


class FormatError(ValueError):
    """A predictor whose format or runtime Turnout cannot serve; the message says why."""


def runtime_for(model_format: str, runtime: str | None = None) -> str:
    """The Turnout runtime name for a predictor, or :class:`FormatError`.

    ``runtime`` may be a KServe ServingRuntime name or a Turnout runtime name; either must
    agree with the format.
    """
    fmt = model_format.lower()
    if fmt in UNSERVED_FORMATS or fmt not in FORMAT_RUNTIMES:
        known = ", ".join(sorted(set(FORMAT_RUNTIMES) - {"torch"}))
        raise FormatError(f"modelFormat {model_format!r} has no Turnout runtime (served: {known})")
    wanted = FORMAT_RUNTIMES[fmt]
    if runtime is None:
        return wanted
    if runtime in UNSERVED_RUNTIMES:
        raise FormatError(f"runtime {runtime!r} has no Turnout equivalent; leave runtime out to "
                          f"serve {model_format} with Turnout's {wanted} runtime")
    if runtime in KSERVE_RUNTIMES:
        formats = KSERVE_RUNTIMES[runtime]
        if fmt not in formats:
            raise FormatError(f"runtime {runtime!r} serves {', '.join(formats)}, not "
                              f"modelFormat {model_format!r}")
        return wanted
    if runtime in set(FORMAT_RUNTIMES.values()):
        if runtime != wanted:
            raise FormatError(f"runtime {runtime!r} does not serve modelFormat {model_format!r} "
                              f"(that is the {wanted} runtime)")
        return wanted
    raise FormatError(f"runtime {runtime!r} is unknown (KServe's: "
                      f"{', '.join(sorted(KSERVE_RUNTIMES))}; or a Turnout runtime name: "
                      f"{', '.join(sorted(set(FORMAT_RUNTIMES.values())))})")
