"""Extra text sources next to the Gutenberg books (`ptgpt corpus build --extra SPEC`): what a spec
means, and the readers that stream a source's documents into the one build.

    SPEC        SOURCE[:WEIGHT][:min_words=N]; SOURCE is a .jsonl/.json/.parquet/.txt file, a folder
                of them, or anything that `datasets.load_dataset(..., streaming=True)` opens
    readers     one class per kind of input, each overriding one method, `read` (datatrove-style):
                (doc id, text) pairs, streamed, in a fixed order

What happens to the documents next (clean, near duplicates, paragraph dedup, split, spool) is
corpus/documents.py's; the build (corpus/build.py) runs both, with the books, as one pipeline.

Bad input is one line (`UserError`) naming the file: a text that is not UTF-8 (the build stops
rather than guess an encoding and mix mojibake into the corpus: convert the file, or leave it out),
a Parquet file that cannot be read, a JSON line that is not JSON, a missing text field.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

from common.errors import UserError
from corpus.doc_filters import DocFilterConfig
from corpus.staging import inside

GUTENBERG = "gutenberg"  # the source name of the raw store's books
FILE_SUFFIXES = (".jsonl", ".json", ".parquet", ".txt")
MAX_WEIGHT = 100.0  # more copies of a document teach the model nothing and fill the disk
SPEC_OPTIONS = ("min_words",)


@dataclass(frozen=True)
class ExtraSource:
    spec: str  # a path, or a dataset for `datasets.load_dataset` (`NAME` or `NAME#CONFIG`)
    weight: float = 1.0  # copies of each train document in the mix (fractions: a deterministic sample)
    text_field: str = "text"
    name: str = ""  # the `source` column's value; set by `parse_extras`
    min_words: int | None = None  # this source's DocFilterConfig.min_words (None: the default)

    def doc_filters(self, config: DocFilterConfig) -> DocFilterConfig:
        """The document filters of this source: `config` with this source's own length rule."""
        return config if self.min_words is None else replace(config, min_words=self.min_words)


@dataclass(frozen=True)
class SourcesConfig:
    docs: DocFilterConfig = field(default_factory=DocFilterConfig)
    doc_threshold: float = 0.7  # estimated Jaccard at or above which a document is a near duplicate
    lsh_rows: int = 5  # rows per LSH band: 25 bands of 5 find pairs at J=0.7 with p~0.99
    chunk_chars: int = 1_000_000  # documents travel to the cleaning workers in chunks of this size
    min_kept_fraction: float = 0.5  # after paragraph dedup, less than this left: `mostly_duplicate`


def _split_options(arg: str) -> tuple[str, dict[str, int]]:
    """`SOURCE[:WEIGHT]:key=value...` -> (`SOURCE[:WEIGHT]`, options), options taken from the end."""
    options: dict[str, int] = {}
    rest = arg
    while True:
        head, sep, tail = rest.rpartition(":")
        m = re.fullmatch(r"(\w+)=(.*)", tail)
        if not (sep and head and m):
            return rest, options
        key, value = m.groups()
        if key not in SPEC_OPTIONS:
            raise UserError(f"--extra {arg}: unknown option {key!r} (known: {', '.join(SPEC_OPTIONS)})")
        try:
            options[key] = int(value)
        except ValueError:
            raise UserError(f"--extra {arg}: {key} must be a whole number ({key}=20)") from None
        if options[key] < 0:
            raise UserError(f"--extra {arg}: {key} must be >= 0")
        rest = head


def parse_extra(arg: str, text_field: str = "text") -> ExtraSource:
    """`SOURCE[:WEIGHT][:min_words=N]` -> ExtraSource (the name is set by `parse_extras`)."""
    rest, options = _split_options(arg)
    spec, weight = rest, 1.0
    head, sep, tail = rest.rpartition(":")
    if sep and head:
        try:
            weight = float(tail)
            spec = head
        except ValueError:
            pass
    if not math.isfinite(weight) or not 0 <= weight <= MAX_WEIGHT:
        raise UserError(
            f"--extra {arg}: the weight must be a number from 0 to {MAX_WEIGHT:g} (SOURCE:0.5, SOURCE:2)"
        )
    return ExtraSource(spec=spec, weight=weight, text_field=text_field, min_words=options.get("min_words"))


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
        out.append(ExtraSource(src.spec, src.weight, src.text_field, name, src.min_words))
    return out


