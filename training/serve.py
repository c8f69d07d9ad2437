"""An OpenAI-compatible HTTP server for a chat model, with a small chat page. Standard library only.

    GET  /                     the chat page (streams replies through the API below)
    GET  /v1/models            the one model served
    POST /v1/chat/completions  {"messages": [...], "stream": bool, "max_tokens", "temperature", "top_p",
                               "top_k", "seed"} -> a chat.completion, or server-sent events of
                               chat.completion.chunk objects ending with `data: [DONE]`
    POST /v1/completions       {"prompt": str, ...the same} -> a text_completion (or its chunks)

Concurrency: ThreadingHTTPServer gives each connection a thread, and one lock around the model
serialises generation, so requests queue on the lock and are answered one after another (a streamed
reply holds the lock until its last token). The model is small and a CPU runs one forward at a time
anyway; batching concurrent requests is the next step if that ever matters.

Bad requests get a 4xx with an OpenAI-style body {"error": {"message", "type", "param", "code"}}.
It binds 127.0.0.1 unless told otherwise: there is no authentication.
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from training.chat import ChatSession, Reply, SamplingConfig, check_messages

MAX_BODY = 1 << 20  # bytes of JSON a request may send
PAGE = Path(__file__).with_name("chat_page.html")


class RequestError(Exception):
    def __init__(self, status: HTTPStatus, message: str, param: str | None = None):
        super().__init__(message)
        self.status, self.message, self.param = status, message, param


def _number(body: dict, name: str, default, kind, low=None, high=None):
    value = body.get(name, default)
    if value is None:
        return default
    if (
        isinstance(value, bool)
        or not isinstance(value, (int, float))
        or (kind is int and value != int(value))
    ):
        raise RequestError(HTTPStatus.BAD_REQUEST, f"'{name}' must be a number", name)
    if (low is not None and value < low) or (high is not None and value > high):
        raise RequestError(HTTPStatus.BAD_REQUEST, f"'{name}' must be within [{low}, {high}]", name)
    return kind(value)


def sampling_from_body(body: dict, context: int) -> SamplingConfig:
    """The sampling settings of a request (OpenAI names; top_k is our extension), checked."""
    if body.get("n", 1) != 1:
        raise RequestError(HTTPStatus.BAD_REQUEST, "only n=1 is supported", "n")
    return SamplingConfig(
        max_new_tokens=_number(body, "max_tokens", min(256, context // 2), int, 1, context),
        temperature=_number(body, "temperature", 1.0, float, 0, 2),
        top_k=_number(body, "top_k", None, int, 1),
        top_p=_number(body, "top_p", None, float, 0, 1) or None,
        seed=_number(body, "seed", None, int),
    )


class ModelServer:
    """The HTTP server around a ChatSession; start() runs it in a thread, serve_forever() in this one."""

    def __init__(self, session: ChatSession, host: str = "127.0.0.1", port: int = 8000):
        self.session = session
        self.lock = threading.Lock()  # one generation at a time
        handler = type("Handler", (_Handler,), {"server_state": self})
        self.httpd = ThreadingHTTPServer((host, port), handler)
        self.httpd.daemon_threads = True
        self.thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        host, port = self.httpd.server_address[:2]
        return f"http://{host}:{port}"

    def start(self) -> ModelServer:
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()
        return self

    def serve_forever(self) -> None:
        self.httpd.serve_forever()

    def close(self) -> None:
        if self.thread is not None:
            self.httpd.shutdown()
            self.thread.join()
        self.httpd.server_close()

    def __enter__(self) -> ModelServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.close()


class _Handler(BaseHTTPRequestHandler):
    server_state: ModelServer
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args) -> None:  # noqa: A002 - the base class's name
        pass  # quiet; the CLI prints where it listens

    # -- plumbing

    def _send(self, status: int, body: bytes, content_type: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _json(self, status: int, obj: dict) -> None:
        self._send(status, json.dumps(obj, ensure_ascii=False).encode(), "application/json")

    def _error(self, e: RequestError) -> None:
        kind = "invalid_request_error" if e.status < 500 else "server_error"
        self._json(e.status, {"error": {"message": e.message, "type": kind, "param": e.param, "code": None}})

    def _body(self) -> dict:
        try:
            length = int(self.headers.get("Content-Length", ""))
        except ValueError:
            raise RequestError(
                HTTPStatus.LENGTH_REQUIRED, "a JSON body with Content-Length is required"
            ) from None
        if length > MAX_BODY:
            raise RequestError(HTTPStatus.REQUEST_ENTITY_TOO_LARGE, f"body over {MAX_BODY} bytes")
        raw = self.rfile.read(length)
        try:
            body = json.loads(raw)
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise RequestError(HTTPStatus.BAD_REQUEST, f"body is not JSON: {e}") from None
        if not isinstance(body, dict):
            raise RequestError(HTTPStatus.BAD_REQUEST, "body must be a JSON object")
        return body

    # -- routes

    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        state = self.server_state
        if self.path in ("/", "/index.html"):
            self._send(200, PAGE.read_bytes(), "text/html; charset=utf-8")
        elif self.path == "/v1/models":
            model = {"id": state.session.name, "object": "model", "created": 0, "owned_by": "ptgpt"}
            self._json(200, {"object": "list", "data": [model]})
        elif self.path == "/health":
            self._json(200, {"status": "ok"})
        else:
            self._error(RequestError(HTTPStatus.NOT_FOUND, f"no route GET {self.path}"))

    def do_POST(self) -> None:  # noqa: N802
        try:
            if self.path not in ("/v1/chat/completions", "/v1/completions"):
                self.rfile.read(int(self.headers.get("Content-Length") or 0))
                raise RequestError(HTTPStatus.NOT_FOUND, f"no route POST {self.path}")
            body = self._body()
            self._complete(body, chat=self.path == "/v1/chat/completions")
        except RequestError as e:
            self._error(e)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client left mid-stream

    def _complete(self, body: dict, chat: bool) -> None:
        session = self.server_state.session
        sampling = sampling_from_body(body, session.context)
        stream = body.get("stream", False)
        if not isinstance(stream, bool):
            raise RequestError(HTTPStatus.BAD_REQUEST, "'stream' must be true or false", "stream")
        if chat:
            try:
                messages = check_messages(body.get("messages"))
            except ValueError as e:
                raise RequestError(HTTPStatus.BAD_REQUEST, str(e), "messages") from None
            try:
                prompt, _ = session.chat_prompt(messages, reserve=sampling.max_new_tokens)
            except ValueError as e:
                raise RequestError(HTTPStatus.BAD_REQUEST, str(e), "messages") from None
        else:
            text = body.get("prompt")
            if not isinstance(text, str):
                raise RequestError(HTTPStatus.BAD_REQUEST, "'prompt' must be a string", "prompt")
            prompt = [session.tok.bos, *session.tok.encode(text)]
            if len(prompt) >= session.context:
                raise RequestError(
                    HTTPStatus.BAD_REQUEST, f"prompt exceeds the {session.context}-token context", "prompt"
                )
        ident = ("chatcmpl-" if chat else "cmpl-") + uuid.uuid4().hex[:24]
        created = int(time.time())
        head = {"id": ident, "created": created, "model": session.name}
        with self.server_state.lock:
            pieces = session.stream(prompt, sampling, chat=chat)
            if stream:
                self._stream(pieces, head, chat)
            else:
                *_, reply = pieces
                self._json(200, _final_object(reply, head, chat))

    def _stream(self, pieces, head: dict, chat: bool) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream; charset=utf-8")
        self.send_header("Cache-Control", "no-cache")
        self.send_header("Connection", "close")
        self.end_headers()
        self.close_connection = True

        def event(choice: dict) -> None:
            obj = {
                **head,
                "object": "chat.completion.chunk" if chat else "text_completion",
                "choices": [choice],
            }
            self.wfile.write(f"data: {json.dumps(obj, ensure_ascii=False)}\n\n".encode())
            self.wfile.flush()

        if chat:
            event({"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": None})
        for piece in pieces:
            if isinstance(piece, Reply):
                done = {"index": 0, "finish_reason": piece.finish_reason}
                event({**done, "delta": {}} if chat else {**done, "text": "", "logprobs": None})
            elif chat:
                event({"index": 0, "delta": {"content": piece}, "finish_reason": None})
            else:
                event({"index": 0, "text": piece, "logprobs": None, "finish_reason": None})
        self.wfile.write(b"data: [DONE]\n\n")
        self.wfile.flush()


def _final_object(reply: Reply, head: dict, chat: bool) -> dict:
    usage = {
        "prompt_tokens": reply.prompt_tokens,
        "completion_tokens": reply.completion_tokens,
        "total_tokens": reply.prompt_tokens + reply.completion_tokens,
    }
    if chat:
        choice = {
            "index": 0,
            "message": {"role": "assistant", "content": reply.text},
            "finish_reason": reply.finish_reason,
        }
        return {**head, "object": "chat.completion", "choices": [choice], "usage": usage}
    choice = {"index": 0, "text": reply.text, "logprobs": None, "finish_reason": reply.finish_reason}
    return {**head, "object": "text_completion", "choices": [choice], "usage": usage}
