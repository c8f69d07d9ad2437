"""`ptgpt serve-model`: the OpenAI-compatible API and the chat page (serving/) for a chat model."""

from __future__ import annotations

import contextlib
from pathlib import Path

import click

from serving.config import ServeConfig

RUN_DIR = click.Path(exists=True, file_okay=False, path_type=Path)
D = ServeConfig()


@click.command("serve-model")
@click.option("--run", "run_dir", required=True, type=RUN_DIR, help="An SFT run (or a chat checkpoint).")
@click.option("--host", default=D.host, show_default=True, help="0.0.0.0 exposes it to the network.")
@click.option(
    "--port",
    type=click.IntRange(min=0, max=65535),
    default=D.port,
    show_default=True,
    help="Port to listen on; 0 picks a free one.",
)
@click.option("--device", default="cpu", show_default=True, help="cpu, cuda, mps or auto.")
@click.option(
    "--api-key",
    envvar="PTGPT_API_KEY",
    help="Require `Authorization: Bearer KEY` on /v1/ (or PTGPT_API_KEY). Default: no key.",
)
@click.option(
    "--queue",
    "max_pending",
    type=click.IntRange(min=1),
    default=D.max_pending,
    show_default=True,
    help="Requests running or waiting for the model; one more gets HTTP 429.",
)
def serve_model(
    run_dir: Path, host: str, port: int, device: str, api_key: str | None, max_pending: int
) -> None:
    """OpenAI-compatible HTTP API (/v1/chat/completions, /v1/completions) and a chat page at /."""
    from serving.listen import bind_socket, exposure_warning

    config = ServeConfig(host=host, port=port, api_key=api_key or None, max_pending=max_pending)
    warning = exposure_warning(host, config.api_key)
    if warning:
        click.echo(f"Warning: {warning}", err=True)
    sock = bind_socket(host, port, config.backlog)  # a port in use is reported before anything loads
    try:
        from serving.server import ModelServer, log_requests_to_stderr, model_card
        from training.chat import load_chat_session

        session = load_chat_session(run_dir, device=device)
        server = ModelServer(session, config, model_card(run_dir, session), sock=sock)
    except BaseException:
        sock.close()
        raise
    log_requests_to_stderr()
    click.echo(f"serving {run_dir} at {server.url} (chat page at {server.url}/); Ctrl-C stops", err=True)
    with contextlib.suppress(KeyboardInterrupt):  # uvicorn has already shut down gracefully
        server.serve_forever()
