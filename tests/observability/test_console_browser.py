"""The web console in a real browser (Debian's chromium, driven by Playwright) while real
rollouts run on a real ``turnout up`` plane under real traffic.

What the page shows is compared with what the plane says (``turnout status -o json``) and with
the models' own answers: a good canary's weights advancing step by step with the analysis
verdicts and their numbers, mirror disagreements with both answers, a failing canary rolled
back with its reason, and a click on Promote promoting a manual canary. Screenshots are kept
under ``$TURNOUT_TEST_ARTIFACTS`` (default: the test's tmp folder) and their paths printed.
"""

from __future__ import annotations

import json
import os
import re
import threading
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest

from tests.control.conftest import models  # noqa: F401  (the real iris models, a fixture)
from tests.control.planes import Up, isvc

CHROMIUM = Path("/usr/bin/chromium")
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync"]
pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(not CHROMIUM.exists(), reason="needs Debian's chromium "
                                 "(/usr/bin/chromium; .ci/run installs it)")]
ANALYSIS = {"minRequests": 5, "maxErrorRate": 0.05, "maxP99Ratio": None, "maxHolds": 30}


def predict(models: Path, name: str, x: np.ndarray) -> np.ndarray:  # noqa: F811
    import joblib

    return joblib.load(models / name / "model.joblib").predict(x)


@pytest.fixture(scope="module")
def rows(models: Path) -> np.ndarray:  # noqa: F811
    """Iris rows plus made-up ones on which v1 (a tree) and v2 (logistic) answer differently."""
    from sklearn.datasets import load_iris

    x = load_iris(return_X_y=True)[0]
    made = np.random.default_rng(0).uniform(x.min(axis=0), x.max(axis=0), size=(400, 4))
    differ = made[predict(models, "v1", made) != predict(models, "v2", made)]
    assert len(differ) >= 5
    return np.concatenate([x[::5], differ[:10]])


class Traffic:
    """Requests to ``iris`` from a thread, each with ``x-request-id: row-I``, until stopped."""

    def __init__(self, url: str, rows: np.ndarray) -> None:
        self.url, self.rows = url, rows
        self.done = threading.Event()
        self.sent = 0
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        with httpx.Client(timeout=30) as http:
            while not self.done.is_set():
                i = self.sent % len(self.rows)
                body = {"inputs": [{"name": "x", "shape": [1, 4], "datatype": "FP64",
                                    "data": self.rows[i].tolist()}]}
                try:
                    http.post(f"{self.url}/v2/models/iris/infer", json=body,
                              headers={"x-request-id": f"row-{i}"})
                except httpx.HTTPError:
                    pass  # a replica starting or stopping; the page is what is tested
                self.sent += 1
                self.done.wait(0.03)

    def stop(self) -> None:
        self.done.set()
        self.thread.join(30)


@pytest.fixture(scope="module")
def plane(models: Path, rows: np.ndarray,  # noqa: F811
          tmp_path_factory: pytest.TempPathFactory) -> Iterator[Up]:
    up = Up(tmp_path_factory.mktemp("console-browser"), isvc("iris", f"file://{models}/v1"))
    try:
        up.wait(lambda: up.infer() == 200, what="iris serving")
        yield up
    finally:
        assert up.stop() == 0, (up.folder / "up.log").read_text()[-3000:]


@pytest.fixture
def artifacts(tmp_path: Path) -> Path:
    folder = Path(os.environ.get("TURNOUT_TEST_ARTIFACTS") or tmp_path)
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def test_the_console_shows_rollouts_as_they_run_and_its_promote_button_promotes(
        plane: Up, models: Path, rows: np.ndarray, artifacts: Path) -> None:  # noqa: F811
    from playwright.sync_api import expect, sync_playwright

    admin = json.loads((plane.folder / ".turnout" / "plane.json").read_text())["admin"]
    traffic = Traffic(plane.url, rows)
    try:
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=str(CHROMIUM), args=ARGS)
            try:
                # without a login: 401 and none of the plane's data
                stranger = browser.new_page()
                response = stranger.goto(f"{admin}/console/")
                assert response is not None and response.status == 401
                assert "turnout console" in stranger.content()
                assert "iris" not in stranger.content()
                stranger.close()

                page = browser.new_page(viewport={"width": 1400, "height": 1700})
                page.on("dialog", lambda dialog: dialog.accept())  # Promote asks first
                errors: list[str] = []
                page.on("pageerror", lambda exc: errors.append(str(exc)))
                page.goto(plane.cli("console").strip())
                assert page.url == f"{admin}/console/"
                card = page.locator('[data-testid="service-iris"]')
                expect(card.get_by_test_id("phase")).to_have_text("stable", timeout=15_000)
                expect(card.locator("canvas")).to_have_count(4)  # the four uPlot charts

                good_rollout(plane, models, rows, page, card, expect)
                shot = artifacts / "console-rollouts.png"
                page.screenshot(path=str(shot), full_page=True)
                print(f"console screenshot: {shot}")

                promote_by_click(plane, models, card, expect)
                shot = artifacts / "console-promoted.png"
                page.screenshot(path=str(shot), full_page=True)
                print(f"console screenshot: {shot}")
                assert errors == []
            finally:
                browser.close()
    finally:
        traffic.stop()


