"""Raw store -> corpus folder: every stage of corpus/ composed, resumable and deterministic.

    per book (an executor)    clean_book -> MinHash signature -> OUT/.cache/books/<key>.json
    global, streaming         near-duplicate books -> split by book -> exact-duplicate paragraphs
                              -> SentencePiece on train -> encode -> Parquet shards
    last                      README.md, then manifest.json; then the new corpus replaces OUT

One build, two ways to run its per-book stage. `build_corpus` takes a `map_books(fn, books)`
executor (as datatrove's pipelines take an executor): `ptgpt corpus build` passes `process_pool`,
the Prefect flow in pipelines/ passes a mapper that runs one Prefect task per book. Everything else
(validation, the global stages, the manifest, the swap) is this module's, whoever runs it.

Nothing good is destroyed. Inputs are checked before any work (`check_build_inputs`); the corpus is
built in a staging folder next to OUT (`.OUT.building`), manifest last, and only a complete one
replaces OUT (`swap_in`), so a build that fails (bad input, full disk, a bug, a kill) leaves the
previous corpus byte-identical.

Resumable: the per-book result is cached as JSON under OUT/.cache, keyed by the raw file's sha256,
the cleaning config, the book id and a hash of the cleaning code, so a rerun after a crash (or on a
raw store that gained books) only cleans what is new, and a change to the cleaning code invalidates
the cache by itself. The tokenizer is cached the same way, keyed by its training input. The global
stages are cheap and always rerun. Same raw store and config -> byte-identical shards.

Memory: the build never holds the corpus text. The executor returns small summaries (counts and
the MinHash signature); the text is read back from the cache one book at a time in each later pass.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
from tqdm import tqdm

from common import corpus_format as fmt
from common.errors import UserError, disk_error
from common.files import atomic_write, sha256_file, write_json_atomic, write_text_atomic
from corpus.clean import BookRejected, CleanConfig, CleanedBook, clean_book
from corpus.dedup import (
    DedupConfig,
    FingerprintSet,
    book_signature,
    dedup_paragraphs,
    find_near_duplicate_books,
)
from corpus.shards import ShardConfig, ShardWriter
from corpus.sources import (
    GUTENBERG,
    ChunkCleaner,
    ChunkMapper,
    ExtraSource,
    SignatureFile,
    SourcesConfig,
    SourceStats,
    check_sources,
    chunk_process_pool,
    clean_source,
    document_book_id,
    iter_spool,
    loose_fingerprint,
    near_duplicates,
    spool_documents,
)
from corpus.split import SPLITS, SplitConfig, split_books
from corpus.tokenizer import (
    TokenizerConfig,
    encode_batch,
    every_kth,
    load_tokenizer,
    tokenizer_info,
    train_tokenizer,
)

SCHEMA_VERSION = fmt.SCHEMA_VERSION
MANIFEST = fmt.MANIFEST_FILE
TOKENIZER_FILE = fmt.TOKENIZER_FILE
CACHE_DIR = fmt.CACHE_DIR
MIN_VOCAB_SIZE = 256 + 4 + 1  # byte fallback's 256 pieces, 4 special ids, and at least one more piece
# The per-book result depends on these modules' code: their bytes are part of the cache key.
_CLEANING_MODULES = ("decode", "boilerplate", "normalize", "filters", "clean", "dedup")


@dataclass
class CorpusConfig:
    clean: CleanConfig = field(default_factory=CleanConfig)
    dedup: DedupConfig = field(default_factory=DedupConfig)
    split: SplitConfig = field(default_factory=SplitConfig)
    tokenizer: TokenizerConfig = field(default_factory=TokenizerConfig)
    shards: ShardConfig = field(default_factory=ShardConfig)

    def to_dict(self) -> dict:
        return {name: _plain(asdict(getattr(self, name))) for name in self.__dataclass_fields__}


def _plain(obj):
    """JSON-safe copy of a config dict (tuples -> lists, sets -> sorted lists)."""
    if isinstance(obj, dict):
        return {str(k): _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_plain(v) for v in obj]
    if isinstance(obj, (set, frozenset)):
        return sorted(_plain(v) for v in obj)
    if isinstance(obj, Path):
        return str(obj)
    return obj


def _digest(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, ensure_ascii=False).encode()).hexdigest()


def _hash_cleaning_code() -> str:
    h = hashlib.sha256()
    here = Path(__file__).parent
    for name in _CLEANING_MODULES:
        p = here / f"{name}.py"
        h.update(name.encode() + b"\0" + (p.read_bytes() if p.exists() else b"") + b"\0")
    return h.hexdigest()[:16]


# Taken once, when the cleaning modules were just imported: the version of the code that runs, even
# if the files change on disk during a build (pool workers are forked and inherit it).
_CODE_VERSION = _hash_cleaning_code()


def cleaning_code_version() -> str:
    """Hash of the cleaning and signature code, so a code change invalidates cached books."""
    return _CODE_VERSION


# ---------------------------------------------------------------------------------------------
# The raw store


@dataclass(frozen=True)
class RawBook:
    key: str  # the file stem: "3333", or "55752.alt-2017" for a second file of one ebook
    book_id: int
    path: Path
    title: str | None = None  # from manifest.jsonl when present
    author: str | None = None


_STEM = re.compile(r"^(\d+)(?:[._-].*)?$")


def list_raw_books(raw_dir: str | Path) -> list[RawBook]:
    """The books of a raw store (docs/formats.md), sorted by (book id, key).

    `<id>.txt` files, plus `<id>.<anything>.txt` as further files of the same ebook (they are
    deduplicated like other editions). Titles and authors come from `manifest.jsonl` when present
    (last line per id wins).
    """
    raw_dir = Path(raw_dir)
    if not raw_dir.is_dir():
        raise FileNotFoundError(f"raw store not found: {raw_dir}")
    meta: dict[int, dict] = {}
    manifest = raw_dir / "manifest.jsonl"
    if manifest.exists():
        for line in manifest.read_text(encoding="utf-8").splitlines():
            try:
                rec = json.loads(line)
                meta[int(rec["id"])] = rec
            except (json.JSONDecodeError, KeyError, TypeError, ValueError):
                continue  # a line cut by a crash of the scraper
    books = []
    for path in raw_dir.glob("*.txt"):
        m = _STEM.match(path.name[: -len(".txt")])
        if not m:
            continue
        book_id = int(m.group(1))
        rec = meta.get(book_id, {})
        authors = [a for a in rec.get("authors") or [] if a]
        books.append(
            RawBook(
                key=path.name[: -len(".txt")],
                book_id=book_id,
                path=path,
                title=rec.get("title") or None,
                author="; ".join(authors) or None,
            )
        )
    return sorted(books, key=lambda b: (b.book_id, b.key))


# ---------------------------------------------------------------------------------------------
# Before any work: inputs that cannot give a corpus, and an OUT that must not be touched

_CORPUS_ENTRIES = {fmt.MANIFEST_FILE, fmt.TOKENIZER_FILE, fmt.README_FILE, fmt.CACHE_DIR, *fmt.SPLITS}


def is_corpus_folder(out_dir: str | Path) -> bool:
    """Whether OUT may be (re)built: missing, empty, a ptgpt corpus, or what an unfinished build left."""
    out_dir = Path(out_dir)
    if not out_dir.exists():
        return True
    if not out_dir.is_dir():
        return False
    names = {p.name for p in out_dir.iterdir()}
    if fmt.MANIFEST_FILE in names:
        return True
    if not names <= _CORPUS_ENTRIES:
        return False
    readme = out_dir / fmt.README_FILE
    return not readme.exists() or readme.read_text(encoding="utf-8", errors="replace").startswith(
        "---\nlanguage:\n- pt\npretty_name: ptgpt"
    )


def _inside(path: Path, folder: Path) -> bool:
    path, folder = path.resolve(), folder.resolve()
    return path == folder or folder in path.parents


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
    if _inside(out_dir, raw_dir):
        raise UserError(
            f"--out {out_dir} is the raw store {raw_dir} or lies inside it: choose another folder"
        )
    if _inside(raw_dir, out_dir):
        raise UserError(f"the raw store {raw_dir} lies inside --out {out_dir}: choose another folder")
    if not force and not is_corpus_folder(out_dir):
        raise UserError(
            f"--out {out_dir} is not empty and is not a ptgpt corpus: choose an empty folder, "
            "or pass --force to build there (files that are not part of a corpus are kept)"
        )
    vocab = config.tokenizer.vocab_size
    if vocab < MIN_VOCAB_SIZE:
        raise UserError(
            f"--vocab-size {vocab} is too small: byte fallback alone takes 256 ids and the special "
            f"ids 4 more; use at least {MIN_VOCAB_SIZE} (8000 to 32000 for a real corpus)"
        )
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


# ---------------------------------------------------------------------------------------------
# Per book: clean, sign, cache


@dataclass
class BookSummary:
    """What the global stages need of one book; the text stays in the cache file."""

    key: str
    book_id: int
    cache_file: str
    status: str  # "ok" or "rejected"
    reason: str | None = None
    title: str = ""
    author: str = ""
    paragraphs: int = 0
    kept_chars: int = 0
    raw_bytes: int = 0
    encoding: str | None = None
    drops: dict[str, int] = field(default_factory=dict)
    signature: list[int] = field(default_factory=list)
    cached: bool = False  # read from the cache, not cleaned by this call


def book_cache_key(raw_sha256: str, book_id: int, config: CorpusConfig) -> str:
    return _digest(
        {
            "raw": raw_sha256,
            "id": book_id,
            "clean": _plain(asdict(config.clean)),
            "dedup": [config.dedup.num_perm, config.dedup.shingle_words, config.dedup.seed],
            "code": cleaning_code_version(),
        }
    )[:32]


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


# An executor of the per-book stage: fn over every book, results in input order. A failure of any
# call must raise (a bug is never one book's problem).
BookMapper = Callable[[Callable[[RawBook], BookSummary], Sequence[RawBook]], list[BookSummary]]


def process_pool(workers: int | None = None, progress: bool = True) -> BookMapper:
    """The plain executor: a process pool of `workers` (in this process for 1), with a progress bar."""
    workers = workers or os.cpu_count() or 1

    def map_books(fn: Callable[[RawBook], BookSummary], books: Sequence[RawBook]) -> list[BookSummary]:
        out: list[BookSummary] = []
        with tqdm(total=len(books), desc="clean", unit="book", disable=not progress, file=sys.stderr) as bar:
            if workers == 1:
                for book in books:
                    out.append(fn(book))
                    bar.update()
                return out
            with ProcessPoolExecutor(max_workers=workers) as pool:
                for summary in pool.map(fn, books, chunksize=1):
                    out.append(summary)
                    bar.update()
        return out

    return map_books


def clean_books(
    raw_books: Sequence[RawBook],
    config: CorpusConfig,
    cache_dir: str | Path,
    workers: int | None = None,
    progress: bool = True,
) -> list[BookSummary]:
    """`process_book` over all books in a process pool; summaries come back in input order."""
    return process_pool(workers, progress)(BookCleaner(config, str(cache_dir)), raw_books)


def read_cleaned_book(summary: BookSummary) -> CleanedBook:
    entry = json.loads(Path(summary.cache_file).read_text(encoding="utf-8"))
    return CleanedBook.from_dict(entry["book"])


# ---------------------------------------------------------------------------------------------
# Global: which books, which split, which paragraphs


@dataclass
class BookSelection:
    kept: list[BookSummary]  # sorted by book id
    rejected: dict[str, str]  # key -> reason
    near_duplicates: list[dict]  # DuplicateGroup.to_dict() per group
    splits: dict[str, list[int]]


def select_books(summaries: Sequence[BookSummary], config: CorpusConfig) -> BookSelection:
    """Drop rejected books and near-duplicate editions, then split the rest by book id."""
    ok = [s for s in summaries if s.status == "ok"]
    rejected = {s.key: s.reason or "rejected" for s in summaries if s.status != "ok"}
    groups = find_near_duplicate_books(
        {s.key: s.signature for s in ok}, config.dedup, sizes={s.key: s.kept_chars for s in ok}
    )
    dropped = {k for g in groups for k in g.dropped}
    kept: dict[int, BookSummary] = {}
    for s in sorted(ok, key=lambda s: (s.book_id, s.key != str(s.book_id), s.key)):
        if s.key in dropped:
            continue
        if s.book_id in kept:  # a second file of one ebook that is not a near-duplicate of it
            rejected[s.key] = "duplicate_book_id"
            continue
        kept[s.book_id] = s
    splits = split_books(kept.keys(), config.split)
    return BookSelection(
        kept=[kept[b] for b in sorted(kept)],
        rejected=dict(sorted(rejected.items())),
        near_duplicates=[g.to_dict() for g in groups],
        splits=splits,
    )


def plan_paragraphs(
    selection: BookSelection,
    config: CorpusConfig,
    progress: bool = True,
    seen: FingerprintSet | None = None,
    loose: FingerprintSet | None = None,
) -> tuple[BookSelection, dict[str, list[int]], int]:
    """Exact-duplicate paragraphs over all kept books in id order.

    Returns the selection without books left empty (every paragraph a duplicate of an earlier
    book: a volume reprinted inside a collection; they are reported as rejected), the indices of
    the paragraphs to keep per book key, and the number of paragraphs dropped. `seen` (exact) and
    `loose` (`loose_fingerprint`) collect the kept paragraphs' fingerprints for the extra sources.
    """
    seen = FingerprintSet() if seen is None else seen
    keep: dict[str, list[int]] = {}
    dropped = 0
    for s in tqdm(selection.kept, desc="dedup", unit="book", disable=not progress, file=sys.stderr):
        book = read_cleaned_book(s)
        keep[s.key] = dedup_paragraphs(book.paragraphs, seen, config.dedup)
        if loose is not None:
            long_kept = (book.paragraphs[i] for i in keep[s.key])
            loose.update(
                loose_fingerprint(p) for p in long_kept if len(p) >= config.dedup.min_paragraph_chars
            )
        dropped += len(book.paragraphs) - len(keep[s.key])
    empty = {s.key: s.book_id for s in selection.kept if not keep[s.key]}
    if empty:
        gone = set(empty.values())
        selection = BookSelection(
            kept=[s for s in selection.kept if s.key not in empty],
            rejected=dict(
                sorted({**selection.rejected, **dict.fromkeys(empty, "all_paragraphs_duplicate")}.items())
            ),
            near_duplicates=selection.near_duplicates,
            splits={name: [b for b in ids if b not in gone] for name, ids in selection.splits.items()},
        )
    return selection, {k: v for k, v in keep.items() if k not in empty}, dropped


def iter_split_paragraphs(
    selection: BookSelection, keep: dict[str, list[int]], split: str
) -> Iterator[tuple[BookSummary, list[int], list[str]]]:
    """(book, paragraph indices, texts) for each book of a split, in book id order."""
    ids = set(selection.splits[split])
    for s in selection.kept:
        if s.book_id in ids:
            paragraphs = read_cleaned_book(s).paragraphs
            idx = keep[s.key]
            yield s, idx, [paragraphs[i] for i in idx]


@dataclass
class ExtraMix:
    """The extra sources of a build, once deduplicated: their survivors wait in `spool_dir`."""

    sources: list[ExtraSource]
    stats: list[SourceStats]
    spool_dir: Path
    config: SourcesConfig
    gutenberg: dict = field(default_factory=dict)  # the books' per-source entry of the manifest

    def train_paragraphs(self) -> Iterator[str]:
        """The train documents' paragraphs, each document `copies` times (the source's weight)."""
        for rec in iter_spool(self.spool_dir, "train"):
            for _ in range(rec["c"]):
                yield from rec["t"]

    def train_chars(self) -> int:
        return sum(rec["c"] * sum(map(len, rec["t"])) for rec in iter_spool(self.spool_dir, "train"))


def train_corpus_tokenizer(
    selection: BookSelection,
    keep: dict[str, list[int]],
    config: CorpusConfig,
    out_dir: str | Path,
    cache_dir: str | Path,
    extra: ExtraMix | None = None,
) -> Path:
    """SentencePiece on the train split only (of the mix, with weights), streamed; cached by a digest
    of its exact input."""
    train_ids = set(selection.splits["train"])
    train = [s for s in selection.kept if s.book_id in train_ids]
    if not train:
        raise ValueError("the train split is empty: nothing to train a tokenizer on")
    key = {
        "tokenizer": _plain(asdict(config.tokenizer)),
        "books": [[Path(s.cache_file).stem, _digest(keep[s.key])] for s in train],
    }
    if extra is not None:
        key["extra"] = sha256_file(extra.spool_dir / "train.jsonl")
    input_key = _digest(key)[:32]
    cached = Path(cache_dir) / "tokenizers" / f"{input_key}.model"
    if not cached.exists():
        total_chars = sum(s.kept_chars for s in train) + (extra.train_chars() if extra else 0)

        def paragraphs() -> Iterator[str]:
            for _, _, texts in iter_split_paragraphs(selection, keep, "train"):
                yield from texts
            if extra is not None:
                yield from extra.train_paragraphs()

        text = paragraphs()
        if config.tokenizer.max_training_chars:
            text = every_kth(text, total_chars, config.tokenizer.max_training_chars)
        train_tokenizer(text, cached.with_suffix(""), config.tokenizer)
    out = Path(out_dir) / TOKENIZER_FILE
    atomic_write(out, lambda tmp: shutil.copyfile(cached, tmp))
    return out


def write_shards(
    selection: BookSelection,
    keep: dict[str, list[int]],
    tokenizer_path: str | Path,
    out_dir: str | Path,
    config: CorpusConfig,
    workers: int | None = None,
    progress: bool = True,
    extra: ExtraMix | None = None,
) -> dict[str, list[dict]]:
    """Encode every kept paragraph and write the shards of each split; split -> shard entries.

    With extra sources: the books first, then each split's documents from the spool (train ones
    `copies` times), with the `source` and `source_id` columns; per-source counts go to `extra`."""
    sp = load_tokenizer(tokenizer_path)
    threads = workers or os.cpu_count() or 1
    schema = fmt.SOURCES_SHARD_SCHEMA if extra is not None else fmt.SHARD_SCHEMA
    shards = {}
    bar = tqdm(total=len(selection.kept), desc="shards", unit="book", disable=not progress, file=sys.stderr)
    for split in SPLITS:
        with ShardWriter(out_dir, split, config.shards, schema) as writer:
            for s, idx, texts in iter_split_paragraphs(selection, keep, split):
                tokens = encode_batch(sp, texts, threads)
                writer.add_book(s.book_id, s.title, s.author, idx, texts, tokens, GUTENBERG, s.key)
                bar.update()
                if extra is not None:
                    _count(extra.gutenberg["splits"][split], texts, tokens, 1)
            if extra is not None:
                _write_documents(writer, sp, threads, extra, split)
        shards[split] = writer.shards
    bar.close()
    return shards


def _count(entry: dict, texts: Sequence[str], tokens: Sequence[Sequence[int]], copies: int) -> None:
    entry["rows"] += len(texts) * copies
    entry["tokens"] += sum(map(len, tokens)) * copies
    entry["bytes"] += sum(len(t.encode("utf-8")) for t in texts) * copies


def _write_documents(writer: ShardWriter, sp, threads: int, extra: ExtraMix, split: str) -> None:
    """Append a split's spooled documents, encoded in batches of about a thousand paragraphs."""
    batch: list[dict] = []

    def flush() -> None:
        texts = [t for rec in batch for t in rec["t"]]
        tokens = iter(encode_batch(sp, texts, threads))
        for rec in batch:
            ids = [next(tokens) for _ in rec["t"]]
            source = extra.sources[rec["s"]].name
            for copy in range(rec["c"]):
                book_id = document_book_id(source, rec["id"], copy)
                writer.add_book(book_id, "", "", rec["idx"], rec["t"], ids, source, rec["id"])
            _count(extra.stats[rec["s"]].splits[split], rec["t"], ids, rec["c"])
        batch.clear()

    paragraphs = 0
    for rec in iter_spool(extra.spool_dir, split):
        batch.append(rec)
        paragraphs += len(rec["t"])
        if paragraphs >= 1000:
            flush()
            paragraphs = 0
    flush()


