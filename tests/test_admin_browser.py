"""The console in a real browser: Debian's chromium, headless, through its chromedriver and
selenium (make test's system-deps installs both). One session: sign in, see the dead
letter a failing handler made, open it, press Replay, watch it run and turn done; an event
whose type is markup is shown as text all along.

With FRAMEIOD_SCREENSHOT=<file.png> set, the page is saved there once the replay is done
(that is how docs/console.png is made).
"""

from __future__ import annotations

import asyncio
import os
import shutil
import tempfile
from pathlib import Path

import pytest
from admin_support import TOKEN, admin_table
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support import expected_conditions
from selenium.webdriver.support.ui import WebDriverWait

from frameiod import App
from frameiod.events import WebhookEvent
from frameiod.testing import config_toml, run_daemon

CHROMIUM = shutil.which("chromium")
CHROMEDRIVER = shutil.which("chromedriver")
HOSTILE = "<script>document.title='owned'</script><img src=x onerror=\"document.title='owned'\">"
# Every flag keeps the browser off the network it must not reach (updates, sync, QUIC).
FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
    "--window-size=1280,1000",
]


def _browser(profile: Path) -> webdriver.Chrome:
    # Never skipped: a machine without them fails here, saying what to install.
    assert CHROMIUM, "install chromium (make system-deps)"
    assert CHROMEDRIVER, "install chromium-driver (make system-deps)"
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in [*FLAGS, f"--user-data-dir={profile}"]:
        options.add_argument(flag)
    return webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=options)


def _failing_app(failing: dict[str, bool]) -> App:
    app = App()

    @app.on_webhook("*", max_attempts=1)
    async def publish(event: WebhookEvent) -> None:
        if failing["now"]:
            raise RuntimeError("the publishing service answered 503")

    return app


def _scenario(url: str, event_id: str, failing: dict[str, bool], profile: Path) -> None:
    """What the operator does, in the browser (blocking: run in a thread)."""
    browser = _browser(profile)
    wait = WebDriverWait(browser, 15)
    try:
        browser.get(url)
        token = wait.until(expected_conditions.visibility_of_element_located((By.ID, "token")))
        token.send_keys(TOKEN)
        browser.find_element(By.CSS_SELECTOR, "#sign-in button[type=submit]").click()

        # The dead letters come first; the markup in a type is text, run by nothing.
        dead_rows = "#dead tbody button.link"
        wait.until(lambda b: len(b.find_elements(By.CSS_SELECTOR, dead_rows)) == 2)
        assert not browser.find_element(By.ID, "sign-in").is_displayed()
        types = [e.text for e in browser.find_elements(By.CSS_SELECTOR, dead_rows)]
        assert HOSTILE in types, types
        assert browser.find_elements(By.CSS_SELECTOR, "main script, main img") == []
        assert browser.title == "frameiod console"
        assert sorted(types) == sorted([HOSTILE, "file.ready"])

        # Open the file.ready dead letter: its error and its body.
        rows = browser.find_elements(By.CSS_SELECTOR, dead_rows)
        [row] = [each for each in rows if each.text == "file.ready"]
        row.click()
        wait.until(expected_conditions.visibility_of_element_located((By.ID, "detail")))
        wait.until(lambda b: "503" in b.find_element(By.ID, "detail-error").text)
        assert event_id in browser.find_element(By.ID, "detail-fields").text
        assert '"file.ready"' in browser.find_element(By.ID, "detail-body").text

        failing["now"] = False  # the service is back: the replay succeeds
        browser.find_element(By.ID, "replay").click()
        wait.until(expected_conditions.alert_is_present()).accept()
        state = (By.CSS_SELECTOR, "#detail-fields dd.state-done")
        wait.until(expected_conditions.visibility_of_element_located(state))
        wait.until(lambda b: len(b.find_elements(By.CSS_SELECTOR, dead_rows)) == 1)
        if shot := os.environ.get("FRAMEIOD_SCREENSHOT"):
            browser.find_element(By.ID, "close").click()
            browser.save_screenshot(shot)
    finally:
        browser.quit()


@pytest.mark.filterwarnings("ignore::ResourceWarning")
async def test_sign_in_open_a_dead_letter_replay_it_and_see_it_done(tmp_path: Path) -> None:
    failing = {"now": True}
    text = config_toml(spool=f'path = "{tmp_path / "frameiod.db"}"', extra=admin_table())
    async with run_daemon({"p": _failing_app(failing)}, config_text=text, directory=tmp_path) as d:
        sent = await d.send("file.ready")
        hostile = await d.send(HOSTILE)
        for each in (sent, hostile):
            await d.wait_for(each.body["id"], settled=True)
        url = f"http://127.0.0.1:{d.daemon.admin_port}/"
        with tempfile.TemporaryDirectory() as profile:
            await asyncio.to_thread(_scenario, url, sent.body["id"], failing, Path(profile))
        [outcome] = await d.wait_for(sent.body["id"], settled=True)
        assert outcome.status == "ok"
