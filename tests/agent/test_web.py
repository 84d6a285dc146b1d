"""The operator's page in a real headless browser (issue 17): it loads, a part shown through
the agent appears with its verdict within a second, and screenshots are saved (for the README:
ADGAN_SCREENSHOT_DIR=docs)."""
from __future__ import annotations

import os
import shutil
import time
import urllib.request
from pathlib import Path

import pytest

from agent.mqtt.events import reason
from tests.agent.conftest import AgentProcess, Subscriber, agent_config, free_port, poll, scrape
from tests.agent.mqtt.test_faults import send
from tests.agent.test_service import mixed_folder

webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed (the test extra)")
CHROMIUM, DRIVER = shutil.which("chromium"), shutil.which("chromedriver")


@pytest.fixture
def browser():
    if not (CHROMIUM and DRIVER):
        pytest.skip("chromium and chromium-driver are not installed (make install installs them as root)")
    from selenium.webdriver.chrome.service import Service
    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for a in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--window-size=1280,900"):
        opts.add_argument(a)
    d = webdriver.Chrome(service=Service(DRIVER), options=opts)
    d.set_page_load_timeout(20)
    yield d
    d.quit()


def events(sub):
    return sub.documents("adgan/st1/events")


def test_the_page_shows_each_part_with_its_verdict_within_a_second(broker, calibrated, synth_data, tmp_path, browser):
    bundle, thresholds = calibrated
    mixed_folder(synth_data, tmp_path / "samples")
    port = free_port()
    cfg = agent_config(tmp_path, broker.port, bundle, thresholds,
                       f'type = "folder"\npath = "{tmp_path / "samples"}"\nfps = 0', trigger="mqtt",
                       extra=f"[web]\nenabled = true\nport = {port}\n")
    sub = Subscriber(broker.port, "adgan/st1/#")
    assert sub.subscribed.wait(10)
    agent = AgentProcess(cfg, tmp_path / "agent.log")
    shots = Path(os.environ.get("ADGAN_SCREENSHOT_DIR", tmp_path))
    try:
        url = f"http://127.0.0.1:{port}/"
        scrape(url + "state.json", timeout=60)  # serving once the models are loaded
        browser.get(url)
        assert poll(lambda: browser.find_element("id", "link").text == "live", 10), browser.page_source[:2000]
        assert browser.find_element("id", "station").text == "st1"
        assert poll(lambda: "camera: running" in browser.find_element("id", "health").text, 10)
        for i in range(3):
            for _ in range(10):  # the first request may beat the agent's subscription: ask again
                send(broker.port, "adgan/st1/trigger/set", b'{"part_id": "LOT-9"}' if i == 2 else b"")
                if poll(lambda: len(events(sub)) >= i + 1, 3.0):
                    break
            assert len(events(sub)) == i + 1, agent.output()
            seen = time.monotonic()  # the event reached a subscriber: the page must follow within a second
            e = events(sub)[-1]
            verdict = browser.find_element("id", "verdict")
            assert poll(lambda: verdict.get_attribute("data-seq") == str(e["seq"]), 1.0), \
                (e["seq"], verdict.get_attribute("data-seq"))
            assert time.monotonic() - seen <= 1.0
            assert verdict.text == {"ok": "OK", "anomaly": "NG"}[e["verdict"]]
            assert verdict.get_attribute("class") == e["verdict"]
            assert abs(float(browser.find_element("id", "score").text) - e["score"]) <= 1e-3 * abs(e["score"])
            assert browser.find_element("id", "reason").text == reason(e)
        assert poll(lambda: browser.execute_script(
            "return ['rgb','depth','map'].every(k => document.getElementById('img-' + k).naturalWidth === 128)"), 5)
        rows = browser.find_elements("css selector", "#history tr")
        assert len(rows) == 3 and rows[0].text.startswith(f'{events(sub)[-1]["seq"]} LOT-9 ')
        assert browser.find_element("id", "part").text == "LOT-9" and rows[1].text.split()[1] == "-"
        assert "OK" in browser.find_element("id", "rates").text
        assert browser.find_element("id", "images-of").text == "images of this part"
        shots.mkdir(parents=True, exist_ok=True)
        browser.save_screenshot(str(shots / "operator-page.png"))
        assert (shots / "operator-page.png").stat().st_size > 10_000
        # a part that cannot be inspected: the page says why, as the event does, and whose images it still shows
        send(broker.port, "adgan/st1/trigger/set", b'{"part_id": "no spaces"}')
        assert poll(lambda: len(events(sub)) == 4, 10), agent.output()
        err = events(sub)[-1]
        assert err["verdict"] == "error" and err["error"].startswith("a part not inspected")
        assert poll(lambda: browser.find_element("id", "reason").text == err["error"], 1.0)
        assert browser.find_element("id", "images-of").text == f"images of event {err['seq'] - 1}, the last part scored"
        assert browser.find_element("id", "score-bar").value_of_css_property("width") == "0px"
        cell = browser.find_element("css selector", "#history tr td:last-child")
        assert cell.get_attribute("title") == err["error"] and cell.text == err["error"][:59] + "\u2026"
        with urllib.request.urlopen(url + "part/map.png", timeout=5) as r:
            assert r.headers["Content-Type"] == "image/png"
        assert agent.terminate() == 0
    finally:
        agent.stop()
        sub.close()


