"""The project's Prefect flows: build-corpus, train-model, and corpus-and-train (the main job).

    build-corpus       discover -> download (per book, threads, polite) -> clean (per book, on the
                       chosen task runner) -> near-dup books + split by book + duplicate paragraphs
                       -> tokenizer -> Parquet shards -> README.md + manifest.json
    train-model        a built corpus -> training.train.train (resumes from the run's checkpoints)
    corpus-and-train   the two in sequence

Run in-process (`python -m pipelines.flows SOURCE OUT`, `ptgpt fetch-and-build`) or as deployments
(prefect.yaml entrypoints `pipelines/flows.py:build_corpus_flow`, `...:train_model_flow`,
`...:corpus_and_train_flow`).

Where the work runs. Downloads always run on threads of the flow process (at most
DOWNLOAD_THREADS at once), all through one PoliteClient: its per-host limiter holds the politeness
rate (`rate` requests per second per host) whatever the cluster, because no other process talks to
the server. Only the CPU-bound per-book cleaning goes to the runner that `task_runner` picks at run
time: "threads" (the default, Prefect's ThreadPoolTaskRunner), "processes" (ProcessPoolTaskRunner,
`workers` processes) or "dask" (prefect-dask's DaskTaskRunner on the scheduler at `dask_address`,
or on a LocalCluster of `workers` processes on 127.0.0.1). It is a subflow, `clean-books`, built
with `.with_options(task_runner=...)`, so a deployment parameter can choose it. A book costs about
80 ms of CPU to clean and a Prefect task run adds tens of milliseconds (more on process and Dask
workers, which ship each task and its context), so the remote runners pay off with real cores to
spread over, not on a laptop; see bench/bench_pipeline.py. The chunks of `extra` sources (about
1 MB of documents each) go to the same runner as clean-chunk tasks, streamed with a bounded number
in flight, except on "threads", where a process pool cleans them (pure Python on threads would
share one core).

One build. The flow is wiring: `scraping.scrape.iter_scrape` with a mapper that runs one
download-book task per book, then `corpus.build.build_corpus` with a mapper that runs one
clean-book task per book. Validation, the global stages, the staging folder and the manifest are
the build's, exactly as in `ptgpt corpus build`, so both give the same shards from the same books.

Reruns. The raw store skips books it holds with a verified sha256; cleaning is cached on content
(corpus/build.py's per-book cache), the tokenizer on its exact input; the global passes rerun. So
rerunning a flow after a crash, or after it finished, redoes only what is missing and ends with the
same manifest (only its `build` timings differ). A failed run leaves the previous corpus untouched.

Defaults: the raw store of `build-corpus` is `raw` or, unset, the folder `raw` next to OUT
(out=data/corpus -> data/raw, the scraper's default), so corpora built from one source share their
downloads. Only the books discovered by this run (after `ids`/`limit`) go into the corpus, even if
the store holds more.
"""

from __future__ import annotations

import os
import time
from collections import deque
from collections.abc import Iterator
from dataclasses import asdict
from pathlib import Path

from prefect import flow, get_run_logger
from prefect.futures import as_completed
from prefect.runtime import flow_run
from prefect.task_runners import ProcessPoolTaskRunner, TaskRunner, ThreadPoolTaskRunner
from prefect.utilities.annotations import unmapped

from common.errors import UserError
from corpus import build as cb
from corpus.build import BookCleaner, BookSummary, CorpusConfig, RawBook
from corpus.documents import ChunkCleaner, ChunkSummary
from corpus.executor import Executor, process_pool
from corpus.sources import Chunk, check_sources, parse_extras
from corpus.tokenizer import TokenizerConfig
from pipelines import artifacts, tasks
from scraping.http import FetchConfig, FetchError
from scraping.scrape import ScrapeConfig, ScrapeSummary, iter_scrape
from training.config import ConfigError, TrainConfig  # no torch: the train parameters' defaults

