"""The routes of the server, and the one worker thread that owns the model.

    GET  /                     the chat page
    GET  /health               {"status": "ok", "pending": requests running or waiting, ...}
    GET  /v1/models            the one model served, with its context length and what we know of it
    POST /v1/chat/completions  {"messages": [...], "stream", "stream_options", "max_tokens",
                               "temperature", "top_p", "top_k", "seed"} -> a chat.completion, or
                               server-sent chat.completion.chunk events ending with `data: [DONE]`
    POST /v1/completions       {"prompt": str, ...the same} -> a text_completion (or its chunks)

Generation runs off the event loop on one worker thread holding `Worker.lock`: a CPU runs one
forward pass at a time anyway, and the loop stays free to accept, validate and refuse. At most
`max_pending` requests run or wait for it; one more gets a 429 at once rather than an unbounded
wait. Building the prompt (fitting a long history) runs on the worker too. Each job is cancelled
when its client disconnects: the worker stops between two tokens.

Errors are OpenAI-style bodies {"error": {"message", "type", "param", "code"}}.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse, StreamingResponse
from pydantic import ValidationError
from starlette.exceptions import HTTPException

from serving.schema import ChatRequest, CompletionRequest, default_max_tokens
from training.chat import ChatSession, Reply

PAGE = Path(__file__).with_name("chat_page.html")
log = logging.getLogger("ptgpt.serving")


class RequestError(Exception):
    def __init__(self, status: int, message: str, param: str | None = None):
        super().__init__(message)
        self.status, self.message, self.param = status, message, param


def error_response(status: int, message: str, param: str | None = None, headers: dict | None = None):
    kind = "invalid_request_error" if status < 500 else "server_error"
    body = {"error": {"message": message, "type": kind, "param": param, "code": None}}
    return JSONResponse(body, status_code=status, headers=headers)


# -----------------------------------------------------------------------------------------------
# The worker


_DONE = object()


class Job:
    """One request's items as the worker produces them, read on the event loop; cancel() stops it."""

    def __init__(self, loop: asyncio.AbstractEventLoop):
        self.loop = loop
        self.items: asyncio.Queue = asyncio.Queue()
        self.cancelled = threading.Event()

    def put(self, item: object) -> None:  # on the worker thread
        try:
            self.loop.call_soon_threadsafe(self.items.put_nowait, item)
        except RuntimeError:  # the loop has closed: the server is stopping
            self.cancelled.set()

    def cancel(self) -> None:
        self.cancelled.set()

    def __aiter__(self) -> Job:
        return self

    async def __anext__(self):
        item = await self.items.get()
        if item is _DONE:
            raise StopAsyncIteration
        if isinstance(item, BaseException):
            raise item
        return item


class Worker:
    """The one thread that runs the model, and the bound on requests running or waiting for it."""

    def __init__(self, session: ChatSession, max_pending: int):
        self.session = session
        self.lock = threading.Lock()  # held while the model works
        self.max_pending = max_pending
        self.slots = threading.BoundedSemaphore(max_pending)
        self.pending = 0  # running or waiting
        self.generated = 0  # text pieces produced since start (a cancelled job stops adding)
        self._count = threading.Lock()
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="ptgpt-generate")

    def submit(self, make: Callable[[], Iterator]) -> Job:
        """Queue `make()` (an iterator of items) for the worker, or raise a 429 when the queue is full."""
        if not self.slots.acquire(blocking=False):
            raise RequestError(
                429, f"the server is busy: {self.max_pending} requests are running or waiting; retry later"
            )
        with self._count:
            self.pending += 1
        job = Job(asyncio.get_running_loop())
        self.executor.submit(self._run, job, make)
        return job

    def _run(self, job: Job, make: Callable[[], Iterator]) -> None:
        try:
            with self.lock:
                if job.cancelled.is_set():
                    return
                items = make()
                try:
                    for item in items:
                        job.put(item)
                        self.generated += isinstance(item, str)
                        if job.cancelled.is_set():
                            break
                finally:
                    close = getattr(items, "close", None)
                    if close is not None:
                        close()  # stops the engine's generator where it is
        except Exception as e:
            job.put(e)
        finally:
            with self._count:
                self.pending -= 1
            self.slots.release()
            job.put(_DONE)

    def close(self) -> None:
        self.executor.shutdown(wait=False, cancel_futures=True)


