"""`ptgpt serve-model`: the OpenAI-compatible API on 127.0.0.1 (requests and the openai client).
Hostile requests: test_serving.py; the chat page in Chromium: test_serving_page.py."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import pytest
import requests
from chat_factory import write_chat_checkpoint

from serving.server import ModelServer, ServeConfig
from training.chat import load_chat_session

HELLO = [{"role": "user", "content": "Olá! Quem escreveu «Os Lusíadas»?"}]


@pytest.fixture(scope="module")
def chat_checkpoint(tmp_path_factory) -> Path:
    """A (untuned) chat checkpoint: a tiny base with the chat rows and the template recorded."""
    return write_chat_checkpoint(tmp_path_factory.mktemp("serve"))


@pytest.fixture(scope="module")
def server(chat_checkpoint):
    with ModelServer(load_chat_session(chat_checkpoint), ServeConfig(port=0)) as s:
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