DOWNLOAD_THREADS = 4  # downloads in flight; the shared limiter still spaces request starts by 1/rate
TASK_RUNNERS = ("threads", "processes", "dask")


def make_task_runner(kind: str, workers: int | None = None, dask_address: str | None = None) -> TaskRunner:
    """The task runner for the per-book cleaning: threads, processes, or a Dask cluster."""
    if kind == "threads":
        return ThreadPoolTaskRunner(max_workers=workers)
    if kind == "processes":
        return ProcessPoolTaskRunner(max_workers=workers)
    if kind == "dask":
        from prefect_dask import DaskTaskRunner

        if dask_address:
            return DaskTaskRunner(address=dask_address)
        return DaskTaskRunner(
            cluster_class="distributed.LocalCluster",
            cluster_kwargs={
                "n_workers": workers or os.cpu_count() or 1,
                "threads_per_worker": 1,  # cleaning is pure Python: one GIL per book
                "processes": True,
                "dashboard_address": None,  # nothing listens beyond the scheduler, and only on loopback
                "host": "127.0.0.1",
            },
        )
    raise ValueError(f"task_runner must be one of {', '.join(TASK_RUNNERS)}, not {kind!r}")


def default_raw_dir(out: str | Path) -> Path:
    return Path(out).resolve().parent / "raw"


# -- build-corpus ------------------------------------------------------------------------------------
def _download_tasks(fetch, books):
    """scraping's per-book executor in a flow: one retrying download-book task per book, on threads."""
    progress = artifacts.Progress("download-progress", len(books), "books downloaded")
    futures = {tasks.download_book.submit(book, fetch): book for book in books}
    for future in as_completed(list(futures)):
        try:
            result = future.result()
        except FetchError as error:  # this book's failure: reported, the run goes on
            result = error
        progress.advance()
        yield futures[future], result


@flow(
    name="download-books",
    task_runner=ThreadPoolTaskRunner(max_workers=DOWNLOAD_THREADS),
    validate_parameters=False,
)
def download_books_flow(
    source: str, raw: str, limit: int | None = None, ids: list[int] | None = None, rate: float = 1.0
) -> dict:
    """Discover the books and store each in the raw store; a book that fails is reported, not fatal."""
    logger = get_run_logger()
    config = ScrapeConfig(source=source, out=Path(raw), ids=ids, limit=limit, fetch=FetchConfig(rate=rate))
    summary = ScrapeSummary()
    outcomes = []
    for outcome in iter_scrape(config, summary, _download_tasks, tasks.discover_books):
        if outcome.outcome == "failed":
            logger.warning("book %d failed: %s", outcome.book_id, outcome.error)
        outcomes.append(asdict(outcome))
    table = sorted(outcomes, key=lambda o: o["book_id"])
    artifacts.books_table(table)
    result = {
        "found": summary.found,
        "downloaded": summary.downloaded,
        "skipped": summary.skipped,
        "failed": [{"id": book_id, "error": error} for book_id, error in sorted(summary.failed)],
        "bytes": summary.bytes,
        "stored_ids": sorted(o["book_id"] for o in outcomes if o["outcome"] != "failed"),
    }
    logger.info(
        "%d books: %d downloaded, %d already stored, %d failed",
        result["found"],
        result["downloaded"],
        result["skipped"],
        len(result["failed"]),
    )
    return result


@flow(name="clean-books", validate_parameters=False)
def clean_books_flow(raw_books: list[RawBook], clean: BookCleaner) -> list[BookSummary]:
    """Clean every book on this subflow's task runner; summaries in input order. Any failure fails it."""
    futures = tasks.clean_book.map(raw_books, unmapped(clean))
    progress = artifacts.Progress("clean-progress", len(futures), "books cleaned")
    for _ in as_completed(futures):
        progress.advance()
    summaries = [f.result() for f in futures]  # raises the first failure: the flow run ends Failed
    get_run_logger().info(
        "%d books cleaned: %d ok, %d rejected, %d from the cache",
        len(summaries),
        sum(s.status == "ok" for s in summaries),
        sum(s.status != "ok" for s in summaries),
        sum(s.cached for s in summaries),
    )
    return summaries