# ---------------------------------------------------------------------------------------------
# Readers: (doc id, text) pairs, streamed


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


def _one_line(e: Exception) -> str:
    return " ".join(f"{type(e).__name__}: {e}".split())


def _utf8(data: bytes, where: str) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise UserError(
            f"--extra {where} is not UTF-8 text (byte 0x{data[e.start]:02x} at offset {e.start}): "
            "convert it to UTF-8 (iconv -f LATIN1 -t UTF-8) or leave it out"
        ) from None


class Reader:
    """The documents of one input. A kind of input is a subclass that overrides `read`."""

    def __init__(self, path: Path | str, text_field: str = "text", prefix: str = ""):
        self.path, self.text_field, self.prefix = path, text_field, prefix

    def read(self) -> Iterator[tuple[str, str]]:
        """(doc id, text) of every document, in a fixed order; a doc id defaults to `prefix + row`."""
        raise NotImplementedError


class JsonlReader(Reader):
    """JSON lines (or a JSON array, read whole): one record a document."""

    def read(self) -> Iterator[tuple[str, str]]:
        with open(self.path, "rb") as f:
            if f.read(1) == b"[":  # a JSON array: not streamable, read whole
                f.seek(0)
                records = json.loads(_utf8(f.read(), str(self.path)))
                for i, rec in enumerate(records):
                    text = _text_of(rec, self.text_field, str(self.path))
                    if text is not None:
                        yield _record_id(rec, f"{self.prefix}{i}"), text
                return
            f.seek(0)
            for i, raw in enumerate(f):
                line = _utf8(raw, f"{self.path}:{i + 1}")
                if not line.strip():
                    continue
                try:
                    rec = json.loads(line)
                except json.JSONDecodeError as e:
                    raise UserError(f"{self.path}:{i + 1} is not JSON ({e}): one JSON object per line") from e
                text = _text_of(rec, self.text_field, f"{self.path}:{i + 1}")
                if text is not None:
                    yield _record_id(rec, f"{self.prefix}{i}"), text


class ParquetReader(Reader):
    """A Parquet file, a batch of rows at a time: the text column, and `id`/`doc_id`/`url` if any."""

    def read(self) -> Iterator[tuple[str, str]]:
        import pyarrow as pa
        import pyarrow.parquet as pq

        try:
            f = pq.ParquetFile(self.path)
            names = f.schema_arrow.names
            if self.text_field not in names:
                raise UserError(
                    f"{self.path} has no column {self.text_field!r} (columns: {', '.join(names)}): "
                    "pass --text-field"
                )
            id_col = next((c for c in ("id", "doc_id", "url") if c in names), None)
            columns = [self.text_field] + ([id_col] if id_col else [])
            row = 0
            for batch in f.iter_batches(batch_size=1024, columns=columns):
                texts = batch.column(0).to_pylist()
                ids = batch.column(1).to_pylist() if id_col else [None] * len(texts)
                for text, doc_id in zip(texts, ids, strict=True):
                    if isinstance(text, str):
                        yield (str(doc_id) if doc_id not in (None, "") else f"{self.prefix}{row}"), text
                    row += 1
        except (pa.ArrowException, OSError) as e:
            raise UserError(f"--extra {self.path} is not a readable Parquet file ({_one_line(e)})") from None


class TextReader(Reader):
    """One .txt file, one document; its id is its path inside the source folder (or its name)."""

    def read(self) -> Iterator[tuple[str, str]]:
        yield (
            self.prefix.removesuffix(":") or Path(self.path).name,
            _utf8(Path(self.path).read_bytes(), str(self.path)),
        )


class TextFolderReader(Reader):
    """A folder of .txt files, one document each, in path order."""

    def read(self) -> Iterator[tuple[str, str]]:
        root = Path(self.path)
        for p in sorted(p for p in root.rglob("*") if p.is_file() and not p.name.startswith(".")):
            yield from TextReader(p, self.text_field, str(p.relative_to(root)) + ":").read()


