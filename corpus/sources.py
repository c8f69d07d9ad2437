"""Extra text sources next to the Gutenberg books (`ptgpt corpus build --extra SOURCE[:weight]`).

    read        a .jsonl/.json/.parquet/.txt file, a folder of them, or anything that
                `datasets.load_dataset(..., streaming=True)` opens (a local dataset folder, a hub name)
    clean       per chunk of documents, in a process pool: corpus/doc_filters.py (reason codes), then
                the MinHash signature of the kept text (the books' signature function, so a web copy
                of a book is comparable to it); cached under OUT/.cache/docs/ like the books
    near dup    one LSH pass over the kept Gutenberg books and every kept document, in that order:
                a document near-duplicate of anything earlier (a book first of all) is dropped
    paragraphs  exact duplicate paragraphs (continuing the books' fingerprint set, so a book's
                paragraph quoted on the web is dropped from the web document) and loose duplicates
                (same words after folding case, accents and punctuation)
    split       from sha256(salt:source:doc id): a document never moves between builds
    spool       the surviving documents, one JSON line each, per split: the tokenizer and the shard
                writer stream them from disk

Memory stays flat in the input size except for what deduplication must keep: 8 bytes per kept
paragraph for each of the two fingerprint sets (`FingerprintSet`) and ~30 bytes per document while the
LSH bands are grouped (the 512-byte signatures wait on disk, `SignatureFile`). Documents are streamed
from the source, a bounded number of chunks is in flight, no pass holds the text of more than one
chunk, and the tokenizer trains on at most `TokenizerConfig.max_training_chars` of the mix.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import math
import os
import re
import sys
import tempfile
from collections import Counter, deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from tqdm import tqdm

from common.errors import UserError
from common.files import write_json_atomic
from corpus.dedup import (
    DedupConfig,
    FingerprintSet,
    book_signature,
    paragraph_fingerprint,
    skeleton_words,
)
from corpus.doc_filters import DocFilterConfig, DocumentRejected, clean_document
from corpus.split import SplitConfig

GUTENBERG = "gutenberg"  # the source name of the raw store's books
FILE_SUFFIXES = (".jsonl", ".json", ".parquet", ".txt")
_CODE_MODULES = ("sources", "doc_filters", "filters", "dedup")


def _code_version() -> str:
    h = hashlib.sha256()
    for name in _CODE_MODULES:
        h.update((Path(__file__).parent / f"{name}.py").read_bytes())
    return h.hexdigest()[:16]


_CODE_VERSION = _code_version()


@dataclass(frozen=True)
class ExtraSource:
    spec: str  # a path, or a dataset for `datasets.load_dataset` (`NAME` or `NAME#CONFIG`)
    weight: float = 1.0  # copies of each train document in the mix (fractions: a deterministic sample)
    text_field: str = "text"
    name: str = ""  # the `source` column's value; set by `parse_extras`


@dataclass(frozen=True)
class SourcesConfig:
    docs: DocFilterConfig = field(default_factory=DocFilterConfig)
    doc_threshold: float = 0.7  # estimated Jaccard at or above which a document is a near duplicate
    lsh_rows: int = 5  # rows per LSH band: 25 bands of 5 find pairs at J=0.7 with p~0.99
    chunk_chars: int = 1_000_000  # documents travel to the cleaning workers in chunks of this size
    min_kept_fraction: float = 0.5  # after paragraph dedup, less than this left: `mostly_duplicate`


def parse_extra(arg: str, text_field: str = "text") -> ExtraSource:
    """`SOURCE[:weight]` -> ExtraSource (the name is set by `parse_extras`)."""
    spec, weight = arg, 1.0
    head, sep, tail = arg.rpartition(":")
    if sep and head:
        try:
            weight = float(tail)
            spec = head
        except ValueError:
            pass
    if not math.isfinite(weight) or weight < 0:
        raise UserError(f"--extra {arg}: the weight must be a number >= 0 (SOURCE:0.5, SOURCE:2)")
    return ExtraSource(spec=spec, weight=weight, text_field=text_field)


def parse_extras(args: Sequence[str], text_field: str = "text") -> list[ExtraSource]:
    """Parse every `--extra` and give each a unique source name (the file or dataset name)."""
    out, used = [], {GUTENBERG}
    for arg in args:
        src = parse_extra(arg, text_field)
        path = Path(src.spec)
        base = path.name if path.exists() else src.spec
        base = re.sub(r"[^\w.-]+", "_", base.removesuffix("/")).strip("_") or "source"
        for suffix in FILE_SUFFIXES:
            base = base.removesuffix(suffix)
        name, n = base, 2
        while name in used:
            name, n = f"{base}-{n}", n + 1
        used.add(name)
        out.append(ExtraSource(src.spec, src.weight, src.text_field, name))
    return out


# ---------------------------------------------------------------------------------------------
# Reading: (doc id, text) pairs, streamed


def _text_of(record: dict, field_name: str, where: str) -> str | None:
    if field_name not in record:
        raise UserError(
            f"{where} has no field {field_name!r} (fields: {', '.join(map(str, record))}): "
            "pass --text-field NAME"
        )
    value = record[field_name]
    return value if isinstance(value, str) else None


def _record_id(record: dict, fallback: str) -> str:
    for key in ("id", "doc_id", "url"):
        if record.get(key) not in (None, ""):
            return str(record[key])
    return fallback


def _read_jsonl(path: Path, text_field: str, prefix: str) -> Iterator[tuple[str, str]]:
    with open(path, encoding="utf-8") as f:
        first = f.read(1)
        f.seek(0)
        if first == "[":  # a JSON array: not streamable, read whole
            records = json.load(f)
            for i, rec in enumerate(records):
                text = _text_of(rec, text_field, str(path))
                if text is not None:
                    yield _record_id(rec, f"{prefix}{i}"), text
            return
        for i, line in enumerate(f):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError as e:
                raise UserError(f"{path}:{i + 1} is not JSON ({e}): one JSON object per line") from e
            text = _text_of(rec, text_field, f"{path}:{i + 1}")
            if text is not None:
                yield _record_id(rec, f"{prefix}{i}"), text


def _read_parquet(path: Path, text_field: str, prefix: str) -> Iterator[tuple[str, str]]:
    import pyarrow.parquet as pq

    f = pq.ParquetFile(path)
    names = f.schema_arrow.names
    if text_field not in names:
        raise UserError(
            f"{path} has no column {text_field!r} (columns: {', '.join(names)}): pass --text-field"
        )
    id_col = next((c for c in ("id", "doc_id", "url") if c in names), None)
    columns = [text_field] + ([id_col] if id_col else [])
    row = 0
    for batch in f.iter_batches(batch_size=1024, columns=columns):
        texts = batch.column(0).to_pylist()
        ids = batch.column(1).to_pylist() if id_col else [None] * len(texts)
        for text, doc_id in zip(texts, ids, strict=True):
            if isinstance(text, str):
                yield (str(doc_id) if doc_id not in (None, "") else f"{prefix}{row}"), text
            row += 1


def _read_file(path: Path, text_field: str, prefix: str) -> Iterator[tuple[str, str]]:
    suffix = path.suffix.lower()
    if suffix in (".jsonl", ".json"):
        yield from _read_jsonl(path, text_field, prefix)
    elif suffix == ".parquet":
        yield from _read_parquet(path, text_field, prefix)
    elif suffix == ".txt":  # one document per file
        yield prefix.removesuffix(":") or path.name, path.read_text(encoding="utf-8", errors="replace")
    else:
        raise UserError(f"{path}: unknown kind of file; use {', '.join(FILE_SUFFIXES)}")


def _read_dataset(spec: str, text_field: str) -> Iterator[tuple[str, str]]:
    import datasets

    name, _, config = spec.partition("#")  # "wikimedia/wikipedia#20231101.pt": a named configuration
    try:
        ds = datasets.load_dataset(name, config or None, streaming=True)
    except Exception as e:  # datasets raises many kinds: not found, offline, bad layout
        raise UserError(
            f"--extra {spec}: not a file or folder here, and datasets.load_dataset could not open it "
            f"({type(e).__name__}: {e})"
        ) from e
    splits = ds.items() if isinstance(ds, dict) else [("train", ds)]
    for split, part in sorted(splits):
        for i, rec in enumerate(part):
            text = _text_of(rec, text_field, f"dataset {spec} ({split})")
            if text is not None:
                yield _record_id(rec, f"{split}:{i}"), text


def iter_documents(source: ExtraSource) -> Iterator[tuple[str, str]]:
    """(doc id, text) of every document of a source, streamed, in a fixed order.

    A doc id is the record's `id` (or `doc_id`, `url`) field, else its position (`file:row`).
    A folder of .txt files gives one document per file; any other folder is opened by
    `datasets.load_dataset(folder, streaming=True)`, as is a name that is not a path (a hub dataset).
    """
    path = Path(source.spec)
    if path.is_file():
        yield from _read_file(path, source.text_field, "")
        return
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.is_file() and not p.name.startswith("."))
        if files and all(p.suffix.lower() == ".txt" for p in files):
            for p in files:
                yield from _read_file(p, source.text_field, str(p.relative_to(path)) + ":")
            return
        yield from _read_dataset(str(path), source.text_field)
        return
    if path.is_absolute() or source.spec.startswith(".") or path.suffix.lower() in FILE_SUFFIXES:
        raise UserError(f"--extra {source.spec}: no such file or folder")
    yield from _read_dataset(source.spec, source.text_field)


def check_sources(sources: Sequence[ExtraSource]) -> None:
    """UserError before any work for a local source that is missing or lacks the text field
    (reads its first document; a hub name is only opened when the build reaches it)."""
    for source in sources:
        path = Path(source.spec)
        if path.exists():
            if next(iter_documents(source), None) is None:
                raise UserError(f"--extra {source.spec} holds no documents")
        elif path.is_absolute() or source.spec.startswith(".") or path.suffix.lower() in FILE_SUFFIXES:
            raise UserError(f"--extra {source.spec}: no such file or folder")


# ---------------------------------------------------------------------------------------------
# Cleaning, per chunk (in a worker)


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
            [_plain(asdict(self.config)), [self.dedup.num_perm, self.dedup.shingle_words, self.dedup.seed]],
            sort_keys=True,
        )
        h.update(config.encode() + _CODE_VERSION.encode())
        return h.hexdigest()[:32]

    def __call__(self, docs: list[tuple[str, str]]) -> ChunkSummary:
        cache_file = Path(self.cache_dir) / "docs" / f"{self.key(docs)}.json"
        if cache_file.exists():
            entry = json.loads(cache_file.read_text(encoding="utf-8"))
        else:
            out = []
            for doc_id, text in docs:
                try:
                    doc = clean_document(text, self.config.docs)
                except DocumentRejected as e:
                    out.append({"id": doc_id, "reason": e.reason})
                    continue
                sig = book_signature(doc.paragraphs, self.dedup)
                out.append(
                    {"id": doc_id, "paragraphs": doc.paragraphs, "drops": doc.drops, "sig": _pack(sig)}
                )
            entry = {
                "input_bytes": sum(len(t.encode("utf-8", "surrogatepass")) for _, t in docs),
                "docs": out,
            }
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
        num_perm = self.dedup.num_perm
        return ChunkSummary(
            cache_file=str(cache_file),
            documents=len(entry["docs"]),
            input_bytes=entry["input_bytes"],
            rejected=dict(rejected),
            drops=dict(drops),
            signatures=np.stack(sigs) if sigs else np.zeros((0, num_perm), dtype="<u4"),
            kept=len(sigs),
        )


def _plain(obj):
    if isinstance(obj, dict):
        return {str(k): _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_plain(v) for v in obj]
    return obj


def read_chunk(summary: ChunkSummary) -> list[dict]:
    """The documents of a chunk from its cache file: {"id", "paragraphs"} kept, {"id", "reason"} not."""
    return json.loads(Path(summary.cache_file).read_text(encoding="utf-8"))["docs"]


def chunked(docs: Iterator[tuple[str, str]], chunk_chars: int) -> Iterator[list[tuple[str, str]]]:
    chunk, size = [], 0
    for doc in docs:
        chunk.append(doc)
        size += len(doc[1])
        if size >= chunk_chars:
            yield chunk
            chunk, size = [], 0
    if chunk:
        yield chunk


Chunk = list[tuple[str, str]]  # (doc id, text) pairs, about `chunk_chars` of text
# The executor of the per-chunk stage: (cleaner, chunks) -> summaries in chunk order, streamed, with a
# bounded number of chunks in flight. A process pool here; a Prefect task runner in pipelines/.
ChunkMapper = Callable[["ChunkCleaner", Iterator[Chunk]], Iterator[ChunkSummary]]


def chunk_process_pool(workers: int = 1) -> ChunkMapper:
    """Clean chunks in `workers` processes, at most 2 x workers chunks in flight (flat memory)."""

    def map_chunks(cleaner: ChunkCleaner, chunks: Iterator[Chunk]) -> Iterator[ChunkSummary]:
        if workers <= 1:
            yield from map(cleaner, chunks)
            return
        with ProcessPoolExecutor(max_workers=workers) as pool:
            pending: deque[Future] = deque()
            for chunk in chunks:
                pending.append(pool.submit(cleaner, chunk))
                if len(pending) >= 2 * workers:
                    yield pending.popleft().result()
            while pending:
                yield pending.popleft().result()

    return map_chunks


def clean_source(
    source: ExtraSource,
    cleaner: ChunkCleaner,
    signatures: SignatureFile,
    map_chunks: ChunkMapper,
    progress: bool = True,
) -> list[ChunkSummary]:
    """Stream a source through `cleaner` on `map_chunks`; chunk summaries in source order.

    Each chunk's signatures go to `signatures` (on disk) as the chunk arrives.
    """
    out: list[ChunkSummary] = []
    with tqdm(desc=f"clean {source.name}", unit="doc", disable=not progress, file=sys.stderr) as bar:
        for summary in map_chunks(cleaner, chunked(iter_documents(source), cleaner.config.chunk_chars)):
            assert summary.signatures is not None
            signatures.append(summary.signatures)
            summary.signatures = None
            out.append(summary)
            bar.update(summary.documents)
    return out


# ---------------------------------------------------------------------------------------------
# Near duplicates across everything: banded LSH over signatures read back from disk


class SignatureFile:
    """MinHash signatures (uint32 rows) appended to a file in document order and read back a window
    at a time, so that near-duplicate detection keeps ~30 bytes per document in memory, not 512."""

    def __init__(self, path: str | Path, num_perm: int, window_rows: int = 1 << 14):
        self.path, self.num_perm, self.window_rows = Path(path), num_perm, window_rows
        self.rows = 0
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.path.write_bytes(b"")

    def __len__(self) -> int:
        return self.rows

    def append(self, signatures: np.ndarray) -> None:
        signatures = np.ascontiguousarray(signatures, dtype="<u4").reshape(-1, self.num_perm)
        with open(self.path, "ab") as f:
            f.write(signatures.tobytes())
        self.rows += len(signatures)

    def windows(self) -> Iterator[tuple[int, np.ndarray]]:
        """(first row, rows) for consecutive windows of the file."""
        row_bytes = 4 * self.num_perm
        for start in range(0, self.rows, self.window_rows):
            n = min(self.window_rows, self.rows - start)
            block = np.fromfile(self.path, dtype="<u4", count=n * self.num_perm, offset=start * row_bytes)
            yield start, block.reshape(n, self.num_perm)

    def take(self, rows: np.ndarray) -> np.ndarray:
        """The signatures of the given rows, read one by one (no mapping: RSS stays as it is)."""
        row_bytes = 4 * self.num_perm
        out = np.empty((len(rows), self.num_perm), dtype="<u4")
        with open(self.path, "rb") as f:
            for i, row in enumerate(rows):
                out[i] = np.frombuffer(os.pread(f.fileno(), row_bytes, int(row) * row_bytes), dtype="<u4")
        return out


def _as_signature_file(signatures: np.ndarray, path: Path) -> SignatureFile:
    out = SignatureFile(path, signatures.shape[1])
    out.append(signatures)
    return out


def near_duplicates(
    signatures: SignatureFile | np.ndarray, threshold: float, rows: int, seed: int = 1
) -> np.ndarray:
    """For each row, the row it duplicates (the lowest index in its group), or -1 if it is kept.

    Candidates share one LSH band (rows x 32-bit values hashed together); a candidate pair counts only
    if the full signatures agree on at least `threshold` of their values. Groups are connected
    components; the earliest row of a group (a Gutenberg book, when the books come first) is kept.
    Each band's keys (8 bytes a document) are computed from one pass over the signature file; pairs
    already in one group are not checked again, and the others are checked a batch at a time.
    """
    if isinstance(signatures, np.ndarray):
        with tempfile.TemporaryDirectory() as tmp:
            return near_duplicates(_as_signature_file(signatures, Path(tmp) / "sig"), threshold, rows, seed)
    n, num_perm = len(signatures), signatures.num_perm
    parent = np.arange(n)
    if n < 2:
        return np.full(n, -1)
    empty = np.zeros(n, dtype=bool)  # no shingles: matches nothing
    for start, block in signatures.windows():
        empty[start : start + len(block)] = (block == 2**32 - 1).all(axis=1)
    mult = np.random.RandomState(seed).randint(1, 2**63 - 1, size=rows, dtype=np.int64).astype(np.uint64)

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    def check(pairs: list[tuple[int, int]]) -> None:
        firsts = np.array([a for a, _ in pairs])
        others = np.array([b for _, b in pairs])
        sims = (signatures.take(firsts) == signatures.take(others)).mean(axis=1)
        for (a, b), sim in zip(pairs, sims, strict=True):
            ra, rb = find(a), find(b)
            if sim >= threshold and ra != rb:
                parent[max(ra, rb)] = min(ra, rb)

    keys = np.empty(n, dtype=np.uint64)
    for band in range(num_perm // rows):
        for start, block in signatures.windows():
            cols = block[:, band * rows : (band + 1) * rows].astype(np.uint64)
            keys[start : start + len(block)] = (cols * mult).sum(axis=1)
        keys[empty] = np.arange(int(empty.sum()), dtype=np.uint64) * np.uint64(2654435761) + np.uint64(7)
        order = np.argsort(keys, kind="stable")
        sorted_keys = keys[order]
        starts = np.flatnonzero(np.r_[True, sorted_keys[1:] != sorted_keys[:-1]])
        ends = np.r_[starts[1:], n]
        pairs: list[tuple[int, int]] = []
        for g in np.flatnonzero(ends - starts > 1):
            members = order[starts[g] : ends[g]]
            first = int(members[0])
            pairs.extend((first, int(m)) for m in members[1:] if find(first) != find(int(m)))
            if len(pairs) >= 4096:
                check(pairs)
                pairs = []
        if pairs:
            check(pairs)
        del order, sorted_keys, starts, ends
    roots, jumped = parent, parent[parent]  # pointer jumping, in numpy: until each row points at its root
    while not np.array_equal(jumped, roots):
        roots, jumped = jumped, jumped[jumped]
    return np.where(roots == np.arange(n), -1, roots)


# ---------------------------------------------------------------------------------------------
# Splits, weights, loose paragraph fingerprints


def split_position(source: str, doc_id: str, salt: str) -> float:
    digest = hashlib.sha256(f"{salt}:{source}:{doc_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def assign_document_split(source: str, doc_id: str, config: SplitConfig) -> str:
    """A document's split from its source and id alone (the books' ranges: validation, test, train)."""
    x = split_position(source, doc_id, config.salt)
    if x < config.validation_fraction:
        return "validation"
    if x < config.validation_fraction + config.test_fraction:
        return "test"
    return "train"


def train_copies(source: str, doc_id: str, weight: float) -> int:
    """How many times a train document enters the mix: floor(weight), plus one with the fraction's odds."""
    whole = math.floor(weight)
    x = split_position(source, doc_id, "ptgpt-weight-v1")
    return whole + (1 if x < weight - whole else 0)