def clean_tasks(runner: TaskRunner) -> Executor:
    """corpus's per-book executor in a flow: the clean-books subflow, one task per book, on `runner`."""

    def map_books(clean: BookCleaner, raw_books) -> list[BookSummary]:
        return clean_books_flow.with_options(task_runner=runner)(list(raw_books), clean)

    return map_books


def chunk_tasks(runner: TaskRunner, in_flight: int) -> Executor:
    """corpus's per-chunk executor for extra sources: one clean-chunk task per chunk on `runner`, at
    most `in_flight` chunks submitted and not yet collected (the source is streamed, not loaded)."""

    def map_chunks(clean: ChunkCleaner, chunks: Iterator[Chunk]) -> Iterator[ChunkSummary]:
        with runner.duplicate() as started:
            pending: deque = deque()
            for chunk in chunks:
                pending.append(started.submit(tasks.clean_chunk, {"chunk": chunk, "clean": clean}))
                if len(pending) >= in_flight:
                    yield pending.popleft().result()
            while pending:
                yield pending.popleft().result()

    return map_chunks


def extra_chunk_mapper(kind: str, runner: TaskRunner, workers: int | None) -> Executor:
    """Extra sources' chunks go to the flow's task runner, except with "threads": cleaning is pure
    Python, so threads would share one core; a process pool of `workers` cleans them instead."""
    n = workers or os.cpu_count() or 1
    return process_pool(n) if kind == "threads" else chunk_tasks(runner, 2 * n)


@flow(name="build-corpus", log_prints=True)
def build_corpus_flow(
    source: str,
    out: str,
    raw: str | None = None,
    limit: int | None = None,
    ids: list[int] | None = None,
    vocab_size: int = TokenizerConfig.vocab_size,
    model_type: str = TokenizerConfig.model_type,
    workers: int | None = None,
    rate: float = 1.0,
    task_runner: str = "threads",
    dask_address: str | None = None,
    extra: list[str] | None = None,
    text_field: str = "text",
) -> dict:
    """Gutenberg (a site URL or a folder of <id>.txt) -> the corpus folder OUT (docs/formats.md).

    source: Gutenberg-layout site (https://www.gutenberg.org, a mirror) or a folder of <id>.txt.
    out: the corpus folder. raw: the raw store (default: `raw` next to OUT).
    limit / ids: the first `limit` books found, or exactly these ebook numbers.
    vocab_size, model_type: the SentencePiece model ("bpe" or "unigram"). workers: cleaning workers
    (threads, processes or Dask workers) and encoding threads. rate: requests per second per host
    (0: no limit, own mirrors). task_runner: "threads", "processes" or "dask" for the per-book
    cleaning; dask_address: an existing scheduler (default: a LocalCluster of `workers` processes).
    extra: more text sources, `SOURCE[:weight]` as `ptgpt corpus build --extra` (their documents are
    cleaned a chunk per task on the processes or dask runner, in a process pool with threads);
    text_field: their text field.
    Returns a summary: books, and rows/tokens/books per split.
    """
    logger = get_run_logger()
    runner = make_task_runner(task_runner, workers, dask_address)  # bad values fail before any work
    out_dir = Path(out)
    raw_dir = Path(raw) if raw else default_raw_dir(out)
    config = CorpusConfig(tokenizer=TokenizerConfig(vocab_size=vocab_size, model_type=model_type))
    cb.check_build_inputs(raw_dir, out_dir, None, config)  # before any download
    extras = parse_extras(extra or [], text_field)
    check_sources(extras, out_dir, raw_dir)
    logger.info("building %s from %s (raw store %s, cleaning on %s)", out_dir, source, raw_dir, task_runner)

    t0 = time.perf_counter()
    download = download_books_flow(source, str(raw_dir), limit, ids, rate)
    wanted = set(download["stored_ids"])
    raw_books = [b for b in cb.list_raw_books(raw_dir) if b.book_id in wanted]
    if not raw_books:
        raise UserError(f"no book of {source} could be stored in {raw_dir}; nothing to build")
    build_info = {
        "stage_seconds": {"download": round(time.perf_counter() - t0, 3)},
        "flow_run_id": str(flow_run.get_id() or ""),
        "task_runner": task_runner,
    }
    manifest = cb.build_corpus(
        raw_dir,
        out_dir,
        config,
        workers,
        progress=False,
        raw_books=raw_books,
        map_books=clean_tasks(runner),
        build_info=build_info,
        source=source,
        extras=extras,
        map_chunks=extra_chunk_mapper(task_runner, runner, workers),
    )

    words = artifacts.split_words(out_dir, manifest)
    artifacts.drops_table(manifest)
    summary_text = artifacts.corpus_summary(manifest, words, download)
    logger.info("corpus finished in %.1f s\n%s", manifest["build"]["seconds"], summary_text)
    return corpus_result(manifest, download, words, out_dir, raw_dir)


