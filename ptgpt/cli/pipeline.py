"""`ptgpt serve`, `ptgpt build` and `ptgpt run`: the Prefect flows, served or in-process."""

from __future__ import annotations

import json
from pathlib import Path

import click


@click.command()
@click.option("--name", default="ptgpt", show_default=True, help="Deployment name under each flow.")
@click.option(
    "--limit", type=click.IntRange(min=1), default=None, help="Flow runs at once (default: no limit)."
)
def serve(name: str, limit: int | None) -> None:
    """Serve the deployments build-corpus/NAME, train-model/NAME and corpus-and-train/NAME.

    Needs a Prefect API (PREFECT_API_URL, e.g. a `prefect server start` on 127.0.0.1). Then start
    runs from anywhere: prefect deployment run 'corpus-and-train/ptgpt' --param source=... --watch
    """
    from pipelines.serve import serve_deployments

    serve_deployments(name, limit)


def _task_runner_options(f):
    f = click.option(
        "--task-runner",
        type=click.Choice(["threads", "processes", "dask"]),
        default="threads",
        show_default=True,
        help="Where the per-book stages run: local threads/processes, or a Dask cluster.",
    )(f)
    f = click.option(
        "--dask-address",
        default=None,
        help="Scheduler of an existing Dask cluster (default: a local one of --workers processes).",
    )(f)
    return f


@click.command()
@click.option(
    "--source",
    default="https://www.gutenberg.org",
    show_default=True,
    help="Gutenberg-layout site URL, or a folder of <id>.txt files.",
)
@click.option(
    "--out", type=click.Path(file_okay=False, path_type=Path), default=Path("data/corpus"), show_default=True
)
@click.option("--limit", type=click.IntRange(min=0), default=None)
@click.option("--vocab-size", type=click.IntRange(min=8), default=32000, show_default=True)
@click.option("--workers", type=click.IntRange(min=1), default=None)
@click.option("--rate", type=click.FloatRange(min=0), default=1.0, show_default=True)
@_task_runner_options
def build(
    source: str,
    out: Path,
    limit: int | None,
    vocab_size: int,
    workers: int | None,
    rate: float,
    task_runner: str,
    dask_address: str | None,
) -> None:
    """Run the build-corpus flow in this process (no server or worker needed)."""
    from pipelines.flows import build_corpus_flow

    state = build_corpus_flow(
        source=source,
        out=str(out),
        limit=limit,
        vocab_size=vocab_size,
        workers=workers,
        rate=rate,
        task_runner=task_runner,
        dask_address=dask_address,
        return_state=True,
    )
    _finish(state)


@click.command()
@click.option("--source", default="https://www.gutenberg.org", show_default=True)
@click.option(
    "--out", type=click.Path(file_okay=False, path_type=Path), default=Path("data/corpus"), show_default=True
)
@click.option(
    "--run",
    "run_dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path("data/run"),
    show_default=True,
)
@click.option("--limit", type=click.IntRange(min=0), default=None)
@click.option("--vocab-size", type=click.IntRange(min=8), default=32000, show_default=True)
@click.option("--preset", default="tiny", show_default=True)
@click.option("--max-steps", type=click.IntRange(min=1), default=1000, show_default=True)
@click.option("--workers", type=click.IntRange(min=1), default=None)
@click.option("--rate", type=click.FloatRange(min=0), default=1.0, show_default=True)
@_task_runner_options
def run(
    source: str,
    out: Path,
    run_dir: Path,
    limit: int | None,
    vocab_size: int,
    preset: str,
    max_steps: int,
    workers: int | None,
    rate: float,
    task_runner: str,
    dask_address: str | None,
) -> None:
    """Run corpus-and-train (the main job) in this process."""
    from pipelines.flows import corpus_and_train_flow

    state = corpus_and_train_flow(
        source=source,
        out=str(out),
        run=str(run_dir),
        limit=limit,
        vocab_size=vocab_size,
        preset=preset,
        max_steps=max_steps,
        workers=workers,
        rate=rate,
        task_runner=task_runner,
        dask_address=dask_address,
        return_state=True,
    )
    _finish(state)


def _finish(state) -> None:
    """Exit by the flow run's final state, never by luck: a Failed run exits 1."""
    if not state.is_completed():
        raise click.ClickException(f"flow run ended {state.type.value}: {state.message}")
    result = state.result()
    click.echo(json.dumps(result, indent=2, default=str) if isinstance(result, dict) else str(result))
