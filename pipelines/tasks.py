"""Prefect tasks wrapping the per-book steps of scraping/ and corpus/, and the trainer.

The stages stay Prefect-free and own their loops (`scraping.scrape.iter_scrape`,
`corpus.build.build_corpus`); a task here is a thin call into one per-book step, plus what Prefect
adds: retries, logging through the run logger, and one task run per book in the UI.

How reuse works:
- download: `fetch_book` skips a book whose stored copy matches the sha256 in the raw store's
  manifest, so a rerun only fetches what is missing. The store is the record.
- clean: corpus/build.py's per-book JSON cache (keyed on the raw file's sha256, the book id, the
  cleaning config and code) is the only cache. A book read from it ends its task run `Cached`.
- tokenizer: corpus/build.py caches the model by a digest of its exact input; the global passes
  rerun (deterministic).

Tasks live in this module (not in flows.py) so Dask workers, which unpickle them by reference,
import them as `pipelines.tasks` however the flow file itself was loaded.
"""

from __future__ import annotations

from collections.abc import Callable

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE
from prefect.states import Completed

from corpus.build import BookCleaner, BookSummary, RawBook
from corpus.documents import ChunkCleaner, ChunkSummary
from scraping.catalog import BookRecord
from scraping.http import FetchError, PoliteClient
from scraping.scrape import ScrapeConfig, ScrapeSummary, discover

# Fetch errors that another attempt cannot fix: the book is not there, or is not a text.
PERMANENT_FETCH_ERRORS = {"http_404", "http_410", "not_found", "html_not_text", "binary_body", "empty_body"}


# -- download ----------------------------------------------------------------------------------------
def _retry_transient(task, task_run, state) -> bool:
    """Retry only faults another attempt might fix: a missing book or a bad source stays missing."""
    try:
        state.result()
    except FetchError as e:
        return e.reason not in PERMANENT_FETCH_ERRORS
    except Exception:
        return False
    return False


@task(
    name="discover-books",
    retries=2,
    retry_delay_seconds=10,
    retry_condition_fn=_retry_transient,
    cache_policy=NO_CACHE,
)
def discover_books(config: ScrapeConfig, client: PoliteClient, summary: ScrapeSummary) -> list[BookRecord]:
    """The books to fetch (catalog or folder listing, then ids/limit)."""
    books = discover(config, client, summary)
    get_run_logger().info("discovered %d books in %s", len(books), config.source)
    return books


@task(
    name="download-book",
    retries=2,
    retry_delay_seconds=10,
    retry_condition_fn=_retry_transient,
    cache_policy=NO_CACHE,
    task_run_name="download-{book.id}",
)
def download_book(book: BookRecord, fetch: Callable[[BookRecord], int]) -> int:
    """Store one book in the raw store; bytes stored, 0 when a verified copy was already there.

    Runs on threads of the flow process only: `fetch` sends every request through the run's one
    PoliteClient, whose per-host limiter is what keeps the politeness rate.
    """
    stored = fetch(book)
    if stored:
        get_run_logger().info("book %d: %d bytes", book.id, stored)
    return stored


# -- clean (per book) --------------------------------------------------------------------------------
@task(name="clean-book", cache_policy=NO_CACHE, retries=0, task_run_name="clean-{raw.key}")
def clean_book(raw: RawBook, clean: BookCleaner) -> BookSummary:
    """Decode, strip, normalize, split, filter one book and sign it for dedup (corpus.build.process_book)."""
    summary = clean(raw)
    # A book read from the JSON cache shows as Prefect shows its own cache hits: Completed, named Cached.
    return Completed(name="Cached", data=summary) if summary.cached else summary


@task(name="clean-chunk", cache_policy=NO_CACHE, retries=0, task_run_name="clean-{chunk[0][0]}")
def clean_chunk(chunk: list[tuple[str, str]], clean: ChunkCleaner) -> ChunkSummary:
    """Filter, clean and sign one chunk of an extra source's documents (corpus.documents.ChunkCleaner);
    the run is named after the chunk's first document id."""
    return clean(chunk)


# -- training ----------------------------------------------------------------------------------------
@task(name="train", cache_policy=NO_CACHE)
def train_model(config, on_log=None) -> dict:
    """training.train.train: resumes from the run's newest valid checkpoint, up to max_steps in total.
    on_log(record) is called with each metrics record (the flow's progress)."""
    from training.train import train

    logger = get_run_logger()
    logger.info("training %s on %s up to step %s", config.preset, config.corpus, config.max_steps)
    summary = train(config, on_log=on_log)
    if summary["final_loss"] is not None:  # else a rerun of a finished run, which the trainer has said
        logger.info(
            "stopped at step %s: loss %.4f, validation loss %s",
            summary["step"],
            summary["final_loss"],
            "-" if summary["val_loss"] is None else f"{summary['val_loss']:.4f}",
        )
    return summary


@task(name="train-torchrun", cache_policy=NO_CACHE)
def train_model_torchrun(config, nproc: int, on_log=None) -> dict:
    """The same training as `train_model`, as `nproc` DDP processes launched by torchrun on this machine.

    Each rank reads its share of the data; rank 0 logs, checkpoints, and prints its progress records
    and the summary line, which training.train.run_torchrun turns back into on_log calls and a dict.
    """
    import tempfile

    from training.train import config_to_args, run_torchrun

    logger = get_run_logger()
    logger.info("launching torchrun with %d processes", nproc)
    with tempfile.TemporaryFile("w+") as stderr:
        returncode, summary = run_torchrun(nproc, config_to_args(config), on_log, stderr=stderr)
        stderr.seek(0)
        errors = stderr.read()[-3000:]
    if summary is None:
        raise RuntimeError(f"torchrun exited {returncode} without a summary:\n{errors}")
    logger.info("torchrun exited %d at step %s, loss %s", returncode, summary["step"], summary["final_loss"])
    return summary
