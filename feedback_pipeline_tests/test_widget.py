"""The feedback widget in a real headless Chromium (Debian's chromium + chromedriver, driven by selenium).

A "chat app" page is served by a separate http.server on another port, so the widget's POST to the capture
service is cross-origin with a CORS preflight, and the service only knows that origin from FEEDBACK_CORS_ORIGINS.
Keys are bound to browser origins (sql/006_api_key_origins.sql). ``make test`` installs chromium when missing.
"""

from __future__ import annotations

import functools
import html
import http.client
import os
import threading
import uuid
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import sqlalchemy as sa

from feedback_pipeline.service.keys import create_key, list_keys, parse_origins
from feedback_pipeline.store.repository import FEEDBACK, FeedbackStore
from feedback_pipeline_tests.conftest import feedback
from feedback_pipeline_tests.test_service import _start, _stop, call

CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"
WAIT_S = 15


class _QuietHandler(SimpleHTTPRequestHandler):
    def log_message(self, *args) -> None:
        pass


@pytest.fixture(scope="module")
def chat_app(tmp_path_factory):
    """The embedding site: static pages written per test into a folder, served on their own port."""
    root = tmp_path_factory.mktemp("chat_app")
    server = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_QuietHandler, directory=str(root)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield root, f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def _api(url: str, tmp_path, chat_origin: str):
    store = FeedbackStore(url)
    store.migrate()
    proc, base = _start(url, tmp_path, env={"FEEDBACK_CORS_ORIGINS": chat_origin})
    return store, proc, base


@pytest.fixture(scope="module")
def api(chat_app, tmp_path_factory):
    """The capture service on a SQLite file, allowing CORS from the chat app's origin only."""
    tmp = tmp_path_factory.mktemp("api")
    store, proc, base = _api(f"sqlite:///{tmp / 'feedback.db'}", tmp, chat_app[1])
    try:
        yield store, base
    finally:
        _stop(proc)
        store.dispose()


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    if not (os.access(CHROMIUM, os.X_OK) and os.access(CHROMEDRIVER, os.X_OK)):
        pytest.fail(f"{CHROMIUM} and {CHROMEDRIVER} are needed: apt-get install -y chromium chromium-driver "
                    "(make test does this)")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service as DriverService

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--disable-quic", "--window-size=900,1000",
                 f"--user-data-dir={tmp_path_factory.mktemp('chromium-profile')}"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=DriverService(executable_path=CHROMEDRIVER), options=options)
    try:
        yield driver
    finally:
        driver.quit()


def _host_page(chat_app, api_base: str, key: str, variant: str, session_id: str) -> str:
    """Write a chat page embedding the widget with a script tag; return its path on the chat app."""
    root, _ = chat_app
    name = f"chat-{session_id}.html"
    attr = functools.partial(html.escape, quote=True)
    (root / name).write_text(f"""<!doctype html><html lang="en"><head><meta charset="utf-8"><title>chat</title></head>
<body><main><p>{attr(QUERY)}</p><p>{attr(RESPONSE)}</p>
<div data-feedback-widget data-query="{attr(QUERY)}" data-response="{attr(RESPONSE)}" data-model-name="chat-small"
     data-model-version="2026-11" data-session-id="{attr(session_id)}"></div></main>
<script src="{api_base}/widget.js" data-api-key="{attr(key)}" data-variant="{variant}"></script>
</body></html>""", encoding="utf-8")
    return "/" + name


QUERY = "Where do I change my billing address?"
RESPONSE = "Go to Account, then Billing, then Edit address."


def _rows(store: FeedbackStore, session_id: str) -> list[dict]:
    with store.engine.connect() as conn:
        return [dict(r._mapping) for r in conn.execute(sa.select(FEEDBACK).where(FEEDBACK.c.session_id == session_id))]


def _status(driver, text: str, role: str = "status"):
    from selenium.webdriver.support.ui import WebDriverWait

    def seen(d):
        node = d.find_element("css selector", ".fbw-status")
        return node if text in node.text and node.get_attribute("role") == role else False
    return WebDriverWait(driver, WAIT_S).until(seen, f"no {role} saying {text!r}")


def _open(driver, url: str) -> None:
    from selenium.webdriver.support.ui import WebDriverWait

    driver.get(url)
    WebDriverWait(driver, WAIT_S).until(lambda d: d.find_elements("css selector", ".fbw"), "widget not mounted")


def _session() -> str:
    return f"s-{uuid.uuid4().hex[:10]}"