async def watch_disconnect(request: Request, job: Job, every: float = 0.1) -> None:
    """Cancel `job` as soon as its client has gone (polled: uvicorn reports it on the next receive)."""
    while not job.cancelled.is_set():
        if await request.is_disconnected():
            job.cancel()
            request.state.log = "client left"
            return
        await asyncio.sleep(every)


# -----------------------------------------------------------------------------------------------
# The app


def create_app(session: ChatSession, config, card: dict | None = None) -> FastAPI:
    """The FastAPI app serving `session` under `config` (a serving.server.ServeConfig)."""
    app = FastAPI(title="ptgpt", docs_url=None, redoc_url=None, openapi_url=None)
    worker = Worker(session, config.max_pending)
    app.state.worker = worker
    app.add_middleware(Guard, max_body_bytes=config.max_body_bytes, api_key=config.api_key)
    model = {
        "id": session.name,
        "object": "model",
        "created": 0,
        "owned_by": "ptgpt",
        "context_length": session.context,
        "max_model_len": session.context,  # vLLM's name for the same
        "default_max_tokens": default_max_tokens(session.context),
        **(card or {}),
    }

    @app.exception_handler(HTTPException)
    async def _http_error(request: Request, e: HTTPException):
        return error_response(e.status_code, f"no route {request.method} {request.url.path}")

    @app.exception_handler(Exception)
    async def _server_error(request: Request, e: Exception):
        log.error("%s %s failed: %s: %s", request.method, request.url.path, type(e).__name__, e)
        return error_response(500, f"the server failed: {type(e).__name__}")

    @app.exception_handler(RequestError)
    async def _request_error(request: Request, e: RequestError):
        return error_response(e.status, e.message, e.param)

    @app.get("/", include_in_schema=False)
    @app.get("/index.html", include_in_schema=False)
    async def page() -> HTMLResponse:
        return HTMLResponse(PAGE.read_bytes())

    @app.get("/health")
    async def health() -> dict:
        return {
            "status": "ok",
            "model": session.name,
            "pending": worker.pending,
            "generated_pieces": worker.generated,
        }

    @app.get("/v1/models")
    async def models() -> dict:
        return {"object": "list", "data": [model]}

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request):
        return await complete(request, chat=True)

    @app.post("/v1/completions")
    async def completions(request: Request):
        return await complete(request, chat=False)

    async def complete(request: Request, chat: bool):
        body = await read_json(request, config.max_body_bytes, config.body_timeout)
        req = parse(ChatRequest if chat else CompletionRequest, body, session.context)
        try:
            sampling = req.sampling(session.context)
        except ValueError as e:  # the engine's own checks, should they be stricter than ours
            raise RequestError(400, str(e)) from None
        if chat:
            messages = [m.model_dump() for m in req.messages]
            reserve = min(sampling.max_new_tokens, session.context // 2)

            def prompt() -> list[int]:
                try:
                    return session.chat_prompt(newest_that_may_fit(session, messages), reserve)[0]
                except ValueError as e:
                    raise RequestError(400, str(e), "messages") from None
        else:

            def prompt() -> list[int]:
                ids = [session.tok.bos, *session.tok.encode(req.prompt)]
                if len(ids) >= session.context:
                    raise RequestError(
                        400,
                        f"prompt of {len(ids)} tokens exceeds the {session.context}-token context",
                        "prompt",
                    )
                return ids

        def produce() -> Iterator:
            ids = prompt()
            yield len(ids)
            yield from session.stream(ids, sampling, chat=chat)

        job = worker.submit(produce)
        watcher = asyncio.create_task(watch_disconnect(request, job))
        try:
            await anext(job)  # the prompt: a bad one is a 400 before any 200 is sent
        except BaseException:
            job.cancel()
            watcher.cancel()
            raise
        head = {
            "id": ("chatcmpl-" if chat else "cmpl-") + uuid.uuid4().hex[:24],
            "created": int(time.time()),
            "model": session.name,
        }
        if req.stream:
            events = stream_events(job, head, chat, req.include_usage, request)
            return StreamingResponse(
                finish_with(events, job, watcher),
                media_type="text/event-stream; charset=utf-8",
                headers={"Cache-Control": "no-cache"},
            )
        try:
            reply = None
            async for item in job:
                reply = item
        except ValueError as e:  # the engine refused the request (its checks run as it starts)
            raise RequestError(400, str(e)) from None
        finally:
            job.cancel()
            watcher.cancel()
        if not isinstance(reply, Reply):  # cancelled: the client has gone, nobody reads this
            return error_response(499, "the client closed the request")
        request.state.log = f"{reply.prompt_tokens}+{reply.completion_tokens} tokens"
        return JSONResponse(final_object(reply, head, chat))

    return app


def newest_that_may_fit(session: ChatSession, messages: list[dict]) -> list[dict]:
    """The system message and the newest turns up to the first that alone overflows the context:
    a superset of what the prompt can keep, found encoding each message once, so fitting the rest
    stays cheap however long the history a client sends."""
    system = messages[:1] if messages[0]["role"] == "system" else []
    kept, tokens = [], 0
    for m in reversed(messages[len(system) :]):
        kept.append(m)
        tokens += 2 + len(session.tok.encode_content(m["content"]))  # role id, text, <|end|>
        if tokens >= session.context:
            break
    return system + kept[::-1]


async def finish_with(events: AsyncIterator[bytes], job: Job, watcher: asyncio.Task) -> AsyncIterator[bytes]:
    try:
        async for event in events:
            yield event
    finally:
        job.cancel()
        watcher.cancel()


async def read_json(request: Request, limit: int, timeout: float) -> dict:
    """The body as a JSON object; a body that is too big or too slow to arrive is refused."""

    async def read() -> bytes:
        chunks, size = [], 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise RequestError(413, f"request body over {limit} bytes")
            chunks.append(chunk)
        return b"".join(chunks)

    try:
        raw = await asyncio.wait_for(read(), timeout)
    except asyncio.TimeoutError:
        raise RequestError(408, f"the request body did not arrive within {timeout:g} s") from None
    try:
        body = json.loads(raw)
    except (ValueError, RecursionError) as e:  # UnicodeDecodeError and JSONDecodeError are ValueErrors
        raise RequestError(400, f"body is not JSON: {str(e)[:200]}") from None
    if not isinstance(body, dict):
        raise RequestError(400, "body must be a JSON object")
    return body


def parse(model: type, body: dict, context: int):
    """The request model of `body`, or a 400 naming the first bad field."""
    try:
        return model.model_validate(body, context={"context": context})
    except ValidationError as e:
        first = e.errors()[0]
        loc = [str(p) for p in first["loc"]]
        where = loc[0] + "".join(f"[{p}]" if p.isdigit() else f".{p}" for p in loc[1:]) if loc else "body"
        message = first["msg"].removeprefix("Value error, ")
        raise RequestError(400, f"'{where}': {message}", loc[0] if loc else None) from None


def usage_of(reply: Reply) -> dict:
    return {
        "prompt_tokens": reply.prompt_tokens,
        "completion_tokens": reply.completion_tokens,
        "total_tokens": reply.prompt_tokens + reply.completion_tokens,
    }


async def stream_events(
    job: Job, head: dict, chat: bool, include_usage: bool, request: Request
) -> AsyncIterator[bytes]:
    """Server-sent events of chunks as the worker produces text, then usage (if asked) and [DONE]."""
    kind = "chat.completion.chunk" if chat else "text_completion"
    extra = {"usage": None} if include_usage else {}

    def event(obj: dict) -> bytes:
        return f"data: {json.dumps(obj, ensure_ascii=False)}\n\n".encode()

    def chunk(choice: dict) -> bytes:
        return event({**head, "object": kind, "choices": [choice], **extra})

    if chat:
        yield chunk({"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": None})
    try:
        async for piece in job:
            if isinstance(piece, Reply):
                done = {"index": 0, "finish_reason": piece.finish_reason}
                yield chunk({**done, "delta": {}} if chat else {**done, "text": "", "logprobs": None})
                if include_usage:
                    yield event({**head, "object": kind, "choices": [], "usage": usage_of(piece)})
                request.state.log = f"{piece.prompt_tokens}+{piece.completion_tokens} tokens, streamed"
            elif chat:
                yield chunk({"index": 0, "delta": {"content": piece}, "finish_reason": None})
            else:
                yield chunk({"index": 0, "text": piece, "logprobs": None, "finish_reason": None})
    except Exception as e:  # the 200 is sent: report the failure as an event, as OpenAI does
        log.exception("generation failed mid-stream")
        request.state.log = f"failed mid-stream: {type(e).__name__}"
        yield event({"error": {"message": str(e), "type": "server_error", "param": None, "code": None}})
    yield b"data: [DONE]\n\n"


def final_object(reply: Reply, head: dict, chat: bool) -> dict:
    if chat:
        choice = {
            "index": 0,
            "message": {"role": "assistant", "content": reply.text},
            "finish_reason": reply.finish_reason,
        }
        return {**head, "object": "chat.completion", "choices": [choice], "usage": usage_of(reply)}
    choice = {"index": 0, "text": reply.text, "logprobs": None, "finish_reason": reply.finish_reason}
    return {**head, "object": "text_completion", "choices": [choice], "usage": usage_of(reply)}


# -----------------------------------------------------------------------------------------------
# Every request, before routing: body size by its header, the API key, one log line


class Guard:
    """ASGI middleware: refuses a declared body over the limit before anything reads it (so a 404 or a
    GET never reads one either), checks `Authorization: Bearer KEY` on /v1/ when a key is set, and
    logs one line per request when it ends (a streamed reply: after its last event)."""

    def __init__(self, app, max_body_bytes: int, api_key: str | None):
        self.app, self.max_body_bytes, self.api_key = app, max_body_bytes, api_key

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        start = time.perf_counter()
        status = [0]

        async def send_logged(message) -> None:
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        try:
            refusal = self.refusal(scope)
            if refusal is not None:
                await refusal(scope, receive, send_logged)
            else:
                await self.app(scope, receive, send_logged)
        finally:
            client = scope.get("client") or ("-", 0)
            note = scope.get("state", {}).get("log", "")
            log.info(
                '%s "%s %s" %s %.3fs%s',
                client[0],
                scope["method"],
                scope["path"],
                status[0] or "-",
                time.perf_counter() - start,
                f" {note}" if note else "",
                extra={"server": scope.get("server")},  # which listener, when several share the log
            )

    def refusal(self, scope):
        headers = dict(scope["headers"])
        length = headers.get(b"content-length")
        if length is not None:
            if not length.isdigit():
                return error_response(400, "Content-Length must be a non-negative integer")
            if int(length) > self.max_body_bytes:
                return error_response(413, f"request body over {self.max_body_bytes} bytes")
        if self.api_key and scope["path"].startswith("/v1/"):
            given = headers.get(b"authorization", b"")
            if not hmac.compare_digest(given, b"Bearer " + self.api_key.encode()):
                return error_response(
                    401,
                    "a valid API key is required: Authorization: Bearer KEY",
                    headers={"WWW-Authenticate": "Bearer"},
                )
        return None
