"""Prefect tasks wrapping the stage functions of scraping/, corpus/ and training/.

The stages stay Prefect-free; a task here is a thin call into one of them, plus what Prefect adds:
retries, logging through the run logger, and caching keyed on content so that a rerun (after a
crash, or of a finished build) reuses work instead of redoing it.

How reuse works, stage by stage:
- download: `fetch_book` skips a book whose stored copy matches the sha256 in the raw store's
  manifest, so a rerun only fetches what is missing. No Prefect cache: the store is the record.
- clean: Prefect cache keyed on the raw file's sha256, the book id and key, the cleaning config and
  the cleaning code version (the same key as corpus/build.py's per-book JSON cache), plus the cache
  folder. Results are persisted, so a rerun's clean tasks end `Cached` without running; the JSON
  cache underneath makes even a run with a fresh Prefect home skip the actual cleaning.
- tokenizer: corpus/build.py caches the model by a digest of its exact training input.
- select, dedup, shards, manifest: cheap global passes that always rerun (deterministic).

Tasks live in this module (not in flows.py) so Dask workers, which unpickle them by reference,
import them as `pipelines.tasks` however the flow file itself was loaded.
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from corpus import build as cb
from corpus.build import BookSelection, BookSummary, CorpusConfig, RawBook
from scraping.catalog import BookRecord
from scraping.http import FetchError, PoliteClient
from scraping.scrape import ScrapeConfig, ScrapeSummary, discover, fetch_book
from scraping.store import RawStore

# Fetch errors that another attempt cannot fix: the book is not there, or is not a text.
PERMANENT_FETCH_ERRORS = {"http_404", "http_410", "not_found", "html_not_text", "binary_body", "empty_body"}


# -- download ----------------------------------------------------------------------------------------
@dataclass
class DownloadOutcome:
    """What happened to one book: `downloaded`, `skipped` (already stored and verified) or `failed`."""

    book_id: int
    title: str | None
    outcome: str
    bytes: int = 0
    error: str | None = None


def outcome_record(book: BookRecord, outcome: str, stored: int = 0, error: str | None = None) -> dict:
    return asdict(DownloadOutcome(book.id, book.title, outcome, stored, error))


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
def discover_books(config: ScrapeConfig, client: PoliteClient) -> list[BookRecord]:
    """The books to fetch (catalog or folder listing, then ids/limit)."""
    summary = ScrapeSummary()
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
def download_book(book: BookRecord, config: ScrapeConfig, client: PoliteClient, store: RawStore) -> int:
    """Store one book in the raw store; bytes stored, 0 when a verified copy was already there.

    Runs on threads of the flow process only: every request goes through the one shared
    PoliteClient, whose per-host limiter is what keeps the politeness rate.
    """
    stored = fetch_book(book, config, client, store)
    if stored:
        get_run_logger().info("book %d: %d bytes", book.id, stored)
    return stored


# -- clean (per book) --------------------------------------------------------------------------------
def clean_cache_key(context, parameters: dict) -> str:
    """Content key of one book's cleaning: what corpus/build.py keys its JSON cache on, and more.

    The raw key, title and author go in because the summary carries them; the cache folder because
    the summary points at a file inside it.
    """
    raw: RawBook = parameters["raw"]
    config: CorpusConfig = parameters["config"]
    sha = hashlib.sha256(raw.path.read_bytes()).hexdigest()
    parts = [
        cb.book_cache_key(sha, raw.book_id, config),
        raw.key,
        raw.title or "",
        raw.author or "",
        str(Path(parameters["cache_dir"]).resolve()),
    ]
    return "clean-" + hashlib.sha256("\0".join(parts).encode()).hexdigest()[:40]


@task(
    name="clean-book",
    cache_key_fn=clean_cache_key,
    persist_result=True,
    retries=0,
    task_run_name="clean-{raw.key}",
)
def clean_book(raw: RawBook, config: CorpusConfig, cache_dir: str) -> BookSummary:
    """Decode, strip, normalize, split, filter one book and sign it for dedup (corpus.build.process_book)."""
    return cb.process_book(raw, config, cache_dir)


# -- global stages -----------------------------------------------------------------------------------
@dataclass
class ParagraphPlan:
    selection: BookSelection
    keep: dict[str, list[int]]
    duplicate_paragraphs: int
    seconds: dict[str, float] = field(default_factory=dict)


@task(name="dedup-and-split", cache_policy=NO_CACHE)
def dedup_and_split(summaries: list[BookSummary], config: CorpusConfig) -> ParagraphPlan:
    """Near-duplicate books out, split by book, exact-duplicate paragraphs out (in book id order)."""
    logger = get_run_logger()
    t0 = time.perf_counter()
    selection = cb.select_books(summaries, config)
    if not selection.kept:
        raise ValueError("every book was rejected; nothing to build")
    t1 = time.perf_counter()
    selection, keep, dropped = cb.plan_paragraphs(selection, config, progress=False)
    t2 = time.perf_counter()
    logger.info(
        "kept %d books (%s), %d duplicate paragraphs dropped",
        len(selection.kept),
        ", ".join(f"{s}: {len(ids)}" for s, ids in selection.splits.items()),
        dropped,
    )
    return ParagraphPlan(selection, keep, dropped, {"select": round(t1 - t0, 3), "dedup": round(t2 - t1, 3)})


@task(name="train-tokenizer", cache_policy=NO_CACHE)
def train_tokenizer(plan: ParagraphPlan, config: CorpusConfig, out: str, cache_dir: str) -> str:
    """SentencePiece on the train split (cached by corpus/build.py on its exact input)."""
    path = cb.train_corpus_tokenizer(plan.selection, plan.keep, config, out, cache_dir)
    get_run_logger().info("tokenizer: %s (vocabulary %d)", path, config.tokenizer.vocab_size)
    return str(path)


@task(name="write-shards", cache_policy=NO_CACHE)
def write_shards(
    plan: ParagraphPlan, tokenizer_path: str, out: str, config: CorpusConfig, workers: int | None
) -> dict[str, list[dict]]:
    """Encode the kept paragraphs and write each split's Parquet shards."""
    shards = cb.write_shards(plan.selection, plan.keep, tokenizer_path, out, config, workers, progress=False)
    get_run_logger().info("wrote %d shards", sum(len(v) for v in shards.values()))
    return shards


