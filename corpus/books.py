"""The Gutenberg books of a build: the raw store, the cleaned books, which are kept, which split,
which paragraphs; and the books' part of the mix the tokenizer and the shard writer read.

The per-book stage itself (clean, sign, cache) is `corpus.build.process_book`; what it returns is a
small `BookSummary`, and the text is read back from its cache file one book at a time.
"""

from __future__ import annotations

import json
import re
import sys
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

from tqdm import tqdm

from corpus.cache import code_version, digest, plain
from corpus.clean import CleanedBook
from corpus.dedup import ParagraphDedup, find_near_duplicate_books
from corpus.shards import ShardWriter
from corpus.split import SPLITS, split_books

GUTENBERG = "gutenberg"  # the source name of the raw store's books


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


def book_cache_key(raw_sha256: str, book_id: int, config) -> str:
    """The cache file name of one cleaned book: its raw bytes, id, cleaning config and code version."""
    return digest(
        {
            "raw": raw_sha256,
            "id": book_id,
            "clean": plain(asdict(config.clean)),
            "dedup": [config.dedup.num_perm, config.dedup.shingle_words, config.dedup.seed],
            "code": code_version(),
        }
    )[:32]


def read_cleaned_book(summary: BookSummary) -> CleanedBook:
    entry = json.loads(Path(summary.cache_file).read_text(encoding="utf-8"))
    return CleanedBook.from_dict(entry["book"])


@dataclass
class BookSelection:
    kept: list[BookSummary]  # sorted by book id
    rejected: dict[str, str]  # key -> reason
    near_duplicates: list[dict]  # DuplicateGroup.to_dict() per group
    splits: dict[str, list[int]]


def select_books(summaries: Sequence[BookSummary], config) -> BookSelection:
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
    config,
    progress: bool = True,
    dedup: ParagraphDedup | None = None,
) -> tuple[BookSelection, dict[str, list[int]], int]:
    """Exact-duplicate paragraphs over all kept books in id order (`config.dedup`).

    Returns the selection without books left empty (every paragraph a duplicate of an earlier
    book: a volume reprinted inside a collection; they are reported as rejected), the indices of
    the paragraphs to keep per book key, and the number of paragraphs dropped. `dedup` collects the
    kept paragraphs' fingerprints, for the documents of extra sources that follow the books.
    """
    dedup = dedup or ParagraphDedup(config.dedup)
    keep: dict[str, list[int]] = {}
    dropped = 0
    for s in tqdm(selection.kept, desc="dedup", unit="book", disable=not progress, file=sys.stderr):
        paragraphs = read_cleaned_book(s).paragraphs
        keep[s.key] = dedup.keep(paragraphs)
        dropped += len(paragraphs) - len(keep[s.key])
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


Encode = Callable[[list[str]], list[list[int]]]  # paragraphs -> token ids, in order


def count_rows(entry: dict, texts: Sequence[str], tokens: Sequence[Sequence[int]], copies: int) -> None:
    """Add a book's or document's rows, tokens and UTF-8 bytes (times its copies) to a split's counts."""
    entry["rows"] += len(texts) * copies
    entry["tokens"] += sum(map(len, tokens)) * copies
    entry["bytes"] += sum(len(t.encode("utf-8")) for t in texts) * copies


@dataclass
class BookPart:
    """The kept books and their kept paragraphs, as one part of what the tokenizer and the shards read.

    A part (this, or the documents of the extra sources: `corpus.documents.DocumentPart`) answers four
    things: the key of its train text for the tokenizer cache, its train text and size, and how it
    writes one split's rows. `splits` counts what it wrote.
    """

    selection: BookSelection
    keep: dict[str, list[int]]
    splits: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.splits = {
            s: {"documents": len(self.selection.splits[s]), "rows": 0, "tokens": 0, "bytes": 0}
            for s in SPLITS
        }

    def train_books(self) -> list[BookSummary]:
        ids = set(self.selection.splits["train"])
        return [s for s in self.selection.kept if s.book_id in ids]

    def tokenizer_key(self) -> dict:
        return {"books": [[Path(s.cache_file).stem, digest(self.keep[s.key])] for s in self.train_books()]}

    def train_chars(self) -> int:
        return sum(s.kept_chars for s in self.train_books())

    def train_paragraphs(self) -> Iterator[str]:
        for _, _, texts in iter_split_paragraphs(self.selection, self.keep, "train"):
            yield from texts

    def write(self, writer: ShardWriter, split: str, encode: Encode, bar: tqdm | None = None) -> None:
        for s, idx, texts in iter_split_paragraphs(self.selection, self.keep, split):
            tokens = encode(texts)
            writer.add_book(s.book_id, s.title, s.author, idx, texts, tokens, GUTENBERG, s.key)
            count_rows(self.splits[split], texts, tokens, 1)
            if bar is not None:
                bar.update()
