"""The server as a hostile client meets it, over real HTTP on 127.0.0.1 (uvicorn on an ephemeral port):
non-finite numbers, bad text, huge lists and bodies, slow and half-sent requests, a client that
leaves mid-reply, a full queue, the API key, a port in use, and what /health and /v1/models say."""

from __future__ import annotations

import json
import logging
import os
import select
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import requests
from chat_factory import write_chat_checkpoint

from serving.server import ModelServer, ServeConfig, exposure_warning
from training.chat import encode_chat, load_chat_session

ROOT = Path(__file__).resolve().parents[1]
HELLO = [{"role": "user", "content": "Olá! Quem escreveu «Os Lusíadas»?"}]
CHAT = "/v1/chat/completions"


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    # 640 positions: room for a reply long enough that stopping it early is visible.
    return write_chat_checkpoint(tmp_path_factory.mktemp("serving"), max_seq_len=640)


@pytest.fixture(scope="module")
def session(checkpoint):
    return load_chat_session(checkpoint)


@pytest.fixture(scope="module")
def server(session):
    config = ServeConfig(port=0, body_timeout=1.0, header_timeout=1.0, keep_alive=1.0)
    with ModelServer(session, config, card={"parameters": 1}) as s:
        yield s


def address(server) -> tuple[str, int]:
    return server.sock.getsockname()[:2]


def raw_exchange(server, data: bytes, wait: float = 10.0) -> bytes:
    """Send bytes on a fresh connection and read until the server closes it (or `wait` passes)."""
    with socket.create_connection(address(server), timeout=wait) as s:
        s.sendall(data)
        out = b""
        try:
            while chunk := s.recv(65536):
                out += chunk
        except TimeoutError:
            pass
        return out


def status_of(response: bytes) -> int:
    return int(response.split(b" ", 2)[1]) if response.startswith(b"HTTP/1.1 ") else 0


def post_raw_json(server, path: str, text: str, **kw) -> requests.Response:
    return requests.post(
        server.url + path,
        data=text.encode("utf-8", "surrogatepass"),
        timeout=30,
        headers={"Content-Type": "application/json"},
        **kw,
    )


# -----------------------------------------------------------------------------------------------
# Bad bodies: each a 400 with an OpenAI-style error naming the field, streamed or not

PLACES = {"HELLO": json.dumps(HELLO), "MANY": json.dumps(HELLO * 10_000)}


@pytest.mark.parametrize(
    ("path", "body", "param"),
    [
        (CHAT, '{"messages": HELLO, "temperature": NaN}', "temperature"),
        (CHAT, '{"messages": HELLO, "temperature": Infinity}', "temperature"),
        (CHAT, '{"messages": HELLO, "temperature": 1e999}', "temperature"),
        (CHAT, '{"messages": HELLO, "max_tokens": NaN}', "max_tokens"),
        (CHAT, '{"messages": HELLO, "max_tokens": -Infinity}', "max_tokens"),
        (CHAT, '{"messages": HELLO, "max_tokens": 12.5}', "max_tokens"),
        (CHAT, '{"messages": HELLO, "max_tokens": 100000}', "max_tokens"),
        (CHAT, '{"messages": HELLO, "top_p": 0}', "top_p"),
        (CHAT, '{"messages": HELLO, "top_p": NaN}', "top_p"),
        (CHAT, '{"messages": HELLO, "top_k": 0}', "top_k"),
        (CHAT, '{"messages": HELLO, "seed": 9223372036854775808}', "seed"),
        (CHAT, '{"messages": HELLO, "seed": -1}', "seed"),
        (CHAT, '{"messages": HELLO, "temperature": true}', "temperature"),
        (CHAT, '{"messages": HELLO, "stream": true, "temperature": NaN}', "temperature"),
        (CHAT, '{"messages": HELLO, "stream": true, "seed": 18446744073709551616}', "seed"),
        (CHAT, '{"messages": [{"role": "user", "content": "a\\ud800b"}]}', "messages"),
        (CHAT, '{"messages": [{"role": "user", "content": "a\\ud800b"}], "stream": true}', "messages"),
        (CHAT, '{"messages": [{"role": "user", "content": ["x"]}]}', "messages"),
        (CHAT, '{"messages": MANY}', "messages"),  # 10,000 of them
        (CHAT, '{"messages": HELLO, "stream_options": {"include_usage": "yes"}}', "stream_options"),
        ("/v1/completions", '{"prompt": "\\udfff"}', "prompt"),
        ("/v1/completions", '{"prompt": "x", "max_tokens": Infinity}', "max_tokens"),
        ("/v1/completions", '{"prompt": ["x"]}', "prompt"),
    ],
)
def test_bad_values_are_a_400_naming_the_field(server, path, body, param):
    for name, text in PLACES.items():
        body = body.replace(name, text)
    r = post_raw_json(server, path, body)
    assert r.status_code == 400, r.text
    assert r.headers["Content-Type"] == "application/json"
    error = r.json()["error"]
    assert error["param"] == param and error["type"] == "invalid_request_error" and error["message"]