def corpus_result(manifest: dict, download: dict, words: dict[str, int], out: Path, raw: Path) -> dict:
    """The flow's return value: what a caller (or the UI's result view) wants to know of a build."""
    splits = {
        name: {"books": len(s["books"]), "rows": s["rows"], "tokens": s["tokens"], "words": words[name]}
        for name, s in manifest["splits"].items()
    }
    tokens, n_words = sum(s["tokens"] for s in splits.values()), sum(words.values())
    return {
        "out": str(out),
        "raw": str(raw),
        "manifest": str(out / cb.MANIFEST),
        "books": {
            "found": download["found"],
            "downloaded": download["downloaded"],
            "skipped": download["skipped"],
            "failed": download["failed"],
            "raw_files": manifest["books"]["raw_files"],
            "kept": manifest["books"]["kept"],
        },
        "splits": splits,
        "tokenizer": {
            "vocab_size": manifest["tokenizer"]["vocab_size"],
            "fertility": round(tokens / n_words, 4) if n_words else None,
        },
        "seconds": manifest["build"]["seconds"],
    }


# -- train-model -------------------------------------------------------------------------------------
def train_config(
    corpus: str,
    run: str,
    preset: str,
    max_steps: int | None,
    overrides: dict | None,
    time_budget: str | float | None = None,
):
    """TrainConfig from the flow's parameters. `overrides` may name TrainConfig fields and ModelConfig
    fields (the latter become model overrides; or put them under a "model" key). Unknown names fail."""
    from dataclasses import fields

    from training.model import ModelConfig

    overrides = dict(overrides or {})
    model = dict(overrides.pop("model", None) or {})
    fixed = {"corpus", "run_dir", "preset", "max_steps", "model_overrides", "time_budget"}
    train_names = {f.name for f in fields(TrainConfig)} - fixed
    model_names = {f.name for f in fields(ModelConfig)}
    kwargs = {"progress": False}  # the flow reports progress as an artifact instead of a tqdm bar
    for name, value in overrides.items():
        if name in train_names:
            kwargs[name] = value
        elif name in model_names:
            model[name] = value
        else:
            raise ConfigError(f"unknown override {name!r}: not a TrainConfig or ModelConfig field")
    return TrainConfig(
        corpus=str(corpus),
        run_dir=str(run),
        preset=preset,
        max_steps=max_steps,
        time_budget=time_budget,
        model_overrides=model,
        **kwargs,
    )


