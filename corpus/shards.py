"""Stage 9: Parquet shards (docs/formats.md, "Corpus").

One `ShardWriter` per split writes `part-NNNNN.parquet` files: zstd, row groups of
`row_group_rows` rows so a reader can stream them, whole books only (a book never spans two
shards, so a shard is a self-contained unit for a data-parallel reader). A shard is written under a
temporary name and renamed when closed; its sha256 and counts are returned for the manifest.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from common import corpus_format as fmt

SCHEMA = fmt.SHARD_SCHEMA  # docs/formats.md; defined once in common/corpus_format.py


@dataclass(frozen=True)
class ShardConfig:
    row_group_rows: int = 1000  # about a thousand paragraphs: small enough to stream
    shard_text_bytes: int = 32 * 2**20  # start a new shard after a book once this much text is written
    compression: str = "zstd"
    compression_level: int = 3


class ShardWriter:
    """Writes the rows of one split into numbered shards, book by book.

    Usage: `add_book(...)` for each book in order, then `close()`, which returns the shard entries
    for manifest.json. `root` is the corpus folder; shards go to `root/<split>/`.
    """

    def __init__(
        self, root: str | Path, split: str, config: ShardConfig = ShardConfig(), schema: pa.Schema = SCHEMA
    ):
        self.root = Path(root)
        self.split = split
        self.config = config
        self.schema = schema  # SCHEMA, or fmt.SOURCES_SHARD_SCHEMA for a corpus with --extra sources
        (self.root / split).mkdir(parents=True, exist_ok=True)
        self.shards: list[dict] = []
        self._writer: pq.ParquetWriter | None = None
        self._tmp: Path | None = None
        self._rows: dict[str, list] = {name: [] for name in schema.names}
        self._stats = dict(rows=0, tokens=0, bytes=0)

    def _open(self) -> None:
        name = Path(fmt.shard_file(self.split, len(self.shards))).name
        self._tmp = self.root / self.split / f".{name}.tmp"
        self._writer = pq.ParquetWriter(
            self._tmp,
            self.schema,
            compression=self.config.compression,
            compression_level=self.config.compression_level,
            write_statistics=["book_id", "paragraph_index", "n_bytes"],
        )
        self._stats = dict(rows=0, tokens=0, bytes=0)

    def _flush(self, final: bool = False) -> None:
        n = self.config.row_group_rows
        while len(self._rows["book_id"]) >= n or (final and self._rows["book_id"]):
            chunk = {k: v[:n] for k, v in self._rows.items()}
            self._rows = {k: v[n:] for k, v in self._rows.items()}
            assert self._writer is not None
            self._writer.write_table(pa.Table.from_pydict(chunk, schema=self.schema), row_group_size=n)

    def add_book(
        self,
        book_id: int,
        title: str,
        author: str,
        paragraph_indices: Sequence[int],
        texts: Sequence[str],
        tokens: Sequence[Sequence[int]],
        source: str | None = None,
        source_id: str | None = None,
    ) -> None:
        """Append one whole book's (or document's) rows, in paragraph order.

        source, source_id: the origin columns of a corpus with extra sources (ignored without them)."""
        if not (len(paragraph_indices) == len(texts) == len(tokens)):
            raise ValueError("paragraph_indices, texts and tokens must have the same length")
        if not texts:
            return
        if self._writer is None:
            self._open()
        n_bytes = [len(t.encode("utf-8")) for t in texts]
        rows = self._rows
        rows["book_id"].extend([book_id] * len(texts))
        rows["paragraph_index"].extend(paragraph_indices)
        rows["title"].extend([title] * len(texts))
        rows["author"].extend([author] * len(texts))
        rows["text"].extend(texts)
        rows["tokens"].extend(tokens)
        rows["n_bytes"].extend(n_bytes)
        if "source" in rows:
            rows["source"].extend([source] * len(texts))
            rows["source_id"].extend([source_id] * len(texts))
        self._stats["rows"] += len(texts)
        self._stats["tokens"] += sum(len(t) for t in tokens)
        self._stats["bytes"] += sum(n_bytes)
        self._flush()
        if self._stats["bytes"] >= self.config.shard_text_bytes:
            self._close_shard()

    def _close_shard(self) -> None:
        if self._writer is None:
            return
        self._flush(final=True)
        self._writer.close()
        assert self._tmp is not None
        final = self._tmp.with_name(self._tmp.name[1 : -len(".tmp")])
        os.replace(self._tmp, final)
        s = self._stats
        self.shards.append(
            fmt.shard_entry(self.root, f"{self.split}/{final.name}", s["rows"], s["tokens"], s["bytes"])
        )
        self._writer = None
        self._tmp = None

    def close(self) -> list[dict]:
        """Finish the last shard; returns one manifest entry per shard."""
        self._close_shard()
        return self.shards

    def abort(self) -> None:
        """Drop the shard being written (its temp file); finished shards stay."""
        if self._writer is not None:
            self._writer.close()
            self._writer = None
        if self._tmp is not None:
            self._tmp.unlink(missing_ok=True)
            self._tmp = None

    def __enter__(self) -> ShardWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()
