"""The chat page in the real headless Chromium, against a 128-token model like the demo's: with the
page's own defaults the first message gets a reply (the limits come from /v1/models), the labels
are Portuguese, the model is described, and an example prompt sends itself."""

from __future__ import annotations

import os
import tempfile

import pytest
from chat_factory import write_chat_checkpoint

from serving.server import ModelServer, ServeConfig, model_card
from training.chat import load_chat_session

CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"
pytestmark = pytest.mark.browser


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    checkpoint = write_chat_checkpoint(tmp_path_factory.mktemp("page"), max_seq_len=128)
    session = load_chat_session(checkpoint)
    with ModelServer(session, ServeConfig(port=0), model_card(checkpoint, session)) as s:
        yield s


@pytest.fixture()
def driver():
    if not (os.access(CHROMIUM, os.X_OK) and os.access(CHROMEDRIVER, os.X_OK)):
        if os.environ.get("CI"):
            raise RuntimeError(f"CI must run the browser tests: {CHROMIUM} / {CHROMEDRIVER} missing")
        pytest.skip("Debian chromium / chromium-driver not installed")
    from selenium import webdriver
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service

    from scraping.browser import CHROMIUM_FLAGS

    opts = Options()
    for flag in CHROMIUM_FLAGS:
        opts.add_argument(flag)
    opts.add_argument(f"--user-data-dir={tempfile.mkdtemp(prefix='ptgpt-chat-page-')}")
    opts.add_argument("--host-resolver-rules=MAP * ~NOTFOUND , EXCLUDE 127.0.0.1, EXCLUDE localhost")
    opts.binary_location = CHROMIUM
    d = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=opts)
    yield d
    d.quit()


def wait_for_reply(driver, n: int) -> str:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    WebDriverWait(driver, 60).until(
        lambda d: len(d.find_elements(By.CSS_SELECTOR, ".msg.assistant[data-done='true']")) >= n
    )
    return driver.find_elements(By.CSS_SELECTOR, ".msg.assistant")[n - 1].text


def test_first_message_with_the_pages_defaults_gets_a_streamed_reply(server, driver):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    driver.get(server.url + "/")
    about = driver.find_element(By.ID, "about")
    WebDriverWait(driver, 30).until(lambda d: "contexto de 128 tokens" in about.text)
    assert "parâmetros" in about.text and "Modelo chat" in about.text
    limit = driver.find_element(By.ID, "max_tokens")
    assert 1 <= int(limit.get_attribute("value")) <= 64 and limit.get_attribute("max") == "128"
    # Record every length the reply bubble's text takes while it streams.
    driver.execute_script(
        """window.lengths = [];
        new MutationObserver(() => {
          const out = document.querySelector('.msg.assistant:last-of-type');
          if (out) window.lengths.push(out.textContent.length);
        }).observe(document.getElementById('messages'),
                   {childList: true, subtree: true, characterData: true});"""
    )
    driver.find_element(By.ID, "input").send_keys("Olá, como estás?")
    driver.find_element(By.ID, "send").click()
    reply = wait_for_reply(driver, 1)
    assert driver.find_element(By.CSS_SELECTOR, ".msg.user").text == "Olá, como estás?"
    assert reply.strip() and not driver.find_elements(By.CSS_SELECTOR, ".msg.error")
    lengths = [n for n in driver.execute_script("return window.lengths") if n > 0]
    assert len(set(lengths)) > 1  # the text grew piece by piece: it streamed
    # A second turn, the whole history sent again, still fits (the server drops old turns).
    driver.find_element(By.ID, "input").send_keys("E depois?")
    driver.find_element(By.ID, "send").click()
    assert wait_for_reply(driver, 2).strip() and not driver.find_elements(By.CSS_SELECTOR, ".msg.error")


def test_the_page_speaks_portuguese_and_offers_examples(server, driver):
    from selenium.webdriver.common.by import By

    driver.get(server.url + "/")
    assert "conversa" in driver.title
    labels = " ".join(e.text for e in driver.find_elements(By.CSS_SELECTOR, "#settings label"))
    for word in ("Temperatura", "resposta", "tokens"):
        assert word in labels
    for english in ("temperature", "max tokens", "Send", "Reset"):
        assert english not in driver.find_element(By.TAG_NAME, "body").text
    example = driver.find_elements(By.CSS_SELECTOR, "#examples button")[0]
    text = example.text
    example.click()
    wait_for_reply(driver, 1)
    assert driver.find_element(By.CSS_SELECTOR, ".msg.user").text == text
    assert not driver.find_elements(By.CSS_SELECTOR, ".msg.error")


def test_a_server_with_an_api_key_asks_for_it(server, driver):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    session = server.app.state.worker.session
    with ModelServer(session, ServeConfig(port=0, api_key="chave-secreta")) as locked:
        driver.get(locked.url + "/")
        box = driver.find_element(By.ID, "key-box")
        WebDriverWait(driver, 30).until(lambda d: box.is_displayed())
        driver.find_element(By.ID, "api-key").send_keys("chave-secreta")
        driver.find_element(By.ID, "key-save").click()
        WebDriverWait(driver, 30).until(
            lambda d: "contexto de 128 tokens" in d.find_element(By.ID, "about").text
        )
        assert not box.is_displayed()
        driver.find_element(By.ID, "input").send_keys("Olá")
        driver.find_element(By.ID, "send").click()
        assert wait_for_reply(driver, 1).strip() and not driver.find_elements(By.CSS_SELECTOR, ".msg.error")
