"""The project's deployments, served by one long-running process (`ptgpt serve`).

`prefect.serve` registers each deployment with the Prefect API and runs every flow run it is
handed in a subprocess, so `prefect deployment run 'corpus-and-train/ptgpt' --param ...` from any
shell starts real work. prefect.yaml declares the same deployments for a process work pool, for
users who prefer `prefect deploy` + `prefect worker start`.
"""

from __future__ import annotations

DEPLOYMENT_NAME = "ptgpt"


def deployments(name: str = DEPLOYMENT_NAME) -> list:
    """One deployment per flow: `build-corpus/<name>`, `train-model/<name>`, `corpus-and-train/<name>`."""
    from pipelines.flows import build_corpus_flow, corpus_and_train_flow, train_model_flow

    return [
        build_corpus_flow.to_deployment(
            name=name, description="Gutenberg (or a mirror/folder) -> cleaned, tokenized Parquet corpus."
        ),
        train_model_flow.to_deployment(
            name=name, description="A built corpus -> a trained decoder (RUN folder)."
        ),
        corpus_and_train_flow.to_deployment(
            name=name, description="build-corpus, then train-model: the main job."
        ),
    ]


def check_prefect_api(needs_server: bool = False, timeout: float = 5.0) -> None:
    """Raise UserError when the configured Prefect API does not answer, naming it and how to start one.

    With no PREFECT_API_URL, in-process runs start a temporary server of their own, so only a
    command that needs a long-lived server (`needs_server`) fails then.
    """
    import urllib.error
    import urllib.request

    from prefect.settings import PREFECT_API_URL

    from common.errors import UserError

    start = (
        "start one with `prefect server start` in another shell, then "
        "`export PREFECT_API_URL=http://127.0.0.1:4200/api`"
    )
    url = PREFECT_API_URL.value()
    if not url:
        if needs_server:
            raise UserError(
                f"PREFECT_API_URL is not set, and serving deployments needs a Prefect server: {start}"
            )
        return
    try:
        with urllib.request.urlopen(url.rstrip("/") + "/health", timeout=timeout) as response:
            response.read()
    except (urllib.error.URLError, OSError, ValueError) as e:
        reason = getattr(e, "reason", e)
        alternative = "" if needs_server else ", or unset PREFECT_API_URL to run in-process"
        raise UserError(
            f"the Prefect API at {url} (PREFECT_API_URL) does not answer ({reason}): {start}{alternative}"
        ) from None


def serve_deployments(name: str = DEPLOYMENT_NAME, limit: int | None = None) -> None:
    """Register the deployments and run their flow runs until interrupted (blocks)."""
    from prefect import serve

    serve(*deployments(name), limit=limit)
