"""The predictor of the digits example: scikit-learn's 8x8 digits (shipped with it, nothing is
downloaded) and a logistic regression on them, saved for ``digits.yaml``.

    python examples/transformer/make_digits.py [OUT]   # default: examples/models/digits
"""

from __future__ import annotations

import sys
from pathlib import Path

import joblib
from sklearn.datasets import load_digits
from sklearn.linear_model import LogisticRegression


def main(out: Path) -> None:
    x, y = load_digits(return_X_y=True)
    out.mkdir(parents=True, exist_ok=True)
    joblib.dump(LogisticRegression(max_iter=2000, random_state=0).fit(x, y), out / "model.joblib")
    print(f"wrote {out / 'model.joblib'}")


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else
         Path(__file__).resolve().parents[1] / "models" / "digits")
