"""Raw store (+ extra sources) -> corpus folder: every stage of corpus/ composed as one pipeline,
resumable and deterministic.

    per item (an executor)    book: clean_book -> MinHash signature -> OUT/.cache/books/<key>.json
                              extra sources' documents, a chunk at a time (corpus/documents.py)
    global, streaming         near-duplicate books -> split by book -> near-duplicate documents ->
                              duplicate paragraphs (books, then documents) -> SentencePiece on train
                              -> encode -> Parquet shards (the books' part, then the documents')
    last                      README.md (corpus/card.py), then manifest.json (corpus/manifest.py);
                              then the new corpus replaces OUT (corpus/staging.py)

One build, run by any executor (corpus/executor.py): `ptgpt corpus build` passes process pools, the
Prefect flow in pipelines/ passes executors that run one Prefect task per book or chunk. Everything
else (validation, the global stages, the manifest, the swap) is this module's, whoever runs it.

Nothing good is destroyed. Inputs are checked before any work (`check_build_inputs`, `check_sources`,
`check_disk_space`); the corpus is built in a staging folder next to OUT, manifest last, and only a
complete one replaces OUT, so a failed build leaves the previous corpus byte-identical.

Resumable: per-item results are cached under OUT/.cache, keyed by their input, configuration and a
hash of the code (corpus/cache.py), so a rerun only cleans what is new. The tokenizer is cached the
same way, keyed by its training input. Same inputs and config -> byte-identical shards.

Memory: the build never holds the corpus text. Executors return small summaries (counts and MinHash
signatures); the text is read back from the cache one book or chunk at a time in each later pass.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from itertools import chain
from pathlib import Path

from tqdm import tqdm

from common import corpus_format as fmt
from common.errors import UserError, disk_error
from common.files import atomic_write, write_json_atomic, write_text_atomic
from corpus.books import (  # noqa: F401  (the build's names, for its callers)
    GUTENBERG,
    BookPart,
    BookSelection,
    BookSummary,
    RawBook,
    book_cache_key,
    iter_split_paragraphs,
    list_raw_books,
    plan_paragraphs,
    select_books,
)
from corpus.cache import digest, plain
from corpus.card import dataset_card
from corpus.clean import BookRejected, CleanConfig, clean_book
from corpus.dedup import DedupConfig, ParagraphDedup, book_signature
from corpus.documents import ChunkCleaner, DocumentPart, Spool, clean_sources, spool_documents
from corpus.executor import Executor, process_pool
from corpus.manifest import gutenberg_source_entry, load_manifest, make_manifest  # noqa: F401
from corpus.shards import ShardConfig, ShardWriter
from corpus.sources import ExtraSource, SourcesConfig, check_sources, local_bytes
from corpus.split import SPLITS, SplitConfig
from corpus.staging import finish_interrupted_swap, inside, is_corpus_folder, staging_dir, swap_in
from corpus.tokenizer import TokenizerConfig, encode_batch, every_kth, load_tokenizer, train_tokenizer

SCHEMA_VERSION = fmt.SCHEMA_VERSION
MANIFEST = fmt.MANIFEST_FILE
TOKENIZER_FILE = fmt.TOKENIZER_FILE
CACHE_DIR = fmt.CACHE_DIR
MIN_VOCAB_SIZE = 256 + 4 + 1  # byte fallback's 256 pieces, 4 special ids, and at least one more piece
# Disk a build needs, per input byte: the cache and the spool hold one copy of the text, the shards
# (text + token ids, zstd) about 1.5 bytes per input byte for every copy a weight asks for.
CACHED_BYTES_PER_BYTE = 2.0
SHARD_BYTES_PER_BYTE = 1.5


@dataclass
class CorpusConfig:
    clean: CleanConfig = field(default_factory=CleanConfig)
    dedup: DedupConfig = field(default_factory=DedupConfig)
    split: SplitConfig = field(default_factory=SplitConfig)
    tokenizer: TokenizerConfig = field(default_factory=TokenizerConfig)
    shards: ShardConfig = field(default_factory=ShardConfig)

    def to_dict(self) -> dict:
        return {name: plain(asdict(getattr(self, name))) for name in self.__dataclass_fields__}


# ---------------------------------------------------------------------------------------------
# Before any work: inputs that cannot give a corpus, an OUT that must not be touched, a disk too small


def check_vocab_size(vocab: int) -> None:
    if vocab < MIN_VOCAB_SIZE:
        raise UserError(
            f"--vocab-size {vocab} is too small: byte fallback alone takes 256 ids and the special "
            f"ids 4 more; use at least {MIN_VOCAB_SIZE} (8000 to 32000 for a real corpus)"
        )


def check_build_inputs(
    raw_dir: str | Path,
    out_dir: str | Path,
    raw_books: Sequence[RawBook] | None,
    config: CorpusConfig,
    *,
    force: bool = False,
    allow_empty_splits: bool = False,
) -> None:
    """Raise UserError for inputs that cannot give a corpus, before anything is read or written.

    raw_books None: not known yet (a flow checks before it downloads them).
    """
    raw_dir, out_dir = Path(raw_dir), Path(out_dir)
    if inside(out_dir, raw_dir):
        raise UserError(
            f"--out {out_dir} is the raw store {raw_dir} or lies inside it: choose another folder"
        )
    if inside(raw_dir, out_dir):
        raise UserError(f"the raw store {raw_dir} lies inside --out {out_dir}: choose another folder")
    if not force and not is_corpus_folder(out_dir):
        raise UserError(
            f"--out {out_dir} is not empty and is not a ptgpt corpus: choose an empty folder, "
            "or pass --force to build there (files that are not part of a corpus are kept)"
        )
    check_vocab_size(config.tokenizer.vocab_size)
    if raw_books is None:
        return
    if not raw_books:
        raise UserError(f"no <id>.txt books in {raw_dir}: is it the folder `ptgpt scrape --out` wrote?")
    n_books = len({b.book_id for b in raw_books})
    if n_books < len(SPLITS) and not allow_empty_splits:
        raise UserError(_too_few_books(n_books, f"{raw_dir} holds"))


def _too_few_books(n: int, where: str) -> str:
    return (
        f"{where} {n} book(s), but train, validation and test need at least one each: "
        f"{len(SPLITS)} books or more (add books, or pass --allow-empty-splits)"
    )


def check_disk_space(
    raw_books: Sequence[RawBook], extras: Sequence[ExtraSource], split: SplitConfig, out_dir: Path
) -> None:
    """UserError when the projected size of a build with extra sources (cache, spool and shards;
    weights count) is more than the free space where OUT is written: better before the build than a
    full disk hours into it. A books-only build is small and bounded; a full disk is then caught
    where it happens (disk_error), as for any write."""
    if not extras:
        return
    train = 1 - split.validation_fraction - split.test_fraction
    need = sum(b.path.stat().st_size for b in raw_books) * (CACHED_BYTES_PER_BYTE + SHARD_BYTES_PER_BYTE)
    for src in extras:
        copies = train * src.weight + (1 - train)
        need += local_bytes(src) * (CACHED_BYTES_PER_BYTE + SHARD_BYTES_PER_BYTE * copies)
    where = out_dir.absolute()
    while not where.exists():
        where = where.parent
    free = shutil.disk_usage(where).free
    if need > free:
        weights = ", ".join(f"--extra {s.spec}:{s.weight:g}" for s in extras)
        raise UserError(
            f"the build would write about {need / 1e6:,.0f} MB ({weights}) but {where} has "
            f"{free / 1e6:,.0f} MB free: lower the weights, leave a source out or free some space"
        )


# ---------------------------------------------------------------------------------------------
# Per book: clean, sign, cache


def process_book(raw: RawBook, config: CorpusConfig, cache_dir: str | Path) -> BookSummary:
    """Clean one raw book and compute its MinHash signature, or read both from the cache."""
    data = raw.path.read_bytes()
    key = book_cache_key(hashlib.sha256(data).hexdigest(), raw.book_id, config)
    cache_file = Path(cache_dir) / "books" / f"{key}.json"
    cached = cache_file.exists()
    if cached:
        entry = json.loads(cache_file.read_text(encoding="utf-8"))
    else:
        try:
            book = clean_book(data, raw.book_id, config.clean)
            entry = {
                "status": "ok",
                "book": book.to_dict(),
                "signature": book_signature(book.paragraphs, config.dedup),
            }
        except BookRejected as e:
            entry = {"status": "rejected", "reason": e.reason, "raw_bytes": len(data)}
        except Exception as e:  # a bug, not a bad book: stop loudly, naming the file
            raise RuntimeError(f"cleaning {raw.path} failed: {type(e).__name__}: {e}") from e
        cache_file.parent.mkdir(parents=True, exist_ok=True)
        write_json_atomic(cache_file, entry, indent=None)
    summary = BookSummary(raw.key, raw.book_id, str(cache_file), entry["status"], entry.get("reason"))
    summary.cached = cached
    if entry["status"] == "ok":
        book = entry["book"]
        meta = book.get("metadata") or {}
        summary.title = raw.title or meta.get("title") or ""
        summary.author = raw.author or meta.get("author") or ""
        summary.paragraphs = len(book["paragraphs"])
        summary.kept_chars = book.get("kept_chars") or sum(len(p) for p in book["paragraphs"])
        summary.raw_bytes = book.get("raw_bytes") or len(data)
        summary.encoding = book.get("encoding")
        summary.drops = dict(book.get("drops") or {})
        summary.signature = entry["signature"]
    else:
        summary.raw_bytes = entry.get("raw_bytes", len(data))
    return summary


@dataclass
class BookCleaner:
    """The per-book step of a build as one picklable callable, so any executor can ship it."""

    config: CorpusConfig
    cache_dir: str

    def __call__(self, raw: RawBook) -> BookSummary:
        return process_book(raw, self.config, self.cache_dir)


def clean_books(
    raw_books: Sequence[RawBook],
    config: CorpusConfig,
    cache_dir: str | Path,
    workers: int | None = None,
    progress: bool = True,
) -> list[BookSummary]:
    """`process_book` over all books in a process pool; summaries come back in input order."""
    return _map_books(process_pool(workers or os.cpu_count() or 1), BookCleaner(config, str(cache_dir)),
                      raw_books, progress)  # fmt: skip


def _map_books(
    map_books: Executor, cleaner: BookCleaner, raw_books: Sequence[RawBook], progress: bool
) -> list:
    out = []
    with tqdm(total=len(raw_books), desc="clean", unit="book", disable=not progress, file=sys.stderr) as bar:
        for summary in map_books(cleaner, raw_books):
            out.append(summary)
            bar.update()
    return out


# ---------------------------------------------------------------------------------------------
# The global stages


Part = BookPart | DocumentPart  # what the tokenizer and the shard writer read, in this order


def train_corpus_tokenizer(
    parts: Sequence[Part], config: CorpusConfig, out_dir: str | Path, cache_dir: str | Path
) -> Path:
    """SentencePiece on the train split only (of the mix, with weights), streamed; cached by a digest
    of its exact input."""
    total_chars = sum(part.train_chars() for part in parts)
    if not total_chars:
        raise UserError("the train split is empty: nothing to train a tokenizer on")
    key: dict = {"tokenizer": plain(asdict(config.tokenizer))}
    for part in parts:
        key.update(part.tokenizer_key())
    cached = Path(cache_dir) / "tokenizers" / f"{digest(key)[:32]}.model"
    if not cached.exists():
        text: Iterator[str] = chain.from_iterable(part.train_paragraphs() for part in parts)
        if config.tokenizer.max_training_chars:
            text = every_kth(text, total_chars, config.tokenizer.max_training_chars)
        try:
            train_tokenizer(text, cached.with_suffix(""), config.tokenizer)
        except RuntimeError as e:
            if "SentencePiece" not in str(e):
                raise
            raise UserError(f"{e} (--vocab-size {config.tokenizer.vocab_size})") from e
    out = Path(out_dir) / TOKENIZER_FILE
    atomic_write(out, lambda tmp: shutil.copyfile(cached, tmp))
    return out


def write_shards(
    parts: Sequence[Part],
    tokenizer_path: str | Path,
    out_dir: str | Path,
    config: CorpusConfig,
    workers: int | None = None,
    progress: bool = True,
) -> dict[str, list[dict]]:
    """Encode every part's rows and write the shards of each split (the books first); split -> shard
    entries. A mix of sources has the `source` and `source_id` columns."""
    sp = load_tokenizer(tokenizer_path)
    threads = workers or os.cpu_count() or 1
    schema = fmt.SOURCES_SHARD_SCHEMA if len(parts) > 1 else fmt.SHARD_SCHEMA
    books = sum(len(p.selection.kept) for p in parts if isinstance(p, BookPart))
    shards = {}
    with tqdm(total=books, desc="shards", unit="book", disable=not progress, file=sys.stderr) as bar:
        for split in SPLITS:
            with ShardWriter(out_dir, split, config.shards, schema) as writer:
                for part in parts:
                    part.write(writer, split, lambda texts: encode_batch(sp, texts, threads), bar)
            shards[split] = writer.shards
    return shards


@dataclass
class BuildPlan:
    """Everything one build reads and where it writes: what `build_corpus` checked and resolved."""

    raw_dir: Path
    staging: Path  # the folder the stages write into; it replaces OUT when complete
    config: CorpusConfig
    raw_books: list[RawBook]
    cache_dir: Path
    map_books: Executor
    map_chunks: Executor
    extras: list[ExtraSource] = field(default_factory=list)
    sources_config: SourcesConfig = field(default_factory=SourcesConfig)
    workers: int | None = None
    progress: bool = True
    allow_empty_splits: bool = False
    build_info: dict = field(default_factory=dict)


class _Clock:
    """Seconds per stage, for the manifest's `build.stage_seconds`."""

    def __init__(self, earlier: dict[str, float]):
        self.start = self.last = time.perf_counter()
        self.earlier, self.times = earlier, dict(earlier)

    def lap(self, stage: str) -> None:
        now = time.perf_counter()
        self.times[stage] = round(now - self.last, 3)
        self.last = now

    def info(self) -> dict:
        return {
            "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "seconds": round(time.perf_counter() - self.start + sum(self.earlier.values()), 3),
            "stage_seconds": self.times,
        }