# ---------------------------------------------------------------------------------------------
# Manifest and dataset card


def drop_counts(
    summaries: Sequence[BookSummary], selection: BookSelection, duplicate_paragraphs: int
) -> dict:
    """Books dropped by reason, and paragraphs dropped by reason (cleaning's plus deduplication)."""
    books = Counter(selection.rejected.values())
    books["near_duplicate"] = sum(len(g["dropped"]) for g in selection.near_duplicates)
    kept = {s.key for s in selection.kept}
    paragraphs: Counter[str] = Counter()
    for s in summaries:
        if s.key in kept:
            paragraphs.update(s.drops)
    paragraphs["duplicate_paragraph"] = duplicate_paragraphs
    return {
        "books": dict(sorted((k, v) for k, v in books.items() if v)),
        "paragraphs": dict(sorted((k, v) for k, v in paragraphs.items() if v)),
    }


def gutenberg_source_entry(summaries: Sequence[BookSummary], selection: BookSelection) -> dict:
    """The books' entry among the sources of a mix (split counts are filled in by write_shards)."""
    dropped = Counter(selection.rejected.values())
    dropped["near_duplicate"] = sum(len(g["dropped"]) for g in selection.near_duplicates)
    return {
        "spec": "raw store",
        "weight": 1.0,
        "documents": len(summaries),
        "kept": len(selection.kept),
        "dropped": dict(sorted((k, v) for k, v in dropped.items() if v)),
        "paragraphs_dropped": {},
        "splits": {
            split: {"documents": len(selection.splits[split]), "rows": 0, "tokens": 0, "bytes": 0}
            for split in SPLITS
        },
    }


