"""Build a scikit-learn pipeline that takes a pandas DataFrame, and its model-settings.yaml.

    python examples/sklearn_pandas/make_model.py models/churn
    turnout serve models/churn

The pipeline one-hot encodes a text column and scales two numeric ones with a
ColumnTransformer, which selects columns by name; ``content_type: pd`` tells the server to
turn the request's named inputs into a DataFrame with those columns.
"""

from __future__ import annotations

import sys
from pathlib import Path

import joblib
import numpy as np
import pandas as pd
import yaml
from sklearn.compose import ColumnTransformer
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import OneHotEncoder, StandardScaler

SETTINGS = {
    "name": "churn",
    "parameters": {"content_type": "pd"},  # the inputs together are one DataFrame
    "inputs": [  # one input per column, in any order: the pipeline picks them by name
        {"name": "plan", "datatype": "BYTES", "shape": [-1]},
        {"name": "tenure_months", "datatype": "FP64", "shape": [-1]},
        {"name": "monthly_spend", "datatype": "FP64", "shape": [-1]},
    ],
}


def training_frame(rows: int = 300, seed: int = 0) -> tuple[pd.DataFrame, np.ndarray]:
    rng = np.random.default_rng(seed)
    frame = pd.DataFrame({
        "plan": rng.choice(["basic", "plus", "pro"], size=rows),
        "tenure_months": rng.integers(1, 72, size=rows).astype(float),
        "monthly_spend": rng.gamma(2.0, 20.0, size=rows),
    })
    score = (frame["plan"] == "basic") * 1.0 - frame["tenure_months"] / 36 \
        + frame["monthly_spend"] / 80 + rng.normal(0, 0.3, size=rows)
    return frame, (score > 0).to_numpy().astype(int)


def build(folder: Path) -> Pipeline:
    frame, churned = training_frame()
    pipeline = Pipeline([
        ("columns", ColumnTransformer([
            ("plan", OneHotEncoder(handle_unknown="ignore"), ["plan"]),
            ("numbers", StandardScaler(), ["tenure_months", "monthly_spend"]),
        ])),
        ("model", LogisticRegression(max_iter=500)),
    ]).fit(frame, churned)
    folder.mkdir(parents=True, exist_ok=True)
    joblib.dump(pipeline, folder / "model.joblib")
    (folder / "model-settings.yaml").write_text(yaml.safe_dump(SETTINGS, sort_keys=False))
    return pipeline


if __name__ == "__main__":
    build(Path(sys.argv[1] if len(sys.argv) > 1 else "models/churn"))