def _selected_books(plan: BuildPlan, summaries: list[BookSummary]) -> BookSelection:
    selection = select_books(summaries, plan.config)
    if not selection.kept:
        reasons = Counter(selection.rejected.values())
        raise UserError(
            f"every one of the {len(summaries)} books of {plan.raw_dir} was rejected "
            f"({', '.join(f'{k}: {v}' for k, v in reasons.most_common())}): nothing to build"
        )
    return selection


def _build(plan: BuildPlan) -> dict:
    """The stages, writing into `plan.staging`; returns the manifest to write."""
    clock = _Clock(plan.build_info.pop("stage_seconds", {}))  # e.g. a flow's download
    cleaner = BookCleaner(plan.config, str(plan.cache_dir))
    summaries = _map_books(plan.map_books, cleaner, plan.raw_books, plan.progress)
    clock.lap("clean")
    selection = _selected_books(plan, summaries)
    clock.lap("select")
    spool = Spool(plan.staging / ".spool")
    if plan.extras:
        cleaner = ChunkCleaner(plan.sources_config, plan.config.dedup, str(plan.cache_dir))
        books = [(s.key, s.signature) for s in selection.kept]
        cleaned = clean_sources(plan.extras, books, cleaner, spool.dir, plan.map_chunks, plan.progress)
        clock.lap("clean_extra")
    dedup = ParagraphDedup(plan.config.dedup, loose=bool(plan.extras))
    selection, keep, duplicate_paragraphs = plan_paragraphs(selection, plan.config, plan.progress, dedup)
    if not plan.allow_empty_splits and not all(selection.splits.values()):
        raise UserError(_too_few_books(len(selection.kept), "after cleaning and deduplication it keeps"))
    clock.lap("dedup_paragraphs")
    parts: list[Part] = [BookPart(selection, keep)]
    if plan.extras:
        stats = spool_documents(cleaned, dedup, plan.sources_config, plan.config.split, spool, plan.progress)
        parts.append(DocumentPart(stats, spool, plan.sources_config))
        del cleaned
        clock.lap("dedup_extra")
    del dedup  # deduplication's memory is not kept through the tokenizer's (SentencePiece's)
    tokenizer_path = train_corpus_tokenizer(parts, plan.config, plan.staging, plan.cache_dir)
    clock.lap("tokenizer")
    shards = write_shards(parts, tokenizer_path, plan.staging, plan.config, plan.workers, plan.progress)
    shutil.rmtree(spool.dir, ignore_errors=True)
    clock.lap("shards")
    books_entry = {**gutenberg_source_entry(summaries, selection), "splits": parts[0].splits}
    mix = parts[1].manifest_entries(books_entry) if len(parts) > 1 else {}  # a books-only manifest: as ever
    manifest = make_manifest(
        plan.raw_dir, plan.staging, plan.config.to_dict(), plan.config.tokenizer, summaries, selection,
        duplicate_paragraphs, shards, {**clock.info(), **plan.build_info}, mix,
    )  # fmt: skip
    return manifest


