"""The web console's HTTP side: its login, its JSON document and its buttons' calls.

One real ``turnout up`` plane (router and ``turnout serve`` replicas on loopback) for the slow
tests; real HTTP clients. The page itself is driven in a browser by test_console_browser.py.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest

from serving.control.local.console import sessions as console_sessions
from serving.control.local.console.sessions import Sessions
from tests.control.conftest import models  # noqa: F401  (the real iris models, a fixture)
from tests.control.planes import ROW, Up, isvc

slow = pytest.mark.slow
CSRF = re.compile(r'<meta name="turnout-csrf" content="([^"]+)">')


@pytest.fixture(scope="module")
def plane(models: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Up]:  # noqa: F811
    up = Up(tmp_path_factory.mktemp("console"), isvc("iris", f"file://{models}/v1"))
    try:
        up.wait(lambda: up.infer() == 200, what="iris serving")
        yield up
    finally:
        assert up.stop() == 0, (up.folder / "up.log").read_text()[-3000:]


def admin_url(plane: Up) -> str:
    return json.loads((plane.folder / ".turnout" / "plane.json").read_text())["admin"]


def bearer(plane: Up) -> dict[str, str]:
    return {"authorization": f"Bearer {(plane.folder / '.turnout' / 'admin-token').read_text()}"}


@contextmanager
def login(plane: Up) -> Iterator[tuple[httpx.Client, str]]:
    """A client logged in as a browser would be (``turnout console``'s URL), and its CSRF token."""
    url = plane.cli("console").strip()
    with httpx.Client(base_url=admin_url(plane), timeout=30) as client:
        page = client.get(url, follow_redirects=True)
        assert page.status_code == 200, page.text
        yield client, CSRF.search(page.text).group(1)


def apply(plane: Up, *docs: dict) -> None:
    plane.cli("apply", "-f", plane.write("console.yaml", *docs))


# -- login ----------------------------------------------------------------------------------


@slow
def test_without_a_login_every_console_route_is_401_and_shows_no_data(plane: Up) -> None:
    base = admin_url(plane)
    with httpx.Client(base_url=base, timeout=30) as client:
        for path in ("/console/", "/console", "/console/api/state", "/console/static/console.js"):
            response = client.get(path)
            assert response.status_code == 401, path
            assert "iris" not in response.text and "csrf" not in response.text.lower()
        assert client.post("/console/api/services/iris/promote").status_code == 401
        assert client.post("/console/ticket").status_code == 401  # a ticket needs the token
        forged = client.get("/console/api/state", headers={"cookie": "turnout_console=guess"})
        assert forged.status_code == 401
        bogus = client.get("/console/login?ticket=guess")
        assert bogus.status_code == 401 and "set-cookie" not in bogus.headers
        assert client.get("/console/login").status_code == 401
    assert plane.status()["phase"] == "stable"


@slow
def test_a_login_url_is_good_once_and_sets_a_strict_httponly_cookie(plane: Up) -> None:
    url = plane.cli("console").strip()
    assert url.startswith(admin_url(plane) + "/console/login?ticket=")
    token = (plane.folder / ".turnout" / "admin-token").read_text()
    assert token not in url  # the admin token never reaches a browser
    with httpx.Client(timeout=30) as client:
        first = client.get(url)
        assert first.status_code == 303 and first.headers["location"] == "/console/"
        cookie = first.headers["set-cookie"]
        assert "HttpOnly" in cookie and "SameSite=Strict" in cookie and "Path=/console" in cookie
        page = client.get(admin_url(plane) + "/console/")
        assert page.status_code == 200 and CSRF.search(page.text)
        policy = page.headers["content-security-policy"]
        assert "script-src 'self'" in policy and "frame-ancestors 'none'" in policy
        assert page.headers["x-frame-options"] == "DENY"
        js = client.get(admin_url(plane) + "/console/static/uPlot.iife.min.js")
        assert js.status_code == 200 and js.text.startswith("/*! https://github.com/leeoniya/uPlot")
        assert client.get(admin_url(plane) + "/console/static/..%2fsessions.py").status_code == 404
    with httpx.Client(timeout=30) as other:
        again = other.get(url)  # used once already
        assert again.status_code == 401 and "set-cookie" not in again.headers


# -- the document ---------------------------------------------------------------------------


@slow
def test_the_state_document_has_status_and_per_variant_series_of_real_traffic(plane: Up) -> None:
    with login(plane) as (client, _), httpx.Client() as http:
        for _ in range(40):
            assert http.post(f"{plane.url}/v2/models/iris/infer", json=ROW).status_code == 200

        def stable_series() -> dict:
            series = client.get("/console/api/state").json()["series"]["iris"]["stable"]
            return series if series["rps"] and series["rps"][-1] > 0 else {}

        plane.wait(stable_series, timeout=20, what="a stable series point with traffic")
        doc = client.get("/console/api/state").json()
    points = doc["series"]["iris"]["stable"]
    assert len(points["t"]) == len(points["rps"]) == len(points["p50_ms"]) == len(points["p99_ms"])
    assert points["t"] == sorted(points["t"]) and abs(points["t"][-1] - time.time()) < 10
    last = max(i for i, r in enumerate(points["rps"]) if r > 0)
    assert 0 < points["p50_ms"][last] <= points["p99_ms"][last]
    assert points["error_rate"][last] == 0.0
    (svc,) = doc["services"]
    assert (svc["name"], svc["phase"], svc["stable"]) == ("iris", "stable", plane.status()["stable"])
    assert [(v["role"], v["weight"]) for v in svc["variants"]] == [("stable", 100)]
    assert svc["timeline"][0]["kind"] == "created" and svc["rollout"] is None
    assert doc["disagreements"] == {"records": [], "note": None}  # the router answered


# -- the buttons ----------------------------------------------------------------------------


@slow
def test_a_button_call_needs_the_csrf_header_and_the_same_origin(plane: Up, models: Path) -> None:  # noqa: F811
    apply(plane, isvc("iris", f"file://{models}/v2", percent=30))
    canary = plane.status()["canary"]
    origin = admin_url(plane)
    with login(plane) as (client, csrf):
        refused = [client.post("/console/api/services/iris/promote"),
                   client.post("/console/api/services/iris/promote",
                               headers={"x-turnout-csrf": "wrong"}),
                   client.post("/console/api/services/iris/promote",
                               headers={"x-turnout-csrf": csrf, "origin": "http://evil.example"})]
        assert [r.status_code for r in refused] == [403, 403, 403]
        assert all("error" in r.json() for r in refused)
        assert plane.status()["canary"] == canary  # nothing changed
        assert [v["weight"] for v in plane.status()["variants"]] == [70, 30]

        missing = client.post("/console/api/services/nope/promote",
                              headers={"x-turnout-csrf": csrf, "origin": origin})
        assert missing.status_code == 404 and "nope" in missing.json()["error"]
        done = client.post("/console/api/services/iris/promote",
                           headers={"x-turnout-csrf": csrf, "origin": origin})
        assert done.status_code == 200, done.text
        assert done.json()["event"].startswith(f"promoted {canary} to all traffic")
        svc = client.get("/console/api/state").json()["services"][0]
    assert (svc["stable"], svc["canary"], svc["phase"]) == (canary, None, "stable")
    assert [(v["revision"], v["weight"]) for v in svc["variants"]] == [(canary, 100)]
    assert plane.status()["stable"] == canary


@slow
def test_pause_stops_a_rollouts_analysis_and_resume_restarts_it(plane: Up, models: Path) -> None:  # noqa: F811
    rollout = {"rollout": {"steps": [10, 50, 100], "interval": "60s"}}
    apply(plane, isvc("iris", f"file://{models}/v1", turnout=rollout))
    assert plane.status()["phase"] == "progressing"
    base = admin_url(plane)
    with httpx.Client(base_url=base, headers=bearer(plane), timeout=30) as client:
        paused = client.post("/console/api/services/iris/pause").json()["event"]
        assert paused.endswith("paused at 10%: paused from the CLI")
        assert plane.status()["phase"] == "canary"
        assert client.post("/console/api/services/iris/pause").json()["event"] == \
            "iris has no rollout in progress (canary); nothing to do"
        doc = client.get("/console/api/state").json()
    svc = doc["services"][0]
    assert svc["timeline"][-1]["kind"] == "paused"
    assert svc["rollout"]["steps"] == [10, 50, 100] and svc["rollout"]["interval_s"] == 60
    # the CLI drives the same calls
    assert "resumed at 10%" in plane.cli("rollout", "resume", "iris")
    assert plane.status()["phase"] == "progressing"
    assert "rolled back" in plane.cli("rollout", "rollback", "iris")


# -- sessions, without a plane --------------------------------------------------------------


def test_tickets_are_single_use_expire_and_sessions_are_bounded(monkeypatch) -> None:
    sessions = Sessions()
    ticket = sessions.ticket()
    cookie, session = sessions.login(ticket)
    assert sessions.login(ticket) is None
    assert sessions.find(f"a=b; turnout_console={cookie}".encode()) is session
    assert sessions.find(b"turnout_console=" + cookie[:-1].encode()) is None
    assert sessions.find(None) is None

    late = sessions.ticket()
    now = time.monotonic()
    monkeypatch.setattr(console_sessions.time, "monotonic",
                        lambda: now + console_sessions.TICKET_SECONDS + 1)
    assert sessions.login(late) is None
    monkeypatch.undo()

    for _ in range(console_sessions.MAX_SESSIONS + 5):
        sessions.login(sessions.ticket())
    assert len(sessions.sessions) == console_sessions.MAX_SESSIONS
    assert sessions.find(f"turnout_console={cookie}".encode()) is None  # the oldest went first


def test_pause_stops_the_analysis_until_resumed_and_survives_a_reapply() -> None:
    from serving.control.policy import revisions as rev
    from serving.control.policy.observe import Totals
    from serving.control.policy.rollout import step
    from serving.spec import load_texts

    def manifest(uri: str, **turnout: object) -> object:
        text = json.dumps(isvc("iris", uri, turnout=turnout or None))
        return load_texts([(Path("m.yaml"), text)]).services[0]

    rollout = {"steps": [10, 50, 100], "interval": "1s"}
    v2 = manifest("file:///m/v2", rollout=rollout)
    s = rev.apply_manifest(rev.apply_manifest(None, manifest("file:///m/v1"), now=1), v2, now=2)
    assert (s.phase, s.percent) == ("progressing", 10)
    paused = rev.pause(s, now=3, reason="from the console")
    assert (paused.phase, paused.percent, paused.canary) == ("canary", 10, "iris-00002")
    assert paused.events[-1].message == "rollout of iris-00002 paused at 10%: from the console"
    busy = {"canary": Totals(requests=1000), "stable": Totals(requests=9000)}
    assert step(paused, v2.spec.turnout.rollout, **busy, canary_ready=True, now=100) is paused
    assert rev.pause(paused, now=4, reason="again") is paused  # nothing to pause
    assert rev.apply_manifest(paused, v2, now=5).phase == "canary"  # the same manifest: paused
    resumed = rev.resume(paused, now=6, reason="from the console")
    assert (resumed.phase, resumed.step_started, resumed.baseline) == ("progressing", 6, None)
    assert rev.resume(resumed, now=7, reason="again") is resumed
    ticked = step(resumed, v2.spec.turnout.rollout, **busy, canary_ready=True, now=8)
    assert ticked.baseline is not None  # the analysis runs again: its window starts


@pytest.mark.parametrize("path, headers", [
    ("/console/login?ticket=%ff%fe" + "x" * 5000, {}),
    ("/console/login?ticket=&ticket=", {}),
    ("/console/api/state", {"cookie": "turnout_console"}),
    ("/console/api/state", {"cookie": ";;=;turnout_console=;"}),
    ("/console/", {"cookie": b"turnout_console=\xff\xfe"}),
    ("/console/api/state", {"authorization": "Bearer wrong"}),
    ("/console/api/state", {"authorization": "Basic dG9rZW4="}),
])
async def test_hostile_logins_are_401_never_an_error(path: str, headers: dict) -> None:
    from serving.control.local.console import Console

    app = Console(plane=None, admin_token="token")  # type: ignore[arg-type]  # never reached
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1") as client:
        for method in ("GET", "POST"):
            response = await client.request(method, path, headers=headers)
            assert response.status_code in (401, 404), (method, response.text)
            assert "set-cookie" not in response.headers
    assert app.sessions.sessions == {}