@flow(name="train-model", log_prints=True)
def train_model_flow(
    corpus: str,
    run: str,
    preset: str = TrainConfig.preset,
    max_steps: int | None = TrainConfig.max_steps,
    overrides: dict | None = None,
    nproc: int = 1,
    time_budget: float | str | None = None,
) -> dict:
    """Train (or continue) the run folder RUN on a built corpus, up to `max_steps` steps in total or
    for `time_budget` ("30m", "2h": training time; the learning rate decays over it), whichever ends first.

    overrides: TrainConfig fields (batch_size, lr, eval_every, ...) and ModelConfig fields (n_layer,
    n_embd, ...) replacing the defaults and the preset's values. nproc > 1 launches torchrun with
    that many DDP processes on the machine that runs the flow (one per GPU; gloo on CPU).
    """
    from training.metrics import read_metrics

    config = train_config(corpus, run, preset, max_steps, overrides, time_budget)
    cb.load_manifest(corpus)  # a clear error for a corpus that is missing or unfinished
    by_time = config.time_budget is not None
    total = int(config.time_budget) if by_time else config.max_steps
    progress = artifacts.Progress(
        "train-progress", total, "training seconds" if by_time else "training steps"
    )

    def on_log(record: dict) -> None:  # each metrics record, from train() or torchrun's rank 0
        done = int(record["train_seconds"]) if by_time else record["step"]
        progress.advance(done - progress.done)

    if nproc > 1:
        summary = tasks.train_model_torchrun(config, nproc, on_log)
    else:
        summary = tasks.train_model(config, on_log)
    progress.set(int(summary["train_seconds"]) if by_time else summary["step"])
    artifacts.training_artifacts(summary, read_metrics(run), run)
    if summary["interrupted"]:
        raise RuntimeError(
            f"training stopped by signal {summary['interrupted']} at step {summary['step']}; "
            "rerun to continue from its checkpoint"
        )
    keys = ("run_dir", "start_step", "step", "final_loss", "val_loss", "val_bpb", "checkpoint", "tokens_seen")
    keys += ("train_seconds", "eval_seconds")
    return {k: summary.get(k) for k in keys}


# -- corpus-and-train --------------------------------------------------------------------------------
@flow(name="corpus-and-train")
def corpus_and_train_flow(
    source: str,
    out: str,
    run: str,
    raw: str | None = None,
    limit: int | None = None,
    ids: list[int] | None = None,
    vocab_size: int = TokenizerConfig.vocab_size,
    model_type: str = TokenizerConfig.model_type,
    workers: int | None = None,
    rate: float = 1.0,
    task_runner: str = "threads",
    dask_address: str | None = None,
    extra: list[str] | None = None,
    text_field: str = "text",
    preset: str = TrainConfig.preset,
    max_steps: int | None = TrainConfig.max_steps,
    overrides: dict | None = None,
    nproc: int = 1,
    time_budget: float | str | None = None,
) -> dict:
    """The project's main job: build-corpus into OUT, then train-model into RUN on it."""
    # a bad preset, override or budget fails before any download
    train_config(out, run, preset, max_steps, overrides, time_budget)
    corpus = build_corpus_flow(
        source=source,
        out=out,
        raw=raw,
        limit=limit,
        ids=ids,
        vocab_size=vocab_size,
        model_type=model_type,
        workers=workers,
        rate=rate,
        task_runner=task_runner,
        dask_address=dask_address,
        extra=extra,
        text_field=text_field,
    )
    trained = train_model_flow(
        corpus=out,
        run=run,
        preset=preset,
        max_steps=max_steps,
        overrides=overrides,
        nproc=nproc,
        time_budget=time_budget,
    )
    return {"corpus": corpus, "train": trained}


if __name__ == "__main__":  # python -m pipelines.flows SOURCE OUT [LIMIT]: a quick build in-process
    import json
    import sys

    args = sys.argv[1:]
    if len(args) not in (2, 3):
        sys.exit("usage: python -m pipelines.flows SOURCE OUT [LIMIT]")
    limit_arg = int(args[2]) if len(args) == 3 else None
    print(json.dumps(build_corpus_flow(args[0], args[1], limit=limit_arg), indent=2))
