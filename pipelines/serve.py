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


def serve_deployments(name: str = DEPLOYMENT_NAME, limit: int | None = None) -> None:
    """Register the deployments and run their flow runs until interrupted (blocks)."""
    from prefect import serve

    serve(*deployments(name), limit=limit)
