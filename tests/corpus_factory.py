"""Small corpora in the layout of docs/formats.md section 2, written with pyarrow, for the loader tests.

A book is `(book_id, paragraphs)` where each paragraph is a list of token ids. Texts are made up from the
ids (with accented letters, so n_bytes differs from the character count); the loader never reads them.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from common import corpus_format as fmt

Book = tuple[int, list[list[int]]]

BOS, EOS, PAD = 1, 2, 3
SEPARATOR = [4, 5]  # two ids, so tests notice a separator cut in half
FIRST_TEXT_ID = 8  # paragraph tokens never collide with the special ids above

SCHEMA = fmt.SHARD_SCHEMA


def random_books(
    seed: int,
    n_books: int,
    first_id: int = 100,
    max_paragraphs: int = 12,
    max_tokens: int = 20,
    vocab_size: int = 64,
) -> list[Book]:
    rng = np.random.default_rng(seed)
    books = []
    for b in range(n_books):
        paragraphs = [
            rng.integers(FIRST_TEXT_ID, vocab_size, size=int(rng.integers(1, max_tokens + 1))).tolist()
            for _ in range(int(rng.integers(1, max_paragraphs + 1)))
        ]
        books.append((first_id + b, paragraphs))
    return books


def paragraph_text(tokens: list[int]) -> str:
    return " ".join(f"ç{t}" for t in tokens)


def write_corpus(
    root: str | Path,
    splits: dict[str, list[Book]],
    *,
    rows_per_group: int = 4,
    books_per_shard: int = 3,
    vocab_size: int = 64,
    separator_ids: list[int] = SEPARATOR,
    schema_version: int = 1,
    tokenizer_bytes: bytes = b"not a real sentencepiece model",
) -> Path:
    """Write shards, tokenizer.model and manifest.json (last) under root; returns root."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    (root / fmt.TOKENIZER_FILE).write_bytes(tokenizer_bytes)
    manifest_splits = {}
    for split, books in splits.items():
        (root / split).mkdir(exist_ok=True)
        shards = []
        for s, start in enumerate(range(0, len(books), books_per_shard)):
            rows = [
                (book_id, i, toks)
                for book_id, paragraphs in books[start : start + books_per_shard]
                for i, toks in enumerate(paragraphs)
            ]
            texts = [paragraph_text(toks) for _, _, toks in rows]
            table = pa.table(
                {
                    "book_id": [r[0] for r in rows],
                    "paragraph_index": [r[1] for r in rows],
                    "title": [f"Livro {r[0]}" for r in rows],
                    "author": ["Autor" for _ in rows],
                    "text": texts,
                    "tokens": [r[2] for r in rows],
                    "n_bytes": [len(t.encode()) for t in texts],
                },
                schema=SCHEMA,
            )
            rel = fmt.shard_file(split, s)
            pq.write_table(table, root / rel, row_group_size=rows_per_group, compression="zstd")
            n_tokens = sum(len(r[2]) for r in rows)
            shards.append(
                fmt.shard_entry(root, rel, len(rows), n_tokens, sum(len(t.encode()) for t in texts))
            )
        manifest_splits[split] = fmt.split_entry([b for b, _ in books], shards)
    tokenizer = fmt.tokenizer_entry(
        root, vocab_size, separator_ids, unk_id=0, bos_id=BOS, eos_id=EOS, pad_id=PAD
    )
    manifest = fmt.make_manifest(tokenizer, manifest_splits)
    manifest["schema_version"] = schema_version  # a test may ask for another version
    fmt.write_manifest(root, manifest)
    return root


def reference_stream(books: list[Book], separator_ids: list[int] = SEPARATOR) -> list[int]:
    """The packed token stream of a whole split in file order, built the slow and obvious way."""
    out = []
    for _, paragraphs in books:
        for i, toks in enumerate(paragraphs):
            out += [BOS] if i == 0 else list(separator_ids)
            out += toks
        out.append(EOS)
    return out


def reference_unit_streams(
    books: list[Book], rows_per_group: int, books_per_shard: int, separator_ids: list[int] = SEPARATOR
) -> list[list[int]]:
    """The packed stream of each (shard, row_group) in file order: the same cut as write_corpus."""
    units = []
    for start in range(0, len(books), books_per_shard):
        rows = []  # (tokens, opens_book, closes_book)
        for _, paragraphs in books[start : start + books_per_shard]:
            for i, toks in enumerate(paragraphs):
                rows.append((toks, i == 0, i == len(paragraphs) - 1))
        for g in range(0, len(rows), rows_per_group):
            stream = []
            for toks, opens, closes in rows[g : g + rows_per_group]:
                stream += ([BOS] if opens else list(separator_ids)) + toks + ([EOS] if closes else [])
            units.append(stream)
    return units


def reference_windows(stream: list[int], block_size: int) -> list[list[int]]:
    """Windows of block_size + 1 at stride block_size; a last partial window is dropped."""
    n = max(len(stream) - 1, 0) // block_size
    return [stream[i * block_size : i * block_size + block_size + 1] for i in range(n)]


SAMPLE_SENTENCES = [
    "Era uma vez uma menina que morava perto do rio.",
    "O rio corria devagar entre as pedras da serra.",
    "Disse-lhe a mãe que voltasse cedo para casa.",
]


def write_sentencepiece_corpus(root: str | Path, n_train: int = 12, n_validation: int = 3) -> Path:
    """A corpus with a real (tiny) SentencePiece tokenizer, for commands that decode text (generate)."""
    import io

    import sentencepiece as spm

    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(SAMPLE_SENTENCES * 20),
        model_writer=model,
        vocab_size=64,
        hard_vocab_limit=False,
        unk_id=0,
        bos_id=1,
        eos_id=2,
        pad_id=3,
        minloglevel=2,
    )
    vocab = spm.SentencePieceProcessor(model_proto=model.getvalue()).get_piece_size()
    splits = {
        "train": random_books(0, n_train, vocab_size=vocab),
        "validation": random_books(1, n_validation, first_id=900, vocab_size=vocab),
    }
    return write_corpus(root, splits, vocab_size=vocab, tokenizer_bytes=model.getvalue())
