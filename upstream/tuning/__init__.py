"""Hyperparameter tuning (Katib's job) on Optuna: a Katib ``Experiment`` run locally.

``turnout tune -f experiment.yaml`` and the ``tune_model`` pipeline component run the core of a
Katib ``kubeflow.org/v1beta1`` Experiment: trials of the training components in parallel worker
processes, the study persisted (SQLite in the state folder, or a shared database) so an
interrupted tuning resumes, every trial logged to MLflow as a nested run, the best configuration
retrained and registered with its trial lineage. See docs/tuning.md.

Importing this package imports neither Optuna, MLflow nor a training framework.
"""

from upstream.tuning.experiment import Experiment, ExperimentError, Plan, load_experiment, plan
from upstream.tuning.tuner import TuneResult, TuningFailed, tune

__all__ = ["Experiment", "ExperimentError", "Plan", "TuneResult", "TuningFailed", "load_experiment",
           "plan", "tune"]