def loose_fingerprint(text: str) -> int:
    """Fingerprint of a paragraph's words with case, accents, spelling and punctuation folded away."""
    return int.from_bytes(
        hashlib.blake2b(" ".join(skeleton_words(text)).encode(), digest_size=8).digest(), "little"
    )


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
    documents: int = 0
    input_bytes: int = 0
    kept: int = 0
    dropped: Counter = field(default_factory=Counter)  # reason -> documents
    paragraphs_dropped: Counter = field(default_factory=Counter)  # reason -> paragraphs/lines
    near_duplicate_examples: list = field(default_factory=list)
    splits: dict = field(default_factory=dict)  # split -> documents, rows, tokens, bytes, copies

    def to_dict(self) -> dict:
        return {
            "spec": self.spec,
            "weight": self.weight,
            "text_field": self.text_field,
            "documents": self.documents,
            "input_bytes": self.input_bytes,
            "kept": self.kept,
            "dropped": dict(sorted(self.dropped.items())),
            "paragraphs_dropped": dict(sorted(self.paragraphs_dropped.items())),
            "near_duplicate_examples": self.near_duplicate_examples,
            "splits": self.splits,
        }


def spool_documents(
    sources: Sequence[ExtraSource],
    chunks: Sequence[Sequence[ChunkSummary]],
    dup_of: np.ndarray,
    first_row: int,
    item_names: Callable[[int], str],
    seen: FingerprintSet,
    loose: FingerprintSet,
    dedup: DedupConfig,
    config: SourcesConfig,
    split_config: SplitConfig,
    spool_dir: Path,
    progress: bool = True,
) -> list[SourceStats]:
    """Drop near duplicates and duplicate paragraphs; write the survivors to spool_dir/<split>.jsonl.

    `dup_of` covers every kept book and then every kept document, documents from row `first_row` on;
    `seen`/`loose` arrive holding the books' paragraph fingerprints and go on across sources.
    """
    spool_dir.mkdir(parents=True, exist_ok=True)
    stack = contextlib.ExitStack()
    files = {
        s: stack.enter_context(open(spool_dir / f"{s}.jsonl", "w", encoding="utf-8"))  # noqa: SIM115
        for s in ("train", "validation", "test")
    }
    stats = []
    row = first_row
    try:
        for index, (source, summaries) in enumerate(zip(sources, chunks, strict=True)):
            st = SourceStats(source.name, source.spec, source.weight, source.text_field)
            for split in files:
                st.splits[split] = {"documents": 0, "copies": 0, "rows": 0, "tokens": 0, "bytes": 0}
            for summary in tqdm(
                summaries, desc=f"dedup {source.name}", disable=not progress, file=sys.stderr
            ):
                st.documents += summary.documents
                st.input_bytes += summary.input_bytes
                st.dropped.update(summary.rejected)
                st.paragraphs_dropped.update(summary.drops)
                for doc in read_chunk(summary):
                    if "reason" in doc:
                        continue
                    dup = int(dup_of[row])
                    row += 1
                    if dup >= 0:
                        st.dropped["near_duplicate"] += 1
                        if len(st.near_duplicate_examples) < 20:
                            st.near_duplicate_examples.append(
                                {"id": doc["id"], "duplicate_of": item_names(dup)}
                            )
                        continue
                    paragraphs = doc["paragraphs"]
                    long = [i for i, p in enumerate(paragraphs) if len(p) >= dedup.min_paragraph_chars]
                    fps = [paragraph_fingerprint(paragraphs[i]) for i in long]
                    lfps = [loose_fingerprint(paragraphs[i]) for i in long]
                    found = zip(fps, lfps, seen.contains_many(fps), loose.contains_many(lfps), strict=True)
                    known = dict(zip(long, found, strict=True))
                    keep, reasons = [], Counter()
                    new_fps: set[int] = set()
                    new_loose: set[int] = set()
                    for i in range(len(paragraphs)):
                        if i not in known:  # short: never a duplicate
                            keep.append(i)
                            continue
                        fp, lfp, fp_seen, lfp_seen = known[i]
                        if fp_seen or fp in new_fps:
                            reasons["duplicate_paragraph"] += 1
                        elif lfp_seen or lfp in new_loose:
                            reasons["near_duplicate_paragraph"] += 1
                        else:
                            keep.append(i)
                            new_fps.add(fp)
                            new_loose.add(lfp)
                    kept_chars = sum(len(paragraphs[i]) for i in keep)
                    if kept_chars < config.min_kept_fraction * sum(map(len, paragraphs)):
                        st.dropped["mostly_duplicate"] += 1
                        continue
                    seen.update(new_fps)
                    loose.update(new_loose)
                    st.paragraphs_dropped.update(reasons)
                    st.kept += 1
                    split = assign_document_split(source.name, doc["id"], split_config)
                    copies = train_copies(source.name, doc["id"], source.weight) if split == "train" else 1
                    st.splits[split]["documents"] += 1
                    st.splits[split]["copies"] += copies
                    rec = {
                        "s": index,
                        "id": doc["id"],
                        "idx": keep,
                        "t": [paragraphs[i] for i in keep],
                        "c": copies,
                    }
                    files[split].write(json.dumps(rec, ensure_ascii=False) + "\n")
            stats.append(st)
    finally:
        stack.close()
    return stats


def iter_spool(spool_dir: Path, split: str) -> Iterator[dict]:
    with open(spool_dir / f"{split}.jsonl", encoding="utf-8") as f:
        for line in f:
            yield json.loads(line)
