"""Build the example model repository used by the README quick start, with fixed seeds.

Nothing is downloaded: iris ships inside scikit-learn.

    python examples/make_models.py [OUT]   # default: examples/models
"""

from __future__ import annotations

import sys
from pathlib import Path

import joblib
from sklearn.datasets import load_iris
from sklearn.linear_model import LogisticRegression
from sklearn.tree import DecisionTreeClassifier


def main(out: Path) -> None:
    x, y = load_iris(return_X_y=True)
    # Two versions of one model: version 2 (the default) is the newer candidate.
    for version, model in (("1", DecisionTreeClassifier(max_depth=3, random_state=0)),
                           ("2", LogisticRegression(max_iter=500, random_state=0))):
        folder = out / "iris" / version
        folder.mkdir(parents=True, exist_ok=True)
        joblib.dump(model.fit(x, y), folder / "model.joblib")
    print(f"wrote example models to {out}")


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).parent / "models")