class DatasetReader(Reader):
    """Anything `datasets.load_dataset(NAME[#CONFIG], streaming=True)` opens: every split, by name."""

    def read(self) -> Iterator[tuple[str, str]]:
        import datasets

        spec = str(self.path)
        where = "" if Path(spec).exists() else "not a file or folder here, and "
        datasets.logging.set_verbosity(datasets.logging.CRITICAL)  # its errors come back as one UserError
        datasets.logging.disable_progress_bar()
        name, _, config = spec.partition("#")  # "wikimedia/wikipedia#20231101.pt": a named configuration
        try:
            ds = datasets.load_dataset(name, config or None, streaming=True)
        except Exception as e:  # datasets raises many kinds: not found, offline, bad layout
            raise UserError(
                f"--extra {spec}: {where}datasets.load_dataset could not open it ({_one_line(e)})"
            ) from e
        splits = ds.items() if isinstance(ds, dict) else [("train", ds)]
        try:
            for split, part in sorted(splits):
                for i, rec in enumerate(part):
                    text = _text_of(rec, self.text_field, f"dataset {spec} ({split})")
                    if text is not None:
                        yield _record_id(rec, f"{split}:{i}"), text
        except UserError:
            raise
        except Exception as e:  # a file of the dataset that cannot be read: a corrupt Parquet file...
            raise UserError(f"--extra {spec}: reading it failed ({_one_line(e)})") from e


FILE_READERS: dict[str, type[Reader]] = {
    ".jsonl": JsonlReader,
    ".json": JsonlReader,
    ".parquet": ParquetReader,
    ".txt": TextReader,
}


def _looks_local(spec: str) -> bool:
    path = Path(spec)
    return path.is_absolute() or spec.startswith(".") or path.suffix.lower() in FILE_SUFFIXES


def reader_for(source: ExtraSource) -> Reader:
    """The reader of a source: by file suffix; a folder of .txt files; any other folder, or a name that
    is not a path (a hub dataset), through `datasets`."""
    path = Path(source.spec)
    if path.is_file():
        kind = FILE_READERS.get(path.suffix.lower())
        if kind is None:
            raise UserError(f"{path}: unknown kind of file; use {', '.join(FILE_SUFFIXES)}")
        return kind(path, source.text_field)
    if path.is_dir():
        files = [p for p in path.rglob("*") if p.is_file() and not p.name.startswith(".")]
        if files and all(p.suffix.lower() == ".txt" for p in files):
            return TextFolderReader(path, source.text_field)
        return DatasetReader(str(path), source.text_field)
    if _looks_local(source.spec):
        raise UserError(f"--extra {source.spec}: no such file or folder")
    return DatasetReader(source.spec, source.text_field)


def iter_documents(source: ExtraSource) -> Iterator[tuple[str, str]]:
    """(doc id, text) of every document of a source, streamed, in a fixed order.

    A doc id is the record's `id` (or `doc_id`, `url`) field, else its position (`file:row`).
    """
    return reader_for(source).read()


Chunk = list[tuple[str, str]]  # (doc id, text) pairs, about `chunk_chars` of text


def chunked(docs: Iterator[tuple[str, str]], chunk_chars: int) -> Iterator[Chunk]:
    """A reader's documents in chunks of about `chunk_chars` characters: what one cleaning task gets."""
    chunk, size = [], 0
    for doc in docs:
        chunk.append(doc)
        size += len(doc[1])
        if size >= chunk_chars:
            yield chunk
            chunk, size = [], 0
    if chunk:
        yield chunk


# ---------------------------------------------------------------------------------------------
# Before any work


def check_sources(
    sources: Sequence[ExtraSource], out_dir: str | Path | None = None, raw_dir: str | Path | None = None
) -> None:
    """UserError before any work for a local source that is missing, lacks the text field, or is, holds
    or lies inside the corpus folder or the raw store (reads its first document; a hub name is only
    opened when the build reaches it)."""
    for source in sources:
        path = Path(source.spec)
        if path.exists():
            for what, folder in (("--out", out_dir), ("the raw store", raw_dir)):
                if folder is not None and (inside(path, Path(folder)) or inside(Path(folder), path)):
                    raise UserError(
                        f"--extra {source.spec} overlaps {what} {folder}: a corpus must not read its own "
                        "output or the books again; choose a source outside both"
                    )
            if next(iter_documents(source), None) is None:
                raise UserError(f"--extra {source.spec} holds no documents")
        elif _looks_local(source.spec):
            raise UserError(f"--extra {source.spec}: no such file or folder")


def local_bytes(source: ExtraSource) -> int:
    """Bytes of a local source on disk (0 for a hub dataset: not known before it is read)."""
    path = Path(source.spec)
    if path.is_file():
        return path.stat().st_size
    if path.is_dir():
        return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
    return 0
