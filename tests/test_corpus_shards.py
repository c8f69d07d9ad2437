"""Stage 9: Parquet shards: schema, whole books per shard, streamable row groups, atomic files."""

from __future__ import annotations

import hashlib

import pyarrow.parquet as pq
import pytest

from corpus.shards import SCHEMA, ShardConfig, ShardWriter


def book(book_id: int, n: int) -> tuple:
    texts = [f"Parágrafo {i} do livro {book_id}, com acentuação: ç ã é." for i in range(n)]
    tokens = [[book_id % 1000, i, len(t)] for i, t in enumerate(texts)]
    return book_id, f"Título {book_id}", f"Autor {book_id}", list(range(0, 2 * n, 2)), texts, tokens


def test_shards_hold_whole_books_in_order(tmp_path) -> None:
    config = ShardConfig(row_group_rows=7, shard_text_bytes=3000)
    books = [book(100 + i, n) for i, n in enumerate([30, 5, 61, 2, 40, 12])]
    with ShardWriter(tmp_path, "train", config) as writer:
        for b in books:
            writer.add_book(*b)
    entries = writer.shards
    assert len(entries) > 1
    seen_books = []
    for i, entry in enumerate(entries):
        path = tmp_path / entry["file"]
        assert entry["file"] == f"train/part-{i:05d}.parquet"
        assert entry["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
        f = pq.ParquetFile(path)
        assert f.schema_arrow == SCHEMA
        assert f.metadata.num_row_groups == entry["row_groups"]
        assert all(f.metadata.row_group(g).num_rows <= 7 for g in range(f.metadata.num_row_groups))
        assert f.metadata.row_group(0).column(0).compression == "ZSTD"
        t = f.read()
        assert t.num_rows == entry["rows"]
        assert entry["tokens"] == sum(len(x) for x in t["tokens"].to_pylist())
        assert entry["bytes"] == sum(t["n_bytes"].to_pylist())
        ids = t["book_id"].to_pylist()
        # contiguous books: each id appears in one run, and never in another shard
        runs = [b for j, b in enumerate(ids) if j == 0 or ids[j - 1] != b]
        assert len(runs) == len(set(runs))
        assert not set(runs) & set(seen_books)
        seen_books += runs
    assert seen_books == [b[0] for b in books]

    rows = pq.read_table(tmp_path / "train").to_pylist()
    expected = [
        (bid, idx, title, author, text, tokens, len(text.encode()))
        for bid, title, author, idxs, texts, toks in books
        for idx, text, tokens in zip(idxs, texts, toks, strict=True)
    ]
    assert [tuple(r[c] for c in SCHEMA.names) for r in rows] == expected
    assert not list((tmp_path / "train").glob(".*"))  # no temp files left


def test_one_shard_when_under_the_size(tmp_path) -> None:
    with ShardWriter(tmp_path, "test") as writer:
        writer.add_book(*book(1, 3))
        writer.add_book(*book(2, 0))  # an empty book adds nothing
    assert [e["rows"] for e in writer.shards] == [3]


def test_identical_input_gives_identical_bytes(tmp_path) -> None:
    digests = []
    for name in ("a", "b"):
        with ShardWriter(tmp_path / name, "train", ShardConfig(row_group_rows=4)) as writer:
            for i in range(5):
                writer.add_book(*book(i, 9))
        digests.append([e["sha256"] for e in writer.shards])
    assert digests[0] == digests[1]


def test_failure_leaves_no_half_written_shard(tmp_path) -> None:
    with (
        pytest.raises(RuntimeError),
        ShardWriter(tmp_path, "train", ShardConfig(shard_text_bytes=500)) as writer,
    ):
        writer.add_book(*book(1, 20))  # fills and closes shard 0
        writer.add_book(*book(2, 3))  # shard 1 in progress
        raise RuntimeError("crash")
    files = sorted(p.name for p in (tmp_path / "train").iterdir())
    assert files == ["part-00000.parquet"]


def test_mismatched_columns_rejected(tmp_path) -> None:
    writer = ShardWriter(tmp_path, "train")
    with pytest.raises(ValueError, match="same length"):
        writer.add_book(1, "t", "a", [0, 1], ["x"], [[1]])
