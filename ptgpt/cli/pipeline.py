"""`ptgpt serve`, `ptgpt fetch-and-build` and `ptgpt run`: the Prefect flows, served or in-process.

`ptgpt fetch-and-build` downloads from a source and builds, as the build-corpus Prefect flow;
`ptgpt corpus build` (ptgpt/cli/corpus.py) builds from a raw store already on disk, without Prefect.
Both run the same corpus build (corpus/build.py), so the same books give the same shards.
"""

from __future__ import annotations

import json
from pathlib import Path

import click

from ptgpt.cli.corpus import text_options
from ptgpt.cli.train import (
    budget_lifts_the_step_limit,
    max_steps_option,
    nproc_option,
    preset_option,
    time_budget_option,
)


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

    _require_prefect_api(needs_server=True)
    serve_deployments(name, limit)


def _require_prefect_api(needs_server: bool = False) -> None:
    """Fail in one line, before any work, when the Prefect API the flows would report to is down."""
    from pipelines.serve import check_prefect_api

    check_prefect_api(needs_server)  # raises UserError, which the CLI prints as one line


def _corpus_options(f):
    """The build-corpus parameters `ptgpt fetch-and-build` and `ptgpt run` share (applied bottom-up)."""
    options = [
        click.option(
            "--source",
            default="https://www.gutenberg.org",
            show_default=True,
            help="Gutenberg-layout site URL, or a folder of <id>.txt files.",
        ),
        click.option(
            "--out",
            type=click.Path(file_okay=False, path_type=Path),
            default=Path("data/corpus"),
            show_default=True,
            help="Corpus folder; the raw store goes beside it (OUT/../raw).",
        ),
        click.option("--limit", type=click.IntRange(min=0), default=None, help="At most N books."),
        click.option("--workers", type=click.IntRange(min=1), default=None, help="Cleaning workers."),
        click.option(
            "--rate",
            type=click.FloatRange(min=0),
            default=1.0,
            show_default=True,
            help="Requests per second per host; 0 for a mirror you own.",
        ),
        click.option(
            "--task-runner",
            type=click.Choice(["threads", "processes", "dask"]),
            default="threads",
            show_default=True,
            help="Where per-book cleaning runs: threads, processes, or Dask.",
        ),
        click.option(
            "--dask-address",
            default=None,
            help="Scheduler of an existing Dask cluster (default: a local one of --workers processes).",
        ),
    ]
    for option in reversed(options):
        f = option(f)
    return text_options(f)


@click.command(name="fetch-and-build")
@_corpus_options
def build(out: Path, extras: tuple[str, ...], **params) -> None:
    """Download books from a source and build a corpus: the build-corpus Prefect flow, in this process.

    No server or worker needed (with PREFECT_API_URL set, the run reports there). To build from a
    raw store already on disk, without Prefect, use `ptgpt corpus build`.
    """
    from pipelines.flows import build_corpus_flow

    _require_prefect_api()
    _finish(build_corpus_flow(out=str(out), extra=list(extras), **params, return_state=True))


@click.command()
@_corpus_options
@click.option(
    "--run",
    "run_dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path("data/run"),
    show_default=True,
    help="Run folder (checkpoints, logs); rerunning resumes.",
)
@preset_option
@max_steps_option
@time_budget_option
@nproc_option
@click.pass_context
def run(ctx: click.Context, out: Path, run_dir: Path, extras: tuple[str, ...], **params) -> None:
    """Run corpus-and-train (the main job) in this process."""
    from pipelines.flows import corpus_and_train_flow

    params = budget_lifts_the_step_limit(ctx, params)
    _require_prefect_api()
    _finish(
        corpus_and_train_flow(out=str(out), run=str(run_dir), extra=list(extras), **params, return_state=True)
    )


def _finish(state) -> None:
    """Exit by the flow run's final state, never by luck: a Failed run exits 1."""
    if not state.is_completed():
        raise click.ClickException(f"flow run ended {state.type.value}: {state.message}")
    result = state.result()
    click.echo(json.dumps(result, indent=2, default=str) if isinstance(result, dict) else str(result))
