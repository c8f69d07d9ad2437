"""uvicorn around the app, on a socket bound before it starts (serving/listen.py): timeouts, limits.

uvicorn times out an idle keep-alive connection but not one that never finishes its
request line and headers, so the protocol below closes those after `header_timeout`; a body that
does not finish within `body_timeout` is a 408 (serving/app.py's read_json).
"""

from __future__ import annotations

import logging
import socket
import sys
import threading
import time
from pathlib import Path

import h11
import uvicorn
from uvicorn.protocols.http.h11_impl import H11Protocol

from serving.app import create_app
from serving.config import ServeConfig
from serving.listen import bind_socket, exposure_warning  # noqa: F401 - part of this module's API
from training.chat import ChatSession


class _HeaderTimeoutH11(H11Protocol):
    """uvicorn's h11 protocol, closing a connection whose request line and headers do not arrive in
    time (a client that opens sockets and trickles bytes would otherwise keep them forever)."""

    header_timeout = 10.0

    def connection_made(self, transport) -> None:
        super().connection_made(transport)
        self._header_timer = self.loop.call_later(self.header_timeout, self._headers_too_slow)

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        waiting = self.conn.their_state is h11.IDLE  # part of a request line or headers, at most
        if waiting and self._header_timer is None:
            self._header_timer = self.loop.call_later(self.header_timeout, self._headers_too_slow)
        elif not waiting and self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def connection_lost(self, exc) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
        super().connection_lost(exc)

    def _headers_too_slow(self) -> None:
        self._header_timer = None
        if self.conn.their_state is h11.IDLE and not self.transport.is_closing():
            self.transport.close()


def model_card(run_or_checkpoint: str | Path, session: ChatSession) -> dict:
    """What /v1/models says about the model beyond its id: size and what it was tuned on, if known."""
    from training.checkpoint import newest_valid_checkpoint, read_checkpoint_config

    card: dict = {}
    model = getattr(session, "model", None)
    if model is not None:
        card["parameters"] = sum(p.numel() for p in model.parameters())
    path = Path(run_or_checkpoint)
    try:
        checkpoint = newest_valid_checkpoint(path) if (path / "checkpoints").is_dir() else path
        sft = read_checkpoint_config(checkpoint).get("sft") or {}
    except Exception:  # a description is optional; the session already loaded
        sft = {}
    if sft.get("data"):
        card["tuned_on"] = Path(sft["data"]).name
        card["tuned_steps"] = sft.get("max_steps")
    return card


class ModelServer:
    """uvicorn serving a ChatSession: serve_forever() in this thread (Ctrl-C stops it), or start() in
    another one and close() (tests, the benchmark). The socket is bound on construction unless given
    (bound by bind_socket)."""

    def __init__(
        self,
        session: ChatSession,
        config: ServeConfig | None = None,
        card: dict | None = None,
        sock: socket.socket | None = None,
    ):
        self.config = config = config or ServeConfig()
        self.sock = sock or bind_socket(config.host, config.port, config.backlog)
        self.app = create_app(session, config, card)
        protocol = type("Protocol", (_HeaderTimeoutH11,), {"header_timeout": config.header_timeout})
        self.uvicorn = uvicorn.Server(
            uvicorn.Config(
                self.app,
                http=protocol,
                lifespan="off",
                log_config=None,
                log_level="warning",
                access_log=False,  # Guard logs one line per request instead
                timeout_keep_alive=config.keep_alive,
                timeout_graceful_shutdown=3,
                backlog=config.backlog,
            )
        )
        self.thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        host, port = self.sock.getsockname()[:2]
        return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"

    def serve_forever(self) -> None:
        try:
            self.uvicorn.run(sockets=[self.sock])
        finally:
            self._release()

    def start(self) -> ModelServer:
        self.thread = threading.Thread(target=self.uvicorn.run, kwargs={"sockets": [self.sock]}, daemon=True)
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.uvicorn.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("uvicorn did not start")
            time.sleep(0.01)
        return self

    def close(self) -> None:
        if self.thread is not None:
            self.uvicorn.should_exit = True
            self.thread.join(timeout=10)
        self._release()

    def _release(self) -> None:
        self.app.state.worker.close()
        self.sock.close()

    def __enter__(self) -> ModelServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.close()


def log_requests_to_stderr() -> None:
    """One line per request on stderr (serve-model's log)."""
    logger = logging.getLogger("ptgpt.serving")
    if not logger.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(asctime)s %(message)s", "%Y-%m-%d %H:%M:%S"))
        logger.addHandler(handler)
    logger.setLevel(logging.INFO)