@pytest.mark.parametrize(
    ("data", "fragment"),
    [
        (b"\xff\xfe{}", "not JSON"),
        (b"[" * 100_000 + b"]" * 100_000, "not JSON"),  # nesting that would overflow a recursive parser
        (b'{"messages": [], "max_tokens": 1' + b"0" * 5000 + b"}", "not JSON"),  # a 5000-digit integer
        (b"[1, 2]", "JSON object"),
    ],
)
def test_bodies_that_are_not_a_json_object_are_a_400(server, data, fragment):
    r = requests.post(server.url + CHAT, data=data, timeout=30)
    assert r.status_code == 400 and fragment in r.json()["error"]["message"]


def test_long_history_is_trimmed_to_what_fits(server, session):
    """2,000 turns (under the message cap) are answered exactly like the newest 150 (more than fit)."""
    turns = [
        {"role": "user" if i % 2 == 0 else "assistant", "content": f"frase número {i}"} for i in range(2000)
    ]
    system = [{"role": "system", "content": "Responde em português."}]

    def ask(history: list) -> dict:
        body = {"messages": system + history + HELLO, "max_tokens": 8, "seed": 0}
        r = requests.post(server.url + CHAT, json=body, timeout=60)
        assert r.status_code == 200, r.text
        return r.json()

    everything, newest = ask(turns), ask(turns[-150:])
    whole = encode_chat(session.tok, system + turns[-150:] + HELLO, add_generation_prompt=True)[0]
    assert newest["usage"]["prompt_tokens"] < len(whole)  # the 150 do not all fit: both were cut
    assert everything["usage"] == newest["usage"] and everything["choices"] == newest["choices"]
    assert everything["usage"]["prompt_tokens"] <= session.context - 8


# -----------------------------------------------------------------------------------------------
# The wire: declared sizes, slow and half-sent requests