def build_corpus(
    raw_dir: str | Path,
    out_dir: str | Path,
    config: CorpusConfig | None = None,
    workers: int | None = None,
    progress: bool = True,
    cache_dir: str | Path | None = None,
    *,
    raw_books: Sequence[RawBook] | None = None,
    map_books: Executor | None = None,
    build_info: dict | None = None,
    source: str | None = None,
    force: bool = False,
    allow_empty_splits: bool = False,
    extras: Sequence[ExtraSource] = (),
    sources_config: SourcesConfig | None = None,
    map_chunks: Executor | None = None,
) -> dict:
    """Build the corpus folder OUT from a raw store; returns the manifest (also written to OUT).

    extras: other text sources (corpus/sources.py `parse_extras`), read, cleaned, filtered and
    deduplicated against the books and mixed in; without them the build is exactly the books'.

    raw_books: the books to use (default: every book of the raw store). map_books, map_chunks: the
    executors of the per-book and per-chunk stages (default: process pools of `workers`).
    build_info: extra entries for the manifest's `build` (a flow adds its run id, `stage_seconds` its
    download time). source: where the raw store's books came from, recorded in the manifest. force:
    build into a non-empty OUT that is not a corpus. allow_empty_splits: build from fewer than 3 books.
    Raises UserError for bad input or a full or read-only disk; OUT is then left as it was.
    """
    config = config or CorpusConfig()
    out_dir = Path(out_dir)
    if not Path(raw_dir).is_dir():
        raise UserError(f"raw store not found: {raw_dir} (run `ptgpt scrape --out {raw_dir}` first)")
    raw_books = list_raw_books(raw_dir) if raw_books is None else raw_books
    check_build_inputs(
        raw_dir, out_dir, raw_books, config, force=force, allow_empty_splits=allow_empty_splits
    )
    check_sources(extras, out_dir, raw_dir)
    check_disk_space(raw_books, extras, config.split, out_dir)
    out_dir = out_dir.resolve()  # "." has no name to put a staging folder next to; a link, its target
    finish_interrupted_swap(out_dir)
    staging = staging_dir(out_dir)
    pool = process_pool(workers or os.cpu_count() or 1)
    plan = BuildPlan(
        raw_dir=Path(raw_dir),
        staging=staging,
        config=config,
        raw_books=list(raw_books),
        cache_dir=Path(cache_dir) if cache_dir else out_dir / CACHE_DIR,
        map_books=map_books or pool,
        map_chunks=map_chunks or pool,
        extras=list(extras),
        sources_config=sources_config or SourcesConfig(),
        workers=workers,
        progress=progress,
        allow_empty_splits=allow_empty_splits,
        build_info=dict(build_info or {}),
    )
    try:
        shutil.rmtree(staging, ignore_errors=True)  # what a killed build left
        staging.mkdir(parents=True)
        manifest = _build(plan)
        if source is not None:
            manifest["source"]["source"] = source
        write_text_atomic(staging / fmt.README_FILE, dataset_card(manifest))  # it names the source
        fmt.write_manifest(staging, manifest)  # last: the staged corpus is complete
        swap_in(staging, out_dir)
    except OSError as e:
        shutil.rmtree(staging, ignore_errors=True)
        user_error = disk_error(e, out_dir)
        if user_error is None:
            raise
        raise user_error from e
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return manifest