@task(name="write-manifest", cache_policy=NO_CACHE)
def write_manifest(
    raw: str,
    out: str,
    source: str,
    config: CorpusConfig,
    summaries: list[BookSummary],
    plan: ParagraphPlan,
    shards: dict[str, list[dict]],
    build_info: dict,
) -> dict:
    """The dataset card, then manifest.json last: its presence marks the corpus complete."""
    manifest = cb.make_manifest(
        raw, out, config, summaries, plan.selection, plan.duplicate_paragraphs, shards, build_info
    )
    manifest["source"]["source"] = source
    cb._write_atomic(Path(out) / "README.md", cb.dataset_card(manifest).encode("utf-8"))
    cb.write_manifest(out, manifest)
    return manifest


# -- training ----------------------------------------------------------------------------------------
@task(name="train", cache_policy=NO_CACHE)
def train_model(config, on_log=None) -> dict:
    """training.train.train: resumes from the run's newest valid checkpoint, up to max_steps in total.
    on_log(record) is called with each metrics record (the flow's progress)."""
    from training.train import train

    logger = get_run_logger()
    logger.info("training %s on %s up to step %d", config.preset, config.corpus, config.max_steps)
    summary = train(config, on_log=on_log)
    logger.info(
        "stopped at step %s: loss %s, validation loss %s",
        summary["step"],
        summary["final_loss"],
        summary["val_loss"],
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
