"""`ttspo serve` in a real headless browser (Debian's chromium and its chromedriver,
installed by `.ci/setup tests`; the driver named explicitly, so Selenium downloads
nothing): the page loads, its audio elements load their sources, stored text with a
<script> and an ESC renders inert, and keyboard labelling writes rows SQL reads."""

from __future__ import annotations

import os
import shutil
import time

import pytest

import ttspo
from serve_helpers import HOSTILE, Server, make_serve_store

pytestmark = pytest.mark.slow
DRIVER, BROWSER = "/usr/bin/chromedriver", "/usr/bin/chromium"
TOKEN = "browser-token"


@pytest.fixture(scope="module")
def browser():
    if not (shutil.which(DRIVER) and shutil.which(BROWSER)):
        # CI runs .ci/setup as root, which installs them: there a missing browser is a failure.
        if os.environ.get("CI"):
            pytest.fail("chromium and chromium-driver are missing in CI (.ci/setup tests installs them)")
        pytest.skip("chromium and chromium-driver are not installed (bash .ci/setup tests)")
    os.environ["SE_OFFLINE"] = "true"  # Selenium Manager must not download a driver
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = BROWSER
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                "--mute-audio", "--window-size=1400,1000"):
        options.add_argument(arg)
    driver = webdriver.Chrome(service=Service(executable_path=DRIVER), options=options)
    driver.set_page_load_timeout(60)
    yield driver
    driver.quit()


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    store = make_serve_store(tmp_path_factory.mktemp("browser"))
    server = Server(store, token=TOKEN)
    yield store, server
    server.stop()


def wait_for(driver, script, timeout=30.0):
    deadline = time.monotonic() + timeout
    while True:
        value = driver.execute_script(script)
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for: {script}")
        time.sleep(0.1)


AUDIO_STATE = """return Array.from(document.querySelectorAll(SEL)).map(
    a => [a.readyState, a.error ? a.error.code : null, a.duration]);"""


def test_the_page_loads_its_audio_and_renders_stored_text_inert(browser, served):
    store, server = served
    browser.get(f"{server.url}/?token={TOKEN}")
    wait_for(browser, "return document.body.dataset.ready === '1'")
    assert len(browser.find_elements("css selector", "#rows-table tr.row")) == 20
    script = AUDIO_STATE.replace("SEL", "'#rows audio'")
    states = wait_for(browser, script.replace("return ", "const s = ") +
                      "return s.every(x => x[0] >= 1 || x[1]) ? s : null;")
    assert len(states) == 20 and all(code is None and ready >= 1 for ready, code, _ in states)
    assert all(abs(duration - 0.5) < 0.01 for _, _, duration in states)  # 0.5 s wavs, blob too
    assert browser.execute_script("return window.__pwned") is None
    assert browser.execute_script("return document.querySelectorAll('#rows b, #rows script').length") == 0
    text = browser.execute_script("return document.getElementById('rows').textContent")
    assert HOSTILE.split("\x1b")[0] in text and "\x1b[31m red <b>bold</b>" in text


def test_keyboard_labels_are_rows_sql_reads(browser, served):
    store, server = served
    browser.get(f"{server.url}/?token={TOKEN}&labeler=tess&panel=listen")
    wait_for(browser, "return document.body.dataset.ready === '1'")
    body = browser.find_element("css selector", "body")
    browser.find_element("id", "draw").click()
    for key in ("a", "t", "s"):
        wait_for(browser, "const a = document.getElementById('audio-a'), "
                          "b = document.getElementById('audio-b');"
                          "return !document.getElementById('trial').hidden && "
                          "a.readyState >= 1 && b.readyState >= 1;")
        before = browser.find_element("id", "listen-status").text
        body.send_keys(key)
        wait_for(browser, f"return document.getElementById('listen-status').textContent !== {before!r};")
    rows = ttspo.Store(store.root).sql(
        "SELECT choice, first_id, second_id, pair_id FROM labels WHERE labeler = 'tess' "
        "ORDER BY time, choice")
    assert sorted(rows["choice"].to_list()) == ["a", "skip", "tie"]
    assert rows["pair_id"].null_count() == 0
