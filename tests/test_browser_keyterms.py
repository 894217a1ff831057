"""The browser page's keyterms field reaches the session (real Chromium, real `dalston serve`)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver
from test_browser import caption_text, open_page, wait_for, words_of

if TYPE_CHECKING:
    from browser_fixtures import DalstonServer

pytestmark = [pytest.mark.slow, pytest.mark.browser]


def test_keyterms_typed_on_the_page_go_with_the_session_and_a_bad_one_is_refused_by_name(
    browser: WebDriver, dalston_server: DalstonServer
) -> None:
    open_page(browser, dalston_server)
    browser.find_element(By.ID, "keyterms").send_keys("x" * 60)  # over session.max_keyterm_chars
    browser.find_element(By.ID, "start").click()
    wait_for(browser, dalston_server, "the refusal to show",
             lambda d: "invalid_request" in d.find_element(By.ID, "error").text)
    assert "keyterms" in browser.find_element(By.ID, "error").text

    open_page(browser, dalston_server)
    browser.find_element(By.ID, "keyterms").send_keys("Dashwood, Norland")
    browser.find_element(By.ID, "start").click()
    wait_for(browser, dalston_server, "captions", lambda d: "dashwood" in words_of(caption_text(d)))
    browser.find_element(By.ID, "stop").click()
    wait_for(browser, dalston_server, "the session to end",
             lambda d: d.find_element(By.ID, "status").get_attribute("data-state") == "ended")
    assert not browser.find_element(By.ID, "error").is_displayed()
