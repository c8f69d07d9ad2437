"""serve-model's settings, defined once (no imports: the CLI reads its defaults without loading a web stack)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class ServeConfig:
    host: str = "127.0.0.1"
    port: int = 8000  # 0: any free port
    api_key: str | None = None  # when set, /v1/ needs `Authorization: Bearer KEY`
    max_pending: int = 32  # requests running or waiting for the model; one more is a 429
    max_body_bytes: int = 1 << 20
    body_timeout: float = 10.0  # seconds for a request's body to arrive
    header_timeout: float = 10.0  # seconds for a new connection's request line and headers
    keep_alive: float = 5.0  # seconds an idle connection stays open
    backlog: int = 2048  # connections the kernel queues before accept()