def test_a_taken_port_is_reported_not_raised(taken_port):
    from types import SimpleNamespace

    from agent.web.page import OperatorPage
    page = OperatorPage(SimpleNamespace(enabled=True, host="127.0.0.1", port=taken_port, history=5),
                        lambda: {}, lambda: True)
    page.start()
    assert page.state["state"] == "error" and "cannot serve" in page.state["error"]
    page.event({"verdict": "ok", "seq": 1})  # events still arrive: nothing breaks
    page.close()


@pytest.mark.parametrize("kind", ["page", "metrics"])
def test_a_port_taken_at_start_is_tried_again_and_served_once_it_is_free(kind, monkeypatch, caplog):
    """A port another process held when the agent started (an old instance still stopping, a
    service started before it) kept the operator's page, or the metrics, down until the agent's
    next restart. Now tried again (every 30 s; here 0.2 s) and served once free, said."""
    import logging
    import socket
    from types import SimpleNamespace

    from agent.metrics import Metrics
    from agent.web import bounded
    from agent.web.page import OperatorPage
    monkeypatch.setattr(bounded, "RETRY_S", 0.2)
    holder = socket.socket()
    holder.bind(("127.0.0.1", 0))
    holder.listen()
    port = holder.getsockname()[1]
    settings = SimpleNamespace(enabled=True, host="127.0.0.1", port=port, history=5)
    server = OperatorPage(settings, lambda: {}, lambda: True) if kind == "page" else Metrics(settings, dict, bool)
    with caplog.at_level(logging.INFO):
        server.start()
        try:
            assert server.state["state"] == "error" and "tried again every" in server.state["error"]
            time.sleep(0.5)
            assert server.state["state"] == "error"  # still held: still down, and said once
            holder.close()
            assert poll(lambda: server.state["state"] == "serving", 10), server.state
            with socket.create_connection(("127.0.0.1", port), timeout=5):
                pass  # it listens (the stand-in status has no content to serve)
        finally:
            server.close()
    said = [r.getMessage() for r in caplog.records]
    assert sum("cannot serve" in m for m in said) == 1 and any("serving now" in m for m in said), said


def test_a_server_bound_as_the_agent_stops_is_closed_not_left_listening(monkeypatch):
    """keep_trying: the agent stops while a retry binds; the server it bound is closed again."""
    import threading

    from agent.web import bounded
    monkeypatch.setattr(bounded, "RETRY_S", 0.05)
    stop, closed = threading.Event(), threading.Event()

    def start() -> None:
        stop.set()  # the agent stops while this try binds

    bounded.keep_trying("test server", start, stop, closed.set)
    assert closed.wait(5)