def make_manifest(
    raw_dir: str | Path,
    out_dir: str | Path,
    config: CorpusConfig,
    summaries: Sequence[BookSummary],
    selection: BookSelection,
    duplicate_paragraphs: int,
    shards: dict[str, list[dict]],
    build_info: dict,
    extra: ExtraMix | None = None,
) -> dict:
    out_dir = Path(out_dir)
    tok = tokenizer_info(out_dir / TOKENIZER_FILE, config.tokenizer)
    more = {}
    if extra is not None:  # only then: a Gutenberg-only manifest stays as it always was
        more["sources"] = {GUTENBERG: extra.gutenberg, **{st.name: st.to_dict() for st in extra.stats}}
        more["sources_config"] = _plain(asdict(extra.config))
    return fmt.make_manifest(
        fmt.tokenizer_entry(out_dir, **tok),
        {split: fmt.split_entry(selection.splits[split], shards.get(split, [])) for split in SPLITS},
        books={
            "raw_files": len(summaries),
            "kept": len(selection.kept),
            "near_duplicates": selection.near_duplicates,
            "rejected": selection.rejected,
        },
        drops=drop_counts(summaries, selection, duplicate_paragraphs),
        config=config.to_dict(),
        code_version=cleaning_code_version(),
        source={"raw_dir": str(Path(raw_dir).resolve())},
        build=build_info,  # times: the only part that differs between two builds of one input
        **more,
    )


