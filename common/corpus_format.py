"""The corpus folder's contract (docs/formats.md, "Corpus"): Parquet schema, file names, manifest.

One definition that the builder (corpus/), the trainer (training/), the tests and the benchmarks all
read, so they cannot drift apart. It needs only pyarrow and the standard library (the one module of
common/ that needs more than the standard library), so a GPU box with the trainer's few packages
can import it.

    OUT/manifest.json          written last: its presence marks the corpus complete
    OUT/tokenizer.model        SentencePiece model, sha256 in the manifest
    OUT/README.md              dataset card
    OUT/<split>/part-NNNNN.parquet   zstd shards of SHARD_SCHEMA rows, whole books only
                               (SOURCES_SHARD_SCHEMA when built with extra sources)
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from common.files import sha256_file, write_json_atomic

SCHEMA_VERSION = 1
MANIFEST_FILE = "manifest.json"
TOKENIZER_FILE = "tokenizer.model"
README_FILE = "README.md"
CACHE_DIR = ".cache"  # the builder's per-book cache; not part of the corpus proper
SPLITS = ("train", "validation", "test")

SHARD_SCHEMA = pa.schema(
    [
        ("book_id", pa.int32()),
        ("paragraph_index", pa.int32()),
        ("title", pa.string()),
        ("author", pa.string()),
        ("text", pa.string()),
        ("tokens", pa.list_(pa.int32())),
        ("n_bytes", pa.int32()),
    ]
)

# A corpus built with extra sources (`--extra`) adds the origin of each row; a Gutenberg-only corpus
# keeps SHARD_SCHEMA (readers that need only book_id/tokens read both alike).
SOURCES_SHARD_SCHEMA = pa.schema(list(SHARD_SCHEMA) + [("source", pa.string()), ("source_id", pa.string())])


def shard_file(split: str, index: int) -> str:
    """A shard's path relative to the corpus folder: `train/part-00000.parquet`."""
    return f"{split}/part-{index:05d}.parquet"


def shard_entry(root: str | Path, file: str, rows: int, tokens: int, n_bytes: int) -> dict:
    """The manifest entry of a finished shard; row groups and sha256 are read from the file."""
    path = Path(root) / file
    return {
        "file": file,
        "rows": int(rows),
        "tokens": int(tokens),
        "bytes": int(n_bytes),
        "row_groups": pq.ParquetFile(path).metadata.num_row_groups,
        "sha256": sha256_file(path),
    }


def split_entry(books: Sequence[int], shards: Sequence[dict]) -> dict:
    """The manifest entry of a split: totals over its shards, its book ids, its shards."""
    return {
        "rows": sum(s["rows"] for s in shards),
        "tokens": sum(s["tokens"] for s in shards),
        "bytes": sum(s["bytes"] for s in shards),
        "books": [int(b) for b in books],
        "shards": list(shards),
    }


def tokenizer_entry(
    root: str | Path,
    vocab_size: int,
    separator_ids: Sequence[int],
    unk_id: int = 0,
    bos_id: int = 1,
    eos_id: int = 2,
    pad_id: int = 3,
    **extra,
) -> dict:
    """The manifest's `tokenizer` object for OUT/tokenizer.model (its sha256 is read from the file)."""
    return {
        "file": TOKENIZER_FILE,
        "sha256": sha256_file(Path(root) / TOKENIZER_FILE),
        "vocab_size": int(vocab_size),
        "unk_id": unk_id,
        "bos_id": bos_id,
        "eos_id": eos_id,
        "pad_id": pad_id,
        "separator_ids": [int(i) for i in separator_ids],
        **extra,
    }


def make_manifest(tokenizer: dict, splits: dict[str, dict], **extra) -> dict:
    """The manifest: schema version, tokenizer, splits, then whatever the writer adds (config, stats)."""
    return {"schema_version": SCHEMA_VERSION, "tokenizer": tokenizer, "splits": splits, **extra}


def write_manifest(root: str | Path, manifest: dict) -> Path:
    """Write OUT/manifest.json atomically. Call it last: its presence marks the corpus complete."""
    path = Path(root) / MANIFEST_FILE
    write_json_atomic(path, manifest)
    return path


class ManifestError(ValueError):
    """manifest.json is missing, unreadable, or of another schema version."""


def read_manifest(root: str | Path) -> dict:
    """Read and check OUT/manifest.json: present, valid JSON, this schema version, the keys readers need."""
    path = Path(root) / MANIFEST_FILE
    if not path.is_file():
        raise ManifestError(
            f"{path} not found: not a corpus folder, or one whose writing has not finished "
            f"({MANIFEST_FILE} is written last)"
        )
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ManifestError(f"{path} is not valid JSON: {e}") from e
    version = manifest.get("schema_version") if isinstance(manifest, dict) else None
    if version != SCHEMA_VERSION:
        raise ManifestError(
            f"{path} has schema_version {version!r}; this trainer reads schema_version "
            f"{SCHEMA_VERSION}: rebuild the corpus with this version of ptgpt"
        )
    for key in ("tokenizer", "splits"):
        if not isinstance(manifest.get(key), dict):
            raise ManifestError(f"{path} has no {key!r} object")
    for key in ("sha256", "vocab_size", "bos_id", "eos_id", "separator_ids"):
        if key not in manifest["tokenizer"]:
            raise ManifestError(f"{path}: tokenizer.{key} is missing")
    return manifest