def _preflight(base: str, origin: str) -> http.client.HTTPResponse:
    parts = urlsplit(base)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=10)
    conn.request("OPTIONS", "/v1/feedback", headers={
        "Origin": origin, "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "authorization,content-type,idempotency-key"})
    response = conn.getresponse()
    response.read()
    conn.close()
    return response


def test_preflight_answered_for_the_allowed_origin_only(api, chat_app):
    _, base = api
    allowed = _preflight(base, chat_app[1])
    assert allowed.status == 200
    assert allowed.getheader("Access-Control-Allow-Origin") == chat_app[1]
    assert "POST" in allowed.getheader("Access-Control-Allow-Methods")
    assert "idempotency-key" in allowed.getheader("Access-Control-Allow-Headers").lower()
    other = _preflight(base, "http://evil.example")
    assert other.status != 200 and other.getheader("Access-Control-Allow-Origin") is None


def test_origin_bound_key_needs_its_origin(api, chat_app):
    store, base = api
    _, bound = create_key(store, "bound", "write", origins=[chat_app[1] + "/", "https://Chat.Example"])
    _, free = create_key(store, "server", "write")
    url = base + "/v1/feedback"
    status, body = call("POST", url, feedback(), key=bound)
    assert status == 403 and body["errors"][0]["field"] == "Origin"
    assert call("POST", url, feedback(), key=bound, headers={"Origin": "https://evil.example"})[0] == 403
    assert call("POST", url, feedback(), key=bound, headers={"Origin": chat_app[1]})[0] == 201
    assert call("POST", url, feedback(), key=bound, headers={"Origin": "https://chat.example"})[0] == 201
    assert call("POST", url, feedback(), key=free)[0] == 201  # an unbound key: any caller
    assert call("POST", url, feedback(), key=free, headers={"Origin": "https://evil.example"})[0] == 201
    with pytest.raises(ValueError, match="scheme://host"):
        parse_origins(["chat.example"])
    with pytest.raises(ValueError, match="scheme://host"):
        parse_origins("https://chat.example/app")


def test_keys_cli_create_with_origins(tmp_path, monkeypatch, capsys):
    from feedback_pipeline.cli import main

    monkeypatch.setenv("FEEDBACK_DB_URL", f"sqlite:///{tmp_path / 'keys.db'}")
    monkeypatch.setenv("FEEDBACK_DATA_DIR", str(tmp_path))
    origins = ["--origin", "https://chat.example", "--origin", "http://localhost:3000/"]
    assert main(["keys", "create", "widget", *origins]) == 0
    assert capsys.readouterr().out.strip().startswith("fbk_")
    assert main(["keys", "create", "plain"]) == 0
    assert main(["keys", "create", "bad", "--origin", "chat.example"]) == 1
    assert "scheme://host" in capsys.readouterr().err
    store = FeedbackStore(f"sqlite:///{tmp_path / 'keys.db'}")
    try:
        assert {k.name: k.origins for k in list_keys(store)} == {
            "widget": ("http://localhost:3000", "https://chat.example"), "plain": None}
    finally:
        store.dispose()


def test_full_widget_cross_origin_stores_one_row(api, chat_app, browser):
    store, base = api
    _, key = create_key(store, "chat-app", "write", origins=[chat_app[1]])
    session = _session()
    _open(browser, chat_app[1] + _host_page(chat_app, base, key, "full", session))
    assert browser.execute_script("return location.origin") == chat_app[1] != base  # really cross-origin

    down = browser.find_element("css selector", ".fbw-thumb[data-rating=down]")
    down.click()
    assert down.get_attribute("aria-pressed") == "true"
    browser.find_element("css selector", "textarea.fbw-comment").send_keys("The menu is called Payments now.")
    submit = browser.find_element("css selector", ".fbw-submit")
    submit.click()
    _status(browser, "Thanks")
    submit.click()  # a second click on the same answer and rating: same Idempotency-Key, no second row
    _status(browser, "Thanks")

    rows = _rows(store, session)
    assert len(rows) == 1
    row = rows[0]
    assert (row["rating"], row["rating_thumb"], row["rating_scale"]) == (-1.0, -1, "thumbs")
    assert (row["comment"], row["query"], row["response"]) == ("The menu is called Payments now.", QUERY, RESPONSE)
    assert (row["model_name"], row["model_version"], row["source"]) == ("chat-small", "2026-11", "api")
    assert row["metadata"]["widget_variant"] == "full"


def test_key_bound_to_another_origin_shows_an_error_and_stores_nothing(api, chat_app, browser):
    store, base = api
    _, key = create_key(store, "other-site", "write", origins=["https://other-chat.example"])
    session = _session()
    _open(browser, chat_app[1] + _host_page(chat_app, base, key, "thumbs", session))
    browser.find_element("css selector", ".fbw-thumb[data-rating=up]").click()
    error = _status(browser, "could not be sent", role="alert")
    assert "origins" in error.text and error.is_displayed()
    assert _rows(store, session) == []


def test_page_outside_the_cors_origins_cannot_post(api, chat_app, browser):
    store, base = api
    _, key = create_key(store, "any-caller", "write")  # unbound key: CORS alone keeps other sites out
    session = _session()
    other_origin = chat_app[1].replace("127.0.0.1", "localhost")
    _open(browser, other_origin + _host_page(chat_app, base, key, "thumbs", session))
    browser.find_element("css selector", ".fbw-thumb[data-rating=down]").click()
    _status(browser, "CORS", role="alert")
    assert _rows(store, session) == []


def _focused(driver):
    return driver.switch_to.active_element


def _keys(driver, *keys) -> None:
    from selenium.webdriver.common.action_chains import ActionChains

    ActionChains(driver).send_keys(*keys).perform()


def test_stars_and_full_widgets_by_keyboard_only(api, chat_app, browser):
    from selenium.webdriver.common.keys import Keys

    store, base = api
    _, key = create_key(store, "chat-app-kb", "write", origins=[chat_app[1]])

    session = _session()
    _open(browser, chat_app[1] + _host_page(chat_app, base, key, "stars", session))
    _keys(browser, Keys.TAB)  # the radiogroup is one tab stop (roving tabindex)
    assert _focused(browser).get_attribute("data-stars") == "1"
    assert _focused(browser).value_of_css_property("outline-style") == "solid"  # visible focus
    _keys(browser, Keys.ARROW_RIGHT, Keys.ARROW_RIGHT, Keys.ARROW_RIGHT)
    assert _focused(browser).get_attribute("data-stars") == "4"
    assert _focused(browser).get_attribute("aria-checked") == "true"
    assert _rows(store, session) == []  # arrows only choose
    _keys(browser, Keys.ENTER)
    _status(browser, "Thanks")
    _keys(browser, Keys.SPACE)  # the same rating again: still one row
    _status(browser, "Thanks")
    rows = _rows(store, session)
    assert [(r["rating_stars"], r["rating"], r["rating_scale"]) for r in rows] == [(4, 0.5, "stars")]

    session = _session()
    _open(browser, chat_app[1] + _host_page(chat_app, base, key, "full", session))
    _keys(browser, Keys.TAB, Keys.TAB)
    assert _focused(browser).get_attribute("aria-label").startswith("Bad answer")
    _keys(browser, Keys.SPACE)
    assert _focused(browser).get_attribute("aria-pressed") == "true"
    _keys(browser, Keys.TAB, Keys.ARROW_RIGHT)
    assert _focused(browser).get_attribute("data-stars") == "2"
    _keys(browser, Keys.TAB)
    textarea = _focused(browser)
    assert textarea.tag_name == "textarea"
    label = browser.find_element("css selector", f"label[for='{textarea.get_attribute('id')}']")
    assert label.text
    _keys(browser, "Too vague.", Keys.TAB)
    assert _focused(browser).text == "Send feedback"
    _keys(browser, Keys.ENTER)
    _status(browser, "Thanks")
    rows = _rows(store, session)
    assert len(rows) == 1
    assert (rows[0]["rating_stars"], rows[0]["comment"], rows[0]["metadata"]["thumb"]) == (2, "Too vague.", "down")
    for button in browser.find_elements("css selector", ".fbw button"):
        assert button.get_attribute("aria-label") or button.text


def test_full_widget_on_postgresql(chat_app, browser, postgres_url, tmp_path):
    store, proc, base = _api(postgres_url, tmp_path, chat_app[1])
    try:
        _, key = create_key(store, "chat-app", "write", origins=[chat_app[1]])
        session = _session()
        _open(browser, chat_app[1] + _host_page(chat_app, base, key, "full", session))
        browser.find_element("css selector", ".fbw-thumb[data-rating=down]").click()
        browser.find_element("css selector", "textarea.fbw-comment").send_keys("Wrong menu.")
        browser.find_element("css selector", ".fbw-submit").click()
        _status(browser, "Thanks")
        rows = _rows(store, session)
        assert [(r["rating"], r["comment"], r["query"], r["model_name"]) for r in rows] == [
            (-1.0, "Wrong menu.", QUERY, "chat-small")]
    finally:
        _stop(proc)
        store.dispose()


def test_demo_page_screenshot(api, browser, tmp_path):
    store, base = api
    _, key = create_key(store, "demo", "write")
    browser.get(f"{base}/demo?key={key}")
    from selenium.webdriver.support.ui import WebDriverWait

    WebDriverWait(browser, WAIT_S).until(lambda d: len(d.find_elements("css selector", ".fbw")) == 3)
    assert "key=" not in browser.current_url  # the key is dropped from the address bar
    browser.find_element("css selector", ".fbw-thumbs .fbw-thumb[data-rating=up]").click()
    WebDriverWait(browser, WAIT_S).until(
        lambda d: "Thanks" in d.find_element("css selector", ".fbw-thumbs .fbw-status").text)
    browser.find_element("css selector", ".fbw-full .fbw-thumb[data-rating=down]").click()
    browser.find_element("css selector", ".fbw-full .fbw-star[data-stars='3']").click()
    browser.find_element("css selector", ".fbw-full textarea").send_keys("Which format is the export?")
    height, chrome = browser.execute_script(
        "return [document.documentElement.scrollHeight, window.outerHeight - window.innerHeight]")
    browser.set_window_size(900, height + chrome)  # the whole page, no scrollbar
    artifacts = Path(os.environ.get("FEEDBACK_TEST_ARTIFACTS") or tmp_path)
    artifacts.mkdir(parents=True, exist_ok=True)
    shot = artifacts / "widget_demo.png"
    assert browser.save_screenshot(str(shot)) and shot.stat().st_size > 10_000
    browser.set_window_size(900, 1000)
    assert len(store.read_frame().query("model_name == 'demo-chat'")) == 1