def load_manifest(out_dir: str | Path) -> dict:
    """The manifest of a finished corpus; FileNotFoundError when OUT has none (yet)."""
    path = Path(out_dir) / MANIFEST
    if not path.exists():
        raise FileNotFoundError(
            f"{path} not found: {out_dir} is not a finished corpus (build it, or rerun the build)"
        )
    return fmt.read_manifest(out_dir)


def dataset_card(manifest: dict) -> str:
    """README.md: a Hugging Face dataset card (YAML header so `load_dataset(OUT)` finds the splits)."""
    splits = manifest["splits"]
    tok = manifest["tokenizer"]
    lines = [
        "---",
        "language:",
        "- pt",
        "pretty_name: ptgpt Portuguese Gutenberg corpus",
        "configs:",
        "- config_name: default",
        "  data_files:",
    ]
    for split in SPLITS:
        if splits[split]["shards"]:
            lines += [f"  - split: {split}", f"    path: {split}/*.parquet"]
    lines += ["---", "", "# ptgpt Portuguese Gutenberg corpus", ""]
    lines += [
        "Portuguese books from Project Gutenberg, cleaned (Gutenberg header, footer and license removed;",
        "text NFC; verse line breaks kept), deduplicated (near-duplicate editions and exact duplicate",
        "paragraphs) and split train/validation/test by whole book. One row per paragraph, with its",
        f"SentencePiece token ids (`{tok['file']}`, {tok['config']['model_type'].upper()}, vocabulary "
        f"{tok['vocab_size']}, byte fallback; ids unk {tok['unk_id']}, bos {tok['bos_id']}, "
        f"eos {tok['eos_id']}, pad {tok['pad_id']}).",
        "",
        "The texts are Project Gutenberg eBooks, public domain in the USA; check the laws of your",
        "country before using them. Project Gutenberg is a trademark of the Project Gutenberg",
        "Literary Archive Foundation; this derived dataset is not endorsed by it.",
        "",
        "## Statistics",
        "",
        "| split | books | paragraphs | tokens | UTF-8 bytes | bytes/token | shards |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for split in SPLITS:
        s = splits[split]
        bpt = f"{s['bytes'] / s['tokens']:.2f}" if s["tokens"] else "-"
        lines.append(
            f"| {split} | {len(s['books'])} | {s['rows']:,} | {s['tokens']:,} | {s['bytes']:,} | {bpt} "
            f"| {len(s['shards'])} |"
        )
    drops = manifest["drops"]
    books = manifest["books"]
    lines += [
        "",
        f"Raw files read: {books['raw_files']}; books kept: {books['kept']}.",
        "",
        "Books dropped, by reason:",
        "",
    ]
    lines += [f"- {k}: {v}" for k, v in drops["books"].items()] or ["- none"]
    lines += ["", "Paragraphs dropped, by reason:", ""]
    lines += [f"- {k}: {v:,}" for k, v in drops["paragraphs"].items()] or ["- none"]
    if books["near_duplicates"]:
        lines += ["", "Near-duplicate editions (kept <- dropped, estimated Jaccard):", ""]
        for g in books["near_duplicates"]:
            lines.append(f"- {g['kept']} <- {', '.join(g['dropped'])} ({g['similarity']:.2f})")
    cfg = manifest["config"]
    lines += [
        "",
        "## How it was built",
        "",
        f"- split: by book, from sha256 of the ebook number (salt `{cfg['split']['salt']}`), "
        f"validation {cfg['split']['validation_fraction']:.0%}, test {cfg['split']['test_fraction']:.0%}",
        f"- near-duplicate books: MinHash ({cfg['dedup']['num_perm']} hashes) over word "
        f"{cfg['dedup']['shingle_words']}-grams of a spelling skeleton, Jaccard >= {cfg['dedup']['book_threshold']}",
        f"- exact duplicate paragraphs of at least {cfg['dedup']['min_paragraph_chars']} characters: first kept",
        f"- tokenizer: trained on the train split only; cleaning code version `{manifest['code_version']}`",
        "- `manifest.json` holds the full configuration, per-shard sha256 and the book list of each split",
    ]
    if "sources" in manifest:
        lines += sources_card(manifest)
    lines += [
        "",
        "## Columns",
        "",
        "`book_id` (Gutenberg ebook number), `paragraph_index` (position in the cleaned book; gaps are",
        "duplicate paragraphs removed), `title`, `author`, `text`, `tokens` (ids of `text`, no BOS/EOS),",
        "`n_bytes` (UTF-8 length of `text`). Rows of a book are contiguous and in order; a book never",
        "spans two shards. Between two paragraphs of a book put `separator_ids` from `manifest.json`;",
        "BOS and EOS mark book boundaries.",
        "",
        "```python",
        "import datasets",
        'ds = datasets.load_dataset("parquet", data_dir="path/to/corpus")',
        "```",
        "",
    ]
    return "\n".join(lines)


def sources_card(manifest: dict) -> list[str]:
    """The dataset card's section on a mix of sources: counts, drops by reason, tokens, weights."""
    lines = [
        "",
        "## Sources",
        "",
        "Besides the Gutenberg books, documents of other sources went through the same cleaning (no",
        "Gutenberg header or unwrapping; web-text filters of corpus/doc_filters.py), were deduplicated",
        "against the books and each other (a copy of a book is dropped in favour of the cleaned book) and",
        "split by a hash of their id. Each row has `source` and `source_id` (the book's file stem, or",
        "the document's own id). Other documents have a negative `book_id`, empty `title` and `author`.",
        "Train documents enter the mix `weight` times (fractions: a deterministic sample).",
        "",
        "| source | weight | documents read | kept | train tokens | validation tokens | test tokens |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for name, src in manifest["sources"].items():
        sp = src["splits"]
        lines.append(
            f"| {name} | {src['weight']:g} | {src['documents']:,} | {src['kept']:,} | "
            + " | ".join(f"{sp[s]['tokens']:,}" for s in SPLITS)
            + " |"
        )
    lines += ["", "Dropped, by source and reason (documents; then paragraphs or lines inside kept ones):", ""]
    for name, src in manifest["sources"].items():
        docs = ", ".join(f"{k} {v:,}" for k, v in src["dropped"].items()) or "none"
        paragraphs = ", ".join(f"{k} {v:,}" for k, v in src["paragraphs_dropped"].items()) or "none"
        lines.append(f"- {name} (`{src['spec']}`): {docs}; paragraphs: {paragraphs}")
    return lines


# ---------------------------------------------------------------------------------------------
# Staging and the swap: only a complete corpus ever replaces OUT


def staging_dir(out_dir: Path) -> Path:
    """Where a build writes: a hidden folder next to OUT, on the same file system (renames are atomic)."""
    return out_dir.with_name(f".{out_dir.name}.building")


def _previous_dir(out_dir: Path) -> Path:
    return out_dir.with_name(f".{out_dir.name}.previous")


def swap_in(staging: Path, out_dir: Path) -> None:
    """Replace OUT by the finished corpus in `staging`; OUT's other entries (.cache, ...) move over.

    Two renames: OUT -> .OUT.previous, staging -> OUT. A crash between them leaves the old corpus
    whole in .OUT.previous, and `finish_interrupted_swap` (run by every build) puts it back.
    """
    previous = _previous_dir(out_dir)
    if out_dir.exists():
        os.rename(out_dir, previous)
    os.rename(staging, out_dir)
    finish_interrupted_swap(out_dir)


def finish_interrupted_swap(out_dir: Path) -> None:
    """Complete or undo a swap that a crash cut short, so OUT is one whole corpus again."""
    previous = _previous_dir(out_dir)
    if not previous.exists():
        return
    if not out_dir.exists():  # cut between the two renames: the old corpus comes back
        os.rename(previous, out_dir)
        return
    for entry in previous.iterdir():  # the new corpus is in place: keep what is not replaced
        if not (out_dir / entry.name).exists():
            os.rename(entry, out_dir / entry.name)
    shutil.rmtree(previous)


# ---------------------------------------------------------------------------------------------
# Everything


def build_corpus(
    raw_dir: str | Path,
    out_dir: str | Path,
    config: CorpusConfig | None = None,
    workers: int | None = None,
    progress: bool = True,
    cache_dir: str | Path | None = None,
    *,
    raw_books: Sequence[RawBook] | None = None,
    map_books: BookMapper | None = None,
    build_info: dict | None = None,
    source: str | None = None,
    force: bool = False,
    allow_empty_splits: bool = False,
    extras: Sequence[ExtraSource] = (),
    sources_config: SourcesConfig | None = None,
    map_chunks: ChunkMapper | None = None,
) -> dict:
    """Build the corpus folder OUT from a raw store; returns the manifest (also written to OUT).

    extras: other text sources (corpus/sources.py `parse_extras`), cleaned, filtered and
    deduplicated against the books and mixed in; without them the build is exactly the books'.

    raw_books: the books to use (default: every book of the raw store). map_books: the executor of
    the per-book stage (default: `process_pool(workers, progress)`); map_chunks, of the extra sources'
    per-chunk stage (default: `chunk_process_pool(workers)`). build_info: extra entries for
    the manifest's `build` (a flow adds its run id, `stage_seconds` its download time). source: where
    the raw store's books came from, recorded in the manifest. force: build into a non-empty OUT
    that is not a corpus. allow_empty_splits: build from fewer than 3 books.
    Raises UserError for bad input or a full or read-only disk; OUT is then left as it was.
    """
    config = config or CorpusConfig()
    out_dir = Path(out_dir)
    if not Path(raw_dir).is_dir():
        raise UserError(f"raw store not found: {raw_dir} (run `ptgpt scrape --out {raw_dir}` first)")
    if raw_books is None:
        raw_books = list_raw_books(raw_dir)
    check_build_inputs(
        raw_dir, out_dir, raw_books, config, force=force, allow_empty_splits=allow_empty_splits
    )
    check_sources(extras)
    out_dir = out_dir.resolve()  # "." has no name to put a staging folder next to; a link, its target
    finish_interrupted_swap(out_dir)
    staging = staging_dir(out_dir)
    try:
        shutil.rmtree(staging, ignore_errors=True)  # what a killed build left
        staging.mkdir(parents=True)
        cache_dir = Path(cache_dir) if cache_dir else out_dir / CACHE_DIR
        map_books = map_books or process_pool(workers, progress)
        manifest = _build(
            raw_dir,
            staging,
            config,
            list(raw_books),
            cache_dir,
            workers,
            progress,
            map_books,
            dict(build_info or {}),
            allow_empty_splits,
            list(extras),
            sources_config or SourcesConfig(),
            map_chunks,
        )
        if source is not None:
            manifest["source"]["source"] = source
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


def _build(
    raw_dir: str | Path,
    out_dir: Path,
    config: CorpusConfig,
    raw_books: list[RawBook],
    cache_dir: Path,
    workers: int | None,
    progress: bool,
    map_books: BookMapper,
    build_info: dict,
    allow_empty_splits: bool,
    extras: list[ExtraSource] | None = None,
    sources_config: SourcesConfig | None = None,
    map_chunks: ChunkMapper | None = None,
) -> dict:
    """The stages, writing into `out_dir` (the staging folder); returns the manifest to write."""
    t0 = time.perf_counter()
    earlier: dict[str, float] = build_info.pop("stage_seconds", {})  # e.g. a flow's download
    times = dict(earlier)

    def lap(stage: str, start: float) -> float:
        now = time.perf_counter()
        times[stage] = round(now - start, 3)
        return now

    t = time.perf_counter()
    summaries = map_books(BookCleaner(config, str(cache_dir)), raw_books)
    t = lap("clean", t)
    selection = select_books(summaries, config)
    if not selection.kept:
        reasons = Counter(selection.rejected.values())
        raise UserError(
            f"every one of the {len(summaries)} books of {raw_dir} was rejected "
            f"({', '.join(f'{k}: {v}' for k, v in reasons.most_common())}): nothing to build"
        )
    t = lap("select", t)
    seen = FingerprintSet()
    loose: FingerprintSet | None = None
    if extras:
        sources_config = sources_config or SourcesConfig()
        cleaner = ChunkCleaner(sources_config, config.dedup, str(cache_dir))
        books = [s.key for s in selection.kept]
        signatures = SignatureFile(out_dir / ".spool" / "signatures.u32", config.dedup.num_perm)
        signatures.append(np.asarray([s.signature for s in selection.kept], dtype="<u4"))
        map_chunks = map_chunks or chunk_process_pool(workers or os.cpu_count() or 1)
        chunks = [clean_source(src, cleaner, signatures, map_chunks, progress) for src in extras]
        t = lap("clean_extra", t)
        dup_of = near_duplicates(signatures, sources_config.doc_threshold, sources_config.lsh_rows)
        signatures.path.unlink()
        t = lap("near_duplicates", t)
        loose = FingerprintSet()
    selection, keep, duplicate_paragraphs = plan_paragraphs(selection, config, progress, seen, loose)
    if not allow_empty_splits and not all(selection.splits.values()):
        raise UserError(_too_few_books(len(selection.kept), "after cleaning and deduplication it keeps"))
    t = lap("dedup_paragraphs", t)
    extra = None
    if extras:
        assert loose is not None and sources_config is not None
        first_rows = np.cumsum([len(books)] + [sum(c.kept for c in cs) for cs in chunks])

        def item_name(row: int) -> str:
            if row < len(books):
                return f"{GUTENBERG}:{books[row]}"
            i = int(np.searchsorted(first_rows, row, side="right")) - 1
            return f"{extras[i].name}#{row - first_rows[i]}"

        stats = spool_documents(
            extras,
            chunks,
            dup_of,
            len(books),
            item_name,
            seen,
            loose,
            config.dedup,
            sources_config,
            config.split,
            out_dir / ".spool",
            progress,
        )
        extra = ExtraMix(extras, stats, out_dir / ".spool", sources_config)
        extra.gutenberg = gutenberg_source_entry(summaries, selection)
        t = lap("dedup_extra", t)
        del dup_of
    del seen, loose  # deduplication's memory is not kept through the tokenizer's (SentencePiece's)
    try:
        tokenizer_path = train_corpus_tokenizer(selection, keep, config, out_dir, cache_dir, extra)
    except RuntimeError as e:
        if "SentencePiece" not in str(e):
            raise
        raise UserError(f"{e} (--vocab-size {config.tokenizer.vocab_size})") from e
    t = lap("tokenizer", t)
    shards = write_shards(selection, keep, tokenizer_path, out_dir, config, workers, progress, extra)
    if extra is not None:
        shutil.rmtree(extra.spool_dir)
    t = lap("shards", t)
    info = {
        "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "seconds": round(time.perf_counter() - t0 + sum(earlier.values()), 3),
        "stage_seconds": times,
    }
    manifest = make_manifest(
        raw_dir,
        out_dir,
        config,
        summaries,
        selection,
        duplicate_paragraphs,
        shards,
        {**info, **build_info},
        extra,
    )
    write_text_atomic(out_dir / fmt.README_FILE, dataset_card(manifest))
    return manifest
