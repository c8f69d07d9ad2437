"""Raw store -> corpus folder: every stage of corpus/ composed, resumable and deterministic.

    per book (process pool)   clean_book -> MinHash signature -> OUT/.cache/books/<key>.json
    global, streaming         near-duplicate books -> split by book -> exact-duplicate paragraphs
                              -> SentencePiece on train -> encode -> Parquet shards
    last                      README.md, then manifest.json

Resumable: the per-book result is cached as JSON under a key made of the raw file's sha256, the
cleaning config, the book id and a hash of the cleaning code, so a rerun after a crash (or a rerun
on a raw store that gained books) only cleans what is new, and a change to the cleaning code
invalidates the cache by itself. The tokenizer is cached the same way, keyed by its training input.
The global stages are cheap and always rerun. Shards are written to temp names and renamed, and
`manifest.json` is removed when a build starts and written last, so a half-built corpus never looks
finished. Everything is deterministic: same raw store and config -> byte-identical shards.

Memory: the build never holds the corpus text. The pool returns small summaries (counts and the
MinHash signature); the text is read back from the cache one book at a time in each later pass.

Each stage is a plain function (`process_book`, `clean_books`, `select_books`, `plan_paragraphs`,
`train_corpus_tokenizer`, `write_shards`, `write_manifest`) so an orchestrator can call them one by
one; `build_corpus` runs them all.
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
from collections.abc import Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from tqdm import tqdm

from corpus.clean import BookRejected, CleanConfig, CleanedBook, clean_book
from corpus.dedup import DedupConfig, book_signature, dedup_paragraphs, find_near_duplicate_books
from corpus.shards import ShardConfig, ShardWriter, sha256_file
from corpus.split import SPLITS, SplitConfig, split_books
from corpus.tokenizer import (
    TokenizerConfig,
    encode_batch,
    every_kth,
    load_tokenizer,
    tokenizer_info,
    train_tokenizer,
)

SCHEMA_VERSION = 1
MANIFEST = "manifest.json"
TOKENIZER_FILE = "tokenizer.model"
CACHE_DIR = ".cache"
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


def _write_atomic(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "wb") as f:
        f.write(data)
    os.replace(tmp, path)


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
    if cache_file.exists():
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
        _write_atomic(cache_file, json.dumps(entry, ensure_ascii=False).encode("utf-8"))
    summary = BookSummary(raw.key, raw.book_id, str(cache_file), entry["status"], entry.get("reason"))
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


def _process_book_args(args: tuple[RawBook, CorpusConfig, str]) -> BookSummary:
    return process_book(*args)


def clean_books(
    raw_books: Sequence[RawBook],
    config: CorpusConfig,
    cache_dir: str | Path,
    workers: int | None = None,
    progress: bool = True,
) -> list[BookSummary]:
    """`process_book` over all books in a process pool; summaries come back in input order."""
    workers = workers or os.cpu_count() or 1
    jobs = [(raw, config, str(cache_dir)) for raw in raw_books]
    bar = tqdm(total=len(jobs), desc="clean", unit="book", disable=not progress, file=sys.stderr)
    try:
        if workers == 1:
            out = []
            for job in jobs:
                out.append(_process_book_args(job))
                bar.update()
            return out
        with ProcessPoolExecutor(max_workers=workers) as pool:
            out = []
            for summary in pool.map(_process_book_args, jobs, chunksize=1):
                out.append(summary)
                bar.update()
            return out
    finally:
        bar.close()


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
    selection: BookSelection, config: CorpusConfig, progress: bool = True
) -> tuple[BookSelection, dict[str, list[int]], int]:
    """Exact-duplicate paragraphs over all kept books in id order.

    Returns the selection without books left empty (every paragraph a duplicate of an earlier
    book: a volume reprinted inside a collection; they are reported as rejected), the indices of
    the paragraphs to keep per book key, and the number of paragraphs dropped.
    """
    seen: set[bytes] = set()
    keep: dict[str, list[int]] = {}
    dropped = 0
    for s in tqdm(selection.kept, desc="dedup", unit="book", disable=not progress, file=sys.stderr):
        book = read_cleaned_book(s)
        keep[s.key] = dedup_paragraphs(book.paragraphs, seen, config.dedup)
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


def train_corpus_tokenizer(
    selection: BookSelection,
    keep: dict[str, list[int]],
    config: CorpusConfig,
    out_dir: str | Path,
    cache_dir: str | Path,
) -> Path:
    """SentencePiece on the train split only, streamed; cached by a digest of its exact input."""
    train_ids = set(selection.splits["train"])
    train = [s for s in selection.kept if s.book_id in train_ids]
    if not train:
        raise ValueError("the train split is empty: nothing to train a tokenizer on")
    input_key = _digest(
        {
            "tokenizer": _plain(asdict(config.tokenizer)),
            "books": [[Path(s.cache_file).stem, _digest(keep[s.key])] for s in train],
        }
    )[:32]
    cached = Path(cache_dir) / "tokenizers" / f"{input_key}.model"
    if not cached.exists():
        total_chars = sum(s.kept_chars for s in train)

        def paragraphs() -> Iterator[str]:
            for _, _, texts in iter_split_paragraphs(selection, keep, "train"):
                yield from texts

        text = paragraphs()
        if config.tokenizer.max_training_chars:
            text = every_kth(text, total_chars, config.tokenizer.max_training_chars)
        train_tokenizer(text, cached.with_suffix(""), config.tokenizer)
    out = Path(out_dir) / TOKENIZER_FILE
    tmp = out.with_name(f".{out.name}.tmp")
    shutil.copyfile(cached, tmp)
    os.replace(tmp, out)
    return out


def write_shards(
    selection: BookSelection,
    keep: dict[str, list[int]],
    tokenizer_path: str | Path,
    out_dir: str | Path,
    config: CorpusConfig,
    workers: int | None = None,
    progress: bool = True,
) -> dict[str, list[dict]]:
    """Encode every kept paragraph and write the shards of each split; split -> shard entries."""
    sp = load_tokenizer(tokenizer_path)
    threads = workers or os.cpu_count() or 1
    shards = {}
    bar = tqdm(total=len(selection.kept), desc="shards", unit="book", disable=not progress, file=sys.stderr)
    for split in SPLITS:
        with ShardWriter(out_dir, split, config.shards) as writer:
            for s, idx, texts in iter_split_paragraphs(selection, keep, split):
                writer.add_book(s.book_id, s.title, s.author, idx, texts, encode_batch(sp, texts, threads))
                bar.update()
        shards[split] = writer.shards
    bar.close()
    return shards


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


def make_manifest(
    raw_dir: str | Path,
    out_dir: str | Path,
    config: CorpusConfig,
    summaries: Sequence[BookSummary],
    selection: BookSelection,
    duplicate_paragraphs: int,
    shards: dict[str, list[dict]],
    build_info: dict,
) -> dict:
    out_dir = Path(out_dir)
    tok = tokenizer_info(out_dir / TOKENIZER_FILE, config.tokenizer)
    splits = {}
    for split in SPLITS:
        entries = shards.get(split, [])
        splits[split] = {
            "rows": sum(e["rows"] for e in entries),
            "tokens": sum(e["tokens"] for e in entries),
            "bytes": sum(e["bytes"] for e in entries),
            "books": selection.splits[split],
            "shards": entries,
        }
    return {
        "schema_version": SCHEMA_VERSION,
        "tokenizer": {"file": TOKENIZER_FILE, "sha256": sha256_file(out_dir / TOKENIZER_FILE), **tok},
        "splits": splits,
        "books": {
            "raw_files": len(summaries),
            "kept": len(selection.kept),
            "near_duplicates": selection.near_duplicates,
            "rejected": selection.rejected,
        },
        "drops": drop_counts(summaries, selection, duplicate_paragraphs),
        "config": config.to_dict(),
        "code_version": cleaning_code_version(),
        "source": {"raw_dir": str(Path(raw_dir).resolve())},
        "build": build_info,  # times: the only part that differs between two builds of one input
    }


def write_manifest(out_dir: str | Path, manifest: dict) -> Path:
    """Write manifest.json atomically; call it last, its presence marks the corpus complete."""
    path = Path(out_dir) / MANIFEST
    _write_atomic(path, (json.dumps(manifest, indent=2, ensure_ascii=False) + "\n").encode("utf-8"))
    return path


def load_manifest(out_dir: str | Path) -> dict:
    path = Path(out_dir) / MANIFEST
    if not path.exists():
        raise FileNotFoundError(
            f"{path} not found: {out_dir} is not a finished corpus (build it, or rerun the build)"
        )
    return json.loads(path.read_text(encoding="utf-8"))


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


# ---------------------------------------------------------------------------------------------
# Everything


def _clear_outputs(out_dir: Path) -> None:
    """Remove the manifest first (the corpus is no longer complete), then old shards and temp files."""
    (out_dir / MANIFEST).unlink(missing_ok=True)
    for split in SPLITS:
        d = out_dir / split
        if d.is_dir():
            for p in list(d.glob("part-*.parquet")) + list(d.glob(".part-*.tmp")):
                p.unlink()
    for p in out_dir.glob(".*.tmp"):
        p.unlink()


def build_corpus(
    raw_dir: str | Path,
    out_dir: str | Path,
    config: CorpusConfig | None = None,
    workers: int | None = None,
    progress: bool = True,
    cache_dir: str | Path | None = None,
) -> dict:
    """Build the corpus folder from a raw store; returns the manifest (also written to OUT)."""
    config = config or CorpusConfig()
    out_dir = Path(out_dir)
    cache_dir = Path(cache_dir) if cache_dir else out_dir / CACHE_DIR
    out_dir.mkdir(parents=True, exist_ok=True)
    _clear_outputs(out_dir)
    t0 = time.perf_counter()
    times: dict[str, float] = {}

    def lap(stage: str, start: float) -> float:
        now = time.perf_counter()
        times[stage] = round(now - start, 3)
        return now

    raw_books = list_raw_books(raw_dir)
    if not raw_books:
        raise ValueError(f"no <id>.txt books in {raw_dir}")
    t = time.perf_counter()
    summaries = clean_books(raw_books, config, cache_dir, workers, progress)
    t = lap("clean", t)
    selection = select_books(summaries, config)
    if not selection.kept:
        raise ValueError("every book was rejected; nothing to build (see the cache for reasons)")
    t = lap("select", t)
    selection, keep, duplicate_paragraphs = plan_paragraphs(selection, config, progress)
    t = lap("dedup_paragraphs", t)
    tokenizer_path = train_corpus_tokenizer(selection, keep, config, out_dir, cache_dir)
    t = lap("tokenizer", t)
    shards = write_shards(selection, keep, tokenizer_path, out_dir, config, workers, progress)
    t = lap("shards", t)
    build_info = {
        "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "seconds": round(time.perf_counter() - t0, 3),
        "stage_seconds": times,
    }
    manifest = make_manifest(
        raw_dir, out_dir, config, summaries, selection, duplicate_paragraphs, shards, build_info
    )
    _write_atomic(out_dir / "README.md", dataset_card(manifest).encode("utf-8"))
    write_manifest(out_dir, manifest)
    return manifest
