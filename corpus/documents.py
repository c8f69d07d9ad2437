"""The documents of extra sources, from their readers (corpus/sources.py) to the spool the tokenizer
and the shard writer read, next to the books (corpus/books.py):

    clean       per chunk of documents, on the build's executor: corpus/doc_filters.py (reason codes;
                each source may carry its own `min_words`), then the MinHash signature of the kept
                text (the books' signature function, so a web copy of a book is comparable to it);
                cached under OUT/.cache/docs/ like the books
    near dup    one pass of `dedup.near_duplicates` over the kept books and every kept document, in
                that order: a document near-duplicate of anything earlier (a book first) is dropped
    paragraphs  `dedup.ParagraphDedup`, continued from the books': exact and loose duplicates
    split       `split.assign_split` keyed SOURCE:DOC_ID: a document never moves between builds
    spool       the surviving documents, one JSON line each, per split (format: docs/formats.md)

Memory stays flat in the input size except for what deduplication must keep: 8 bytes per kept
paragraph for each of the two fingerprint sets and ~30 bytes per document while the LSH bands are
grouped (the 512-byte signatures wait on disk, `SignatureFile`). Documents are streamed from the
source, a bounded number of chunks is in flight, no pass holds the text of more than one chunk.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import math
import sys
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
from tqdm import tqdm

from common.files import sha256_file, write_json_atomic
from corpus.books import GUTENBERG, Encode, count_rows
from corpus.cache import code_version, plain
from corpus.dedup import DedupConfig, ParagraphDedup, SignatureFile, book_signature, near_duplicates
from corpus.doc_filters import DocumentRejected, clean_document
from corpus.executor import Executor
from corpus.shards import ShardWriter
from corpus.sources import Chunk, ExtraSource, SourcesConfig, chunked, iter_documents
from corpus.split import SPLITS, SplitConfig, assign_split, split_position


@dataclass
class ChunkSummary:
    """What the global stages need of one chunk; the kept text stays in its cache file."""

    cache_file: str
    documents: int
    input_bytes: int
    rejected: dict[str, int]  # reason -> documents
    drops: dict[str, int]  # reason -> lines dropped inside kept documents
    signatures: np.ndarray | None  # (kept, num_perm) uint32 in document order; None once on disk
    kept: int = 0  # documents that passed the filters (rows of `signatures`)


def _pack(sig: Sequence[int]) -> str:
    return base64.b64encode(np.asarray(sig, dtype="<u4").tobytes()).decode()


def _unpack(text: str) -> np.ndarray:
    return np.frombuffer(base64.b64decode(text), dtype="<u4")


@dataclass
class ChunkCleaner:
    """Clean one chunk of documents, sign the kept ones, cache the result: picklable for a pool."""

    config: SourcesConfig
    dedup: DedupConfig
    cache_dir: str

    def key(self, docs: Sequence[tuple[str, str]]) -> str:
        h = hashlib.sha256()
        for doc_id, text in docs:
            h.update(doc_id.encode() + b"\0" + text.encode("utf-8", "surrogatepass") + b"\0")
        config = json.dumps(
            [plain(asdict(self.config)), [self.dedup.num_perm, self.dedup.shingle_words, self.dedup.seed]],
            sort_keys=True,
        )
        h.update(config.encode() + code_version().encode())
        return h.hexdigest()[:32]

    def clean(self, docs: Chunk) -> dict:
        out = []
        for doc_id, text in docs:
            try:
                doc = clean_document(text, self.config.docs)
            except DocumentRejected as e:
                out.append({"id": doc_id, "reason": e.reason})
                continue
            sig = book_signature(doc.paragraphs, self.dedup)
            out.append({"id": doc_id, "paragraphs": doc.paragraphs, "drops": doc.drops, "sig": _pack(sig)})
        return {"input_bytes": sum(len(t.encode("utf-8", "surrogatepass")) for _, t in docs), "docs": out}

    def __call__(self, docs: Chunk) -> ChunkSummary:
        cache_file = Path(self.cache_dir) / "docs" / f"{self.key(docs)}.json"
        if cache_file.exists():
            entry = json.loads(cache_file.read_text(encoding="utf-8"))
        else:
            entry = self.clean(docs)
            cache_file.parent.mkdir(parents=True, exist_ok=True)
            write_json_atomic(cache_file, entry, indent=None)
        rejected: Counter[str] = Counter()
        drops: Counter[str] = Counter()
        sigs = []
        for d in entry["docs"]:
            if "reason" in d:
                rejected[d["reason"]] += 1
            else:
                drops.update(d["drops"])
                sigs.append(_unpack(d["sig"]))
        return ChunkSummary(
            cache_file=str(cache_file),
            documents=len(entry["docs"]),
            input_bytes=entry["input_bytes"],
            rejected=dict(rejected),
            drops=dict(drops),
            signatures=np.stack(sigs) if sigs else np.zeros((0, self.dedup.num_perm), dtype="<u4"),
            kept=len(sigs),
        )


def read_chunk(summary: ChunkSummary) -> list[dict]:
    """The documents of a chunk from its cache file: {"id", "paragraphs"} kept, {"id", "reason"} not."""
    return json.loads(Path(summary.cache_file).read_text(encoding="utf-8"))["docs"]


def clean_source(
    source: ExtraSource,
    cleaner: ChunkCleaner,
    signatures: SignatureFile,
    map_chunks: Executor,
    progress: bool = True,
) -> list[ChunkSummary]:
    """Stream a source through `cleaner` (with the source's own filters) on `map_chunks`; chunk
    summaries in source order. Each chunk's signatures go to `signatures` (on disk) as it arrives."""
    cleaner = replace(cleaner, config=replace(cleaner.config, docs=source.doc_filters(cleaner.config.docs)))
    out: list[ChunkSummary] = []
    chunks = chunked(iter_documents(source), cleaner.config.chunk_chars)
    with tqdm(desc=f"clean {source.name}", unit="doc", disable=not progress, file=sys.stderr) as bar:
        for summary in map_chunks(cleaner, chunks):
            assert summary.signatures is not None
            signatures.append(summary.signatures)
            summary.signatures = None
            out.append(summary)
            bar.update(summary.documents)
    return out


# ---------------------------------------------------------------------------------------------
# Near duplicates, paragraphs, splits, weights


def train_copies(source: str, doc_id: str, weight: float) -> int:
    """How many times a train document enters the mix: floor(weight), plus one with the fraction's odds."""
    whole = math.floor(weight)
    return whole + (1 if split_position(f"{source}:{doc_id}", "ptgpt-weight-v1") < weight - whole else 0)


def assign_document_split(source: str, doc_id: str, config: SplitConfig) -> str:
    """A document's split from its source and id alone (`split.assign_split`, keyed SOURCE:DOC_ID)."""
    return assign_split(f"{source}:{doc_id}", config)


def document_book_id(source: str, doc_id: str, copy: int = 0) -> int:
    """A negative int32 for the `book_id` column (books have positive ids): the trainer only needs
    neighbouring documents to differ."""
    digest = hashlib.blake2b(f"{source}\0{doc_id}\0{copy}".encode(), digest_size=4).digest()
    return -1 - (int.from_bytes(digest, "little") & 0x7FFFFFFE)


@dataclass
class SourceStats:
    """Per-source counts for the manifest."""

    name: str
    spec: str
    weight: float
    text_field: str
    min_words: int | None = None
    documents: int = 0
    input_bytes: int = 0
    kept: int = 0
    dropped: Counter = field(default_factory=Counter)  # reason -> documents
    paragraphs_dropped: Counter = field(default_factory=Counter)  # reason -> paragraphs/lines
    near_duplicate_examples: list = field(default_factory=list)
    splits: dict = field(default_factory=dict)  # split -> documents, rows, tokens, bytes, copies

    def to_dict(self) -> dict:
        out = {"spec": self.spec, "weight": self.weight, "text_field": self.text_field}
        if self.min_words is not None:  # only then: an entry without it reads as before
            out["min_words"] = self.min_words
        return {
            **out,
            "documents": self.documents,
            "input_bytes": self.input_bytes,
            "kept": self.kept,
            "dropped": dict(sorted(self.dropped.items())),
            "paragraphs_dropped": dict(sorted(self.paragraphs_dropped.items())),
            "near_duplicate_examples": self.near_duplicate_examples,
            "splits": self.splits,
        }


@dataclass
class CleanedSources:
    """The extra sources once cleaned: chunk summaries per source, and for every kept book and then
    every kept document (in that order) the row it near-duplicates, or -1."""

    sources: list[ExtraSource]
    chunks: list[list[ChunkSummary]]
    books: list[str]  # the keys of the kept books: the first rows of `dup_of`
    dup_of: np.ndarray

    def item_name(self, row: int) -> str:
        """`gutenberg:KEY` or `SOURCE#N` (the N-th kept document of a source) for a row of `dup_of`."""
        if row < len(self.books):
            return f"{GUTENBERG}:{self.books[row]}"
        first_rows = np.cumsum([len(self.books)] + [sum(c.kept for c in cs) for cs in self.chunks])
        i = int(np.searchsorted(first_rows, row, side="right")) - 1
        return f"{self.sources[i].name}#{row - first_rows[i]}"


def clean_sources(
    sources: Sequence[ExtraSource],
    books: Sequence[tuple[str, Sequence[int]]],
    cleaner: ChunkCleaner,
    spool_dir: Path,
    map_chunks: Executor,
    progress: bool = True,
) -> CleanedSources:
    """Clean every source, then find near duplicates among the books' (key, signature) and documents."""
    signatures = SignatureFile(spool_dir / "signatures.u32", cleaner.dedup.num_perm)
    signatures.append(np.asarray([sig for _, sig in books], dtype="<u4"))
    chunks = [clean_source(src, cleaner, signatures, map_chunks, progress) for src in sources]
    dup_of = near_duplicates(signatures, cleaner.config.doc_threshold, cleaner.config.lsh_rows)
    signatures.path.unlink()
    return CleanedSources(list(sources), chunks, [key for key, _ in books], dup_of)


# ---------------------------------------------------------------------------------------------
# The spool: one JSON line per surviving document, per split (docs/formats.md)


@dataclass
class Spool:
    """spool_dir/<split>.jsonl, each line {"source", "id", "paragraph_index", "paragraphs", "copies"}."""

    dir: Path

    def path(self, split: str) -> Path:
        return self.dir / f"{split}.jsonl"

    @contextlib.contextmanager
    def writers(self) -> Iterator[dict]:
        self.dir.mkdir(parents=True, exist_ok=True)
        with contextlib.ExitStack() as stack:
            yield {s: stack.enter_context(open(self.path(s), "w", encoding="utf-8")) for s in SPLITS}

    def read(self, split: str) -> Iterator[dict]:
        with open(self.path(split), encoding="utf-8") as f:
            for line in f:
                yield json.loads(line)


def _new_stats(source: ExtraSource) -> SourceStats:
    st = SourceStats(source.name, source.spec, source.weight, source.text_field, source.min_words)
    for split in SPLITS:
        st.splits[split] = {"documents": 0, "copies": 0, "rows": 0, "tokens": 0, "bytes": 0}
    return st


def _survivor(doc: dict, dup: int, st: SourceStats, cleaned: CleanedSources, dedup: ParagraphDedup,
              min_kept_fraction: float) -> list[int] | None:  # fmt: skip
    """The paragraphs to keep of one document, or None when it is dropped (counted in `st`)."""
    if dup >= 0:
        st.dropped["near_duplicate"] += 1
        if len(st.near_duplicate_examples) < 20:
            st.near_duplicate_examples.append({"id": doc["id"], "duplicate_of": cleaned.item_name(dup)})
        return None
    paragraphs = doc["paragraphs"]
    verdict = dedup.check(paragraphs, match_loose=True)
    if sum(len(paragraphs[i]) for i in verdict.keep) < min_kept_fraction * sum(map(len, paragraphs)):
        st.dropped["mostly_duplicate"] += 1
        return None
    dedup.add(verdict)
    st.paragraphs_dropped.update(verdict.reasons)
    st.kept += 1
    return verdict.keep


def spool_documents(
    cleaned: CleanedSources,
    dedup: ParagraphDedup,
    config: SourcesConfig,
    split_config: SplitConfig,
    spool: Spool,
    progress: bool = True,
) -> list[SourceStats]:
    """Drop near duplicates and duplicate paragraphs; write the survivors to the spool, per split.

    `dedup` arrives holding the books' paragraph fingerprints and goes on across sources."""
    stats = []
    row = len(cleaned.books)
    with spool.writers() as files:
        for source, summaries in zip(cleaned.sources, cleaned.chunks, strict=True):
            st = _new_stats(source)
            for summary in tqdm(
                summaries, desc=f"dedup {source.name}", disable=not progress, file=sys.stderr
            ):
                st.documents += summary.documents
                st.input_bytes += summary.input_bytes
                st.dropped.update(summary.rejected)
                st.paragraphs_dropped.update(summary.drops)
                for doc in (d for d in read_chunk(summary) if "reason" not in d):
                    keep = _survivor(
                        doc, int(cleaned.dup_of[row]), st, cleaned, dedup, config.min_kept_fraction
                    )
                    row += 1
                    if keep is None:
                        continue
                    split = assign_document_split(source.name, doc["id"], split_config)
                    copies = train_copies(source.name, doc["id"], source.weight) if split == "train" else 1
                    st.splits[split]["documents"] += 1
                    st.splits[split]["copies"] += copies
                    rec = {
                        "source": source.name,
                        "id": doc["id"],
                        "paragraph_index": keep,
                        "paragraphs": [doc["paragraphs"][i] for i in keep],
                        "copies": copies,
                    }
                    files[split].write(json.dumps(rec, ensure_ascii=False) + "\n")
            stats.append(st)
    return stats


@dataclass
class DocumentPart:
    """The spooled documents, as one part of what the tokenizer and the shards read (see `BookPart`)."""

    stats: list[SourceStats]
    spool: Spool
    config: SourcesConfig

    def tokenizer_key(self) -> dict:
        return {"extra": sha256_file(self.spool.path("train"))}

    def train_chars(self) -> int:
        return sum(rec["copies"] * sum(map(len, rec["paragraphs"])) for rec in self.spool.read("train"))

    def train_paragraphs(self) -> Iterator[str]:
        """The train documents' paragraphs, each document `copies` times (the source's weight)."""
        for rec in self.spool.read("train"):
            for _ in range(rec["copies"]):
                yield from rec["paragraphs"]

    def write(self, writer: ShardWriter, split: str, encode: Encode, bar: tqdm | None = None) -> None:
        """Append a split's spooled documents, encoded in batches of about a thousand paragraphs."""
        by_name = {st.name: st for st in self.stats}
        batch: list[dict] = []

        def flush() -> None:
            tokens = iter(encode([t for rec in batch for t in rec["paragraphs"]]))
            for rec in batch:
                ids = [next(tokens) for _ in rec["paragraphs"]]
                source, texts = rec["source"], rec["paragraphs"]
                for copy in range(rec["copies"]):
                    book_id = document_book_id(source, rec["id"], copy)
                    writer.add_book(book_id, "", "", rec["paragraph_index"], texts, ids, source, rec["id"])
                count_rows(by_name[source].splits[split], texts, ids, rec["copies"])
            batch.clear()

        paragraphs = 0
        for rec in self.spool.read(split):
            batch.append(rec)
            paragraphs += len(rec["paragraphs"])
            if paragraphs >= 1000:
                flush()
                paragraphs = 0
        flush()

    def manifest_entries(self, books: dict) -> dict:
        """`sources` (the books' entry first) and `sources_config` for the manifest of a mix."""
        return {
            "sources": {GUTENBERG: books, **{st.name: st.to_dict() for st in self.stats}},
            "sources_config": plain(asdict(self.config)),
        }