@pytest.mark.parametrize(
    ("request_head", "status"),
    [
        (b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Length: -5\r\n\r\n", 400),
        (b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Length: abc\r\n\r\n", 400),
        (b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Length: 300000000\r\n\r\n", 413),
        (b"POST /v1/embeddings HTTP/1.1\r\nHost: x\r\nContent-Length: 1000000000000\r\n\r\n", 413),
        (b"GET /v1/models HTTP/1.1\r\nHost: x\r\nContent-Length: 1000000000000\r\n\r\n", 413),
    ],
)
def test_declared_lengths_are_checked_before_any_body_is_read(server, request_head, status):
    assert status_of(raw_exchange(server, request_head)) == status


def test_a_chunked_body_over_the_limit_is_a_413(server):
    chunk = b"x" * 65536
    body = b"".join(b"%x\r\n%s\r\n" % (len(chunk), chunk) for _ in range(20)) + b"0\r\n\r\n"
    head = b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
    assert status_of(raw_exchange(server, head + body)) == 413


def test_an_unknown_route_is_a_404_json(server):
    r = requests.post(server.url + "/v1/embeddings", json={"input": "x"}, timeout=30)
    assert r.status_code == 404 and r.json()["error"]["param"] is None


def test_a_half_sent_body_times_out_with_a_408_and_the_connection_closes(server):
    head = b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n"
    start = time.monotonic()
    response = raw_exchange(server, head + b'{"messages": ', wait=15)
    assert status_of(response) == 408 and b"did not arrive" in response
    assert time.monotonic() - start < 14  # closed by the server, not by our read timeout


def test_a_body_trickled_a_byte_at_a_time_times_out_with_a_408(server):
    """Each byte arrives in time, the whole body does not: the limit is on the body, not per read."""
    body = json.dumps({"messages": HELLO, "max_tokens": 2}).encode()
    head = b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % len(body)
    with socket.create_connection(address(server), timeout=15) as s:
        s.sendall(head)
        for byte in body:
            s.sendall(bytes([byte]))
            if select.select([s], [], [], 0.1)[0]:  # the server has answered
                break
        response = s.recv(65536)
    assert status_of(response) == 408


@pytest.mark.parametrize(
    "partial",
    [b"", b"POST /v1/chat/completions HTTP/1.1\r\n", b"GET /health HTTP/1.1\r\nHost: x\r\nX-Slow: 1"],
)
def test_a_connection_that_never_finishes_its_headers_is_closed(server, partial):
    start = time.monotonic()
    assert raw_exchange(server, partial, wait=15) == b""
    assert time.monotonic() - start < 14


def test_many_stalled_connections_do_not_stop_the_server(server):
    head = b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{"
    stalled = [socket.create_connection(address(server), timeout=10) for _ in range(150)]
    try:
        for s in stalled:
            s.sendall(head)
        r = requests.post(server.url + CHAT, json={"messages": HELLO, "max_tokens": 3}, timeout=30)
        assert r.status_code == 200 and requests.get(server.url + "/health", timeout=30).status_code == 200
    finally:
        for s in stalled:
            s.close()


# -----------------------------------------------------------------------------------------------
# Cancellation, the queue, usage, the log


def test_a_client_that_leaves_mid_stream_stops_the_generation(server):
    body = {"messages": HELLO, "max_tokens": 600, "temperature": 0}
    full = requests.post(server.url + CHAT, json=body, timeout=120).json()
    assert full["usage"]["completion_tokens"] == 600  # greedy on this model never stops by itself
    before = requests.get(server.url + "/health", timeout=30).json()["generated_pieces"]
    payload = json.dumps({**body, "stream": True}).encode()
    with socket.create_connection(address(server), timeout=30) as s:
        s.sendall(
            b"POST %s HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s"
            % (CHAT.encode(), len(payload), payload)
        )
        seen = b""
        while b'"content": "' not in seen.replace(b'"content": ""', b""):
            seen += s.recv(4096)
    # the client has gone after its first piece of text
    deadline = time.monotonic() + 30
    while (health := requests.get(server.url + "/health", timeout=30).json())["pending"]:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    produced = health["generated_pieces"] - before
    assert 0 < produced < 300, produced  # stopped, well before the 600 the full reply took


def test_a_full_queue_is_a_429_and_a_queued_request_still_completes(session):
    with ModelServer(session, ServeConfig(port=0, max_pending=1)) as s:
        worker = s.app.state.worker
        result = {}
        with worker.lock:  # the model is busy
            t = threading.Thread(
                target=lambda: result.update(
                    r=requests.post(s.url + CHAT, json={"messages": HELLO, "max_tokens": 3}, timeout=60)
                )
            )
            t.start()
            deadline = time.monotonic() + 30
            while requests.get(s.url + "/health", timeout=30).json()["pending"] < 1:
                assert time.monotonic() < deadline
                time.sleep(0.02)
            busy = requests.post(s.url + CHAT, json={"messages": HELLO, "max_tokens": 3}, timeout=30)
            assert busy.status_code == 429 and "busy" in busy.json()["error"]["message"]
        t.join(timeout=60)
        assert result["r"].status_code == 200


def test_stream_options_include_usage(server):
    body = {"messages": HELLO, "max_tokens": 8, "seed": 4}
    whole = requests.post(server.url + CHAT, json=body, timeout=60).json()
    r = requests.post(
        server.url + CHAT,
        json={**body, "stream": True, "stream_options": {"include_usage": True}},
        stream=True,
        timeout=60,
    )
    events = [line[6:] for line in r.iter_lines() if line.startswith(b"data: ")]
    assert events[-1] == b"[DONE]"
    last = json.loads(events[-2])
    assert last["choices"] == [] and last["usage"] == whole["usage"]
    assert all(json.loads(e)["usage"] is None for e in events[:-2])


def test_one_log_line_per_request(session, caplog):
    with (
        caplog.at_level(logging.INFO, logger="ptgpt.serving"),
        ModelServer(session, ServeConfig(port=0)) as server,
    ):
        port = address(server)[1]
        requests.post(server.url + CHAT, json={"messages": HELLO, "max_tokens": 3}, timeout=60)
        requests.get(server.url + "/nowhere", timeout=30)
        deadline = time.monotonic() + 10
        while len(caplog.records) < 2 and time.monotonic() < deadline:
            time.sleep(0.02)
    # A server of its own, and only its lines: the shared one may still log the end of an earlier
    # test's streamed reply after that test returned.
    ours = [r for r in caplog.records if r.name == "ptgpt.serving"]
    lines = [r.getMessage() for r in ours if r.server and r.server[1] == port]
    assert len(lines) == 2, lines
    assert '"POST /v1/chat/completions" 200' in lines[0] and "tokens" in lines[0]
    assert '"GET /nowhere" 404' in lines[1]


# -----------------------------------------------------------------------------------------------
# What the server says about itself, and who may use it


def test_health_and_models(server, session):
    health = requests.get(server.url + "/health", timeout=30).json()
    assert health["status"] == "ok" and health["model"] == session.name
    [model] = requests.get(server.url + "/v1/models", timeout=30).json()["data"]
    assert model["id"] == session.name and model["context_length"] == session.context == 640
    assert 1 <= model["default_max_tokens"] <= session.context // 2 and model["parameters"] == 1


@pytest.mark.parametrize(
    ("method", "path", "auth", "status"),
    [
        ("GET", "/v1/models", None, 401),
        ("GET", "/v1/models", "Bearer wrong", 401),
        ("GET", "/v1/models", "s3cret", 401),
        ("POST", CHAT, None, 401),
        ("GET", "/v1/models", "Bearer s3cret", 200),
        ("POST", CHAT, "Bearer s3cret", 200),
        ("GET", "/health", None, 200),
        ("GET", "/", None, 200),
    ],
)
def test_api_key(session, method, path, auth, status):
    with ModelServer(session, ServeConfig(port=0, api_key="s3cret")) as s:
        headers = {"Authorization": auth} if auth else {}
        body = {"messages": HELLO, "max_tokens": 2} if method == "POST" else None
        r = requests.request(method, s.url + path, json=body, headers=headers, timeout=60)
        assert r.status_code == status
        if status == 401:
            assert r.headers["WWW-Authenticate"] == "Bearer" and "API key" in r.json()["error"]["message"]


@pytest.mark.parametrize(
    ("host", "key", "warns"),
    [
        ("127.0.0.1", None, False),
        ("localhost", None, False),
        ("::1", None, False),
        ("0.0.0.0", None, True),
        ("0.0.0.0", "k", True),
        ("192.168.1.5", None, True),
    ],
)
def test_exposure_warning(host, key, warns):
    assert (exposure_warning(host, key) is not None) == warns


@pytest.mark.parametrize(("host", "warning"), [("127.0.0.1", False), ("0.0.0.0", True)])
def test_serve_model_on_a_port_in_use_is_one_error_line(checkpoint, host, warning):
    with socket.socket() as busy:
        busy.bind((host, 0))
        busy.listen(1)
        port = busy.getsockname()[1]
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        cmd = [
            sys.executable,
            "-m",
            "ptgpt",
            "serve-model",
            "--run",
            str(checkpoint),
            "--host",
            host,
            "--port",
            str(port),
        ]
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=120, env=env, cwd=ROOT)
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 1 and lines[-1].startswith("Error: port") and "in use" in lines[-1]
    assert len(lines) == 1 + warning
    assert warning == lines[0].startswith("Warning: listening on 0.0.0.0")


def test_listen_backlog_takes_a_burst_of_connections(server):
    conns = [socket.create_connection(address(server), timeout=5) for _ in range(200)]
    try:
        for c in conns:
            c.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        assert all(status_of(c.recv(64)) == 200 for c in conns)
    finally:
        for c in conns:
            c.close()


def test_training_never_imports_the_web_stack():
    """training/ runs on a bare GPU box: the server's packages stay in serving/."""
    import ast

    web = {"fastapi", "starlette", "uvicorn", "pydantic", "h11", "serving"}
    for path in sorted((ROOT / "training").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else []
            if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            assert not {n.split(".")[0] for n in names} & web, f"{path.name} imports {names}"


def test_the_cli_loads_no_web_stack_and_no_torch_until_serve_model_runs():
    code = "import sys, ptgpt.cli; print(sorted({'torch', 'uvicorn', 'fastapi'} & set(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert out.stdout.strip() == "[]", out.stderr


@pytest.mark.slow
def test_serve_model_for_real_logs_each_request_and_stops_on_ctrl_c(checkpoint):
    import signal

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, "-m", "ptgpt", "serve-model", "--run", str(checkpoint), "--port", str(port)]
    proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True, env=env, cwd=ROOT)
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                health = requests.get(f"http://127.0.0.1:{port}/health", timeout=5)
                break
            except requests.RequestException:  # bound, but the model is still loading
                assert proc.poll() is None and time.monotonic() < deadline
                time.sleep(0.2)
        assert health.json()["status"] == "ok"
        r = requests.post(
            f"http://127.0.0.1:{port}{CHAT}", json={"messages": HELLO, "max_tokens": 3}, timeout=60
        )
        assert r.status_code == 200
        proc.send_signal(signal.SIGINT)
        _, stderr = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 0, stderr
    lines = stderr.strip().splitlines()
    assert lines[0].startswith("serving ") and f"127.0.0.1:{port}" in lines[0]
    assert sum('"GET /health" 200' in line for line in lines) >= 1
    assert sum('"POST /v1/chat/completions" 200' in line for line in lines) == 1
    assert "Traceback" not in stderr
