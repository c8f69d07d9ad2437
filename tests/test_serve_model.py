"""`ptgpt serve-model`: the OpenAI-compatible API on 127.0.0.1 (requests and the openai client), and
the chat page driven in the real headless Chromium."""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path

import pytest
import requests
from chat_factory import write_base_run, write_sample_corpus

from training.chat import add_chat_tokens, chat_metadata, load_chat_session, load_chat_tokenizer
from training.checkpoint import load_model, read_checkpoint_config, save_model
from training.serve import ModelServer

HELLO = [{"role": "user", "content": "Olá! Quem escreveu «Os Lusíadas»?"}]


@pytest.fixture(scope="module")
def chat_checkpoint(tmp_path_factory) -> Path:
    """A (untuned) chat checkpoint: a tiny base with the chat rows and the template recorded."""
    root = tmp_path_factory.mktemp("serve")
    corpus = write_sample_corpus(root / "corpus", n_extra=0)
    base = write_base_run(root / "base", corpus)
    meta = read_checkpoint_config(base)
    tok = load_chat_tokenizer(meta["tokenizer_path"])
    model = add_chat_tokens(load_model(base), tok)
    return save_model(
        model, root / "chat", extra={"tokenizer_path": meta["tokenizer_path"], "chat": chat_metadata(tok)}
    )


@pytest.fixture(scope="module")
def server(chat_checkpoint):
    with ModelServer(load_chat_session(chat_checkpoint), "127.0.0.1", 0) as s:
        yield s


def post(server, path: str, body: dict, **kw) -> requests.Response:
    return requests.post(server.url + path, json=body, timeout=60, **kw)


def sse_events(response: requests.Response) -> list:
    events = []
    for line in response.iter_lines(decode_unicode=True):
        if line.startswith("data: "):
            data = line[len("data: ") :]
            events.append(data if data == "[DONE]" else json.loads(data))
    return events


def test_chat_completion_object(server):
    r = post(
        server, "/v1/chat/completions", {"messages": HELLO, "max_tokens": 12, "seed": 3, "temperature": 0.9}
    )
    assert r.status_code == 200 and r.headers["Content-Type"] == "application/json"
    body = r.json()
    assert body["object"] == "chat.completion" and body["id"].startswith("chatcmpl-")
    [choice] = body["choices"]
    assert choice["message"]["role"] == "assistant" and isinstance(choice["message"]["content"], str)
    assert choice["finish_reason"] in ("stop", "length")
    usage = body["usage"]
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]
    assert 1 <= usage["completion_tokens"] <= 12


def test_streamed_chat_equals_the_whole_reply(server):
    body = {"messages": HELLO, "max_tokens": 16, "seed": 5, "temperature": 1.0}
    whole = post(server, "/v1/chat/completions", body).json()["choices"][0]["message"]["content"]
    r = post(server, "/v1/chat/completions", {**body, "stream": True}, stream=True)
    assert r.status_code == 200 and r.headers["Content-Type"].startswith("text/event-stream")
    events = sse_events(r)
    assert events[-1] == "[DONE]"
    chunks = events[:-1]
    assert all(c["object"] == "chat.completion.chunk" for c in chunks)
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    assert chunks[-1]["choices"][0]["finish_reason"] in ("stop", "length")
    pieces = [c["choices"][0]["delta"].get("content", "") for c in chunks]
    assert sum(1 for p in pieces if p) > 1  # many events, not one at the end
    assert "".join(pieces) == whole


def test_text_completion(server):
    r = post(server, "/v1/completions", {"prompt": "Era uma vez", "max_tokens": 6, "seed": 1})
    body = r.json()
    assert r.status_code == 200 and body["object"] == "text_completion"
    assert body["usage"]["completion_tokens"] <= 6 and isinstance(body["choices"][0]["text"], str)
    streamed = sse_events(
        post(
            server,
            "/v1/completions",
            {"prompt": "Era uma vez", "max_tokens": 6, "seed": 1, "stream": True},
            stream=True,
        )
    )
    assert "".join(c["choices"][0]["text"] for c in streamed[:-1]) == body["choices"][0]["text"]