def good_rollout(plane: Up, models: Path, rows: np.ndarray, page, card, expect) -> None:  # noqa: F811
    """A good canary with mirrored traffic advances 20% -> 50% -> promoted; then a failing one
    is rolled back; the page shows each step, verdict and reason as the plane recorded them."""
    rollout = {"mirror": {"percent": 100},
               "rollout": {"steps": [20, 50, 100], "interval": "3s", "analysis": ANALYSIS}}
    plane.cli("apply", "-f", plane.write("good.yaml", isvc("iris", f"file://{models}/v2",
                                                           turnout=rollout)))
    canary = plane.status()["canary"]
    expect(card.get_by_test_id("weight-canary")).to_have_text(f"canary {canary} 20%",
                                                              timeout=30_000)
    expect(card.get_by_test_id("phase")).to_have_text("progressing")
    expect(card.get_by_test_id("weight-canary")).to_have_text(f"canary {canary} 50%",
                                                              timeout=60_000)
    expect(card.get_by_test_id("weight-stable")).to_contain_text("50%")
    step = card.locator('[data-testid="timeline"] li[data-kind="step"]').first
    shown = step.locator(".message").text_content()
    assert re.fullmatch(rf"canary {canary} advanced to 50%: analysis passed: \d+ requests, "
                        r"error rate 0\.000, p99 [\d.]+ ms \(stable 0\.000\)", shown), shown
    expect(card.get_by_test_id("phase")).to_have_text("stable", timeout=60_000)
    assert plane.status()["stable"] == canary
    recorded = [e["message"] for e in plane.status()["events"] if e["kind"] == "step"]
    assert shown in recorded  # the page shows the plane's verdict, numbers and all
    promoted = card.locator('[data-testid="timeline"] li[data-kind="promoted"]').first
    expect(promoted).to_contain_text(f"promoted {canary} to all traffic")

    # mirrored copies the canary answered differently, with both answers
    disagreement = page.get_by_test_id("disagreement").first
    expect(disagreement).to_be_visible(timeout=30_000)
    cells = disagreement.locator("td").all_text_contents()
    index = int(cells[2].removeprefix("row-"))
    answers = {int(predict(models, name, rows[index:index + 1])[0]) for name in ("v1", "v2")}
    assert len(answers) == 2 and cells[1] == "iris", cells
    for answer in answers:
        assert f"predict = [{answer}]" in cells[3] + cells[4], cells
    assert "(stable " in cells[3] + cells[4] and "(canary " in cells[3] + cells[4]
    assert cells[5] == "1/1 classes differ"

    # a failing canary: rolled back, and the page says why
    bad = {"rollout": {"steps": [20, 50, 100], "interval": "2s", "analysis": ANALYSIS}}
    plane.cli("apply", "-f", plane.write("bad.yaml", isvc("iris", f"file://{models}/flaky",
                                                          turnout=bad)))
    expect(card.get_by_test_id("phase")).to_have_text("rolled-back", timeout=60_000)
    reason = card.locator('[data-testid="timeline"] li[data-kind="rolled_back"]').first
    text = reason.locator(".message").text_content()
    assert re.search(r": canary error rate [01]\.\d{3} > 0\.05 \(\d+/\d+\)$", text), text
    assert text == [e for e in plane.status()["events"] if e["kind"] == "rolled_back"][-1][
        "message"]


def promote_by_click(plane: Up, models: Path, card, expect) -> None:  # noqa: F811
    """A manual 30% canary, promoted by the Promote button: the plane's state changes."""
    plane.cli("apply", "-f", plane.write("manual.yaml", isvc("iris", f"file://{models}/v1",
                                                             percent=30)))
    canary = plane.status()["canary"]
    expect(card.get_by_test_id("weight-canary")).to_have_text(f"canary {canary} 30%",
                                                              timeout=30_000)
    expect(card.get_by_test_id("pause")).to_be_disabled()  # no rollout to pause
    replicas = card.locator('[data-testid="variant-canary"] [data-testid="replicas"]')
    expect(replicas).to_have_text("1 / 1 (1)", timeout=30_000)  # ready / running (desired)
    assert plane.variant("canary")["replicas"]["ready"] == 1
    card.get_by_test_id("promote").click()
    expect(card.get_by_test_id("phase")).to_have_text("stable", timeout=15_000)
    expect(card.get_by_test_id("weight-stable")).to_have_text(f"stable {canary} 100%")
    expect(card.get_by_test_id("promote")).to_be_disabled()
    status = plane.status()
    assert (status["stable"], status["canary"], status["phase"]) == (canary, None, "stable")
    assert status["events"][-1]["message"].startswith(f"promoted {canary} to all traffic")