@pytest.mark.parametrize(
    ("path", "body", "status", "param"),
    [
        ("/v1/chat/completions", {"messages": []}, 400, "messages"),
        ("/v1/chat/completions", {"messages": [{"role": "robot", "content": "x"}]}, 400, "messages"),
        ("/v1/chat/completions", {"messages": HELLO, "temperature": "hot"}, 400, "temperature"),
        ("/v1/chat/completions", {"messages": HELLO, "max_tokens": 0}, 400, "max_tokens"),
        ("/v1/chat/completions", {"messages": HELLO, "n": 2}, 400, "n"),
        ("/v1/chat/completions", {"messages": HELLO, "stream": "yes"}, 400, "stream"),
        ("/v1/completions", {"prompt": 3}, 400, "prompt"),
        ("/v1/completions", {"prompt": "palavra " * 400}, 400, "prompt"),
        ("/v1/embeddings", {"input": "x"}, 404, None),
    ],
)
def test_bad_requests_get_4xx_json(server, path, body, status, param):
    r = post(server, path, body)
    assert r.status_code == status
    error = r.json()["error"]
    assert error["param"] == param and error["message"] and error["type"] == "invalid_request_error"


def test_body_that_is_not_json_is_a_400(server):
    r = requests.post(server.url + "/v1/chat/completions", data=b"{not json", timeout=30)
    assert r.status_code == 400 and "not JSON" in r.json()["error"]["message"]


def test_concurrent_requests_each_get_their_own_reply(server):
    bodies = [
        {"messages": [{"role": "user", "content": f"Pergunta {i}"}], "max_tokens": 10, "seed": i}
        for i in range(6)
    ]
    alone = [
        post(server, "/v1/chat/completions", b).json()["choices"][0]["message"]["content"] for b in bodies
    ]
    together: list = [None] * len(bodies)

    def ask(i: int) -> None:
        stream = i % 2 == 0
        r = post(server, "/v1/chat/completions", {**bodies[i], "stream": stream}, stream=stream)
        if stream:
            together[i] = "".join(c["choices"][0]["delta"].get("content", "") for c in sse_events(r)[:-1])
        else:
            together[i] = r.json()["choices"][0]["message"]["content"]

    threads = [threading.Thread(target=ask, args=(i,)) for i in range(len(bodies))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert together == alone


def test_openai_client(server):
    openai = pytest.importorskip("openai")
    client = openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0)
    [model] = client.models.list().data
    reply = client.chat.completions.create(model=model.id, messages=HELLO, max_tokens=8, seed=2)
    text = reply.choices[0].message.content
    stream = client.chat.completions.create(model=model.id, messages=HELLO, max_tokens=8, seed=2, stream=True)
    assert "".join(chunk.choices[0].delta.content or "" for chunk in stream) == text
    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(model=model.id, messages=[{"role": "robot", "content": "x"}])


# -----------------------------------------------------------------------------------------------
# The page, in the real browser

CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"


@pytest.mark.browser
def test_chat_page_streams_a_reply_in_chromium(server):
    if not (os.access(CHROMIUM, os.X_OK) and os.access(CHROMEDRIVER, os.X_OK)):
        if os.environ.get("CI"):
            raise RuntimeError(f"CI must run the browser tests: {CHROMIUM} / {CHROMEDRIVER} missing")
        pytest.skip("Debian chromium / chromium-driver not installed")
    import tempfile

    from selenium import webdriver
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    from scraping.browser import CHROMIUM_FLAGS

    opts = Options()
    for flag in CHROMIUM_FLAGS:
        opts.add_argument(flag)
    opts.add_argument(f"--user-data-dir={tempfile.mkdtemp(prefix='ptgpt-chat-page-')}")
    opts.add_argument("--host-resolver-rules=MAP * ~NOTFOUND , EXCLUDE 127.0.0.1, EXCLUDE localhost")
    opts.binary_location = CHROMIUM
    driver = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=opts)
    try:
        driver.get(server.url + "/")
        # Record every length the reply bubble's text takes while it streams.
        driver.execute_script(
            """window.lengths = [];
            new MutationObserver(() => {
              const out = document.querySelector('.msg.assistant:last-of-type');
              if (out) window.lengths.push(out.textContent.length);
            }).observe(document.getElementById('messages'),
                       {childList: true, subtree: true, characterData: true});"""
        )
        driver.find_element(By.ID, "max_tokens").clear()
        driver.find_element(By.ID, "max_tokens").send_keys("24")
        driver.find_element(By.ID, "input").send_keys("Olá, como estás?")
        driver.find_element(By.ID, "send").click()
        wait = WebDriverWait(driver, 60)
        wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, ".msg.assistant[data-done='true']"))
        assert driver.find_element(By.CSS_SELECTOR, ".msg.user").text == "Olá, como estás?"
        reply = driver.find_element(By.CSS_SELECTOR, ".msg.assistant").text
        assert reply.strip() and not driver.find_elements(By.CSS_SELECTOR, ".msg.error")
        lengths = [n for n in driver.execute_script("return window.lengths") if n > 0]
        assert len(set(lengths)) > 1  # the text grew piece by piece: it streamed
        assert "ptgpt" in driver.title
    finally:
        driver.quit()
