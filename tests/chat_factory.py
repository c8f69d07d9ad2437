"""A small real corpus (the project's sample books, a real SentencePiece model) and a tiny base run,
for the chat, SFT, server and classifier tests. Seconds to build, nothing downloaded."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import torch
from corpus_factory import SCHEMA

from corpus.tokenizer import TokenizerConfig, load_tokenizer, train_tokenizer
from fakegutenberg.books import sample_books
from training.checkpoint import save_model
from training.model import GPT, ModelConfig

TINY = {"n_layer": 2, "n_embd": 48, "n_head": 4, "n_kv_head": 2, "mlp_hidden": 96, "max_seq_len": 160}


def book_paragraphs(book) -> list[str]:
    return [p.strip() for p in book.body.split("\n\n") if len(p.strip()) > 20]


def write_sample_corpus(root: Path, n_extra: int = 6, vocab_size: int = 400) -> Path:
    """Sample books as a corpus folder (docs/formats.md section 2, train split only)."""
    root.mkdir(parents=True, exist_ok=True)
    books = [b for b in sample_books(extra=n_extra, extra_kb=6) if b.cleanable]
    paragraphs = {b.id: book_paragraphs(b) for b in books}
    train_tokenizer(
        (p for ps in paragraphs.values() for p in ps),
        root / "tokenizer",
        TokenizerConfig(vocab_size=vocab_size),
    )
    sp = load_tokenizer(root / "tokenizer.model")
    rows = [(b, i, p) for b in books for i, p in enumerate(paragraphs[b.id])]
    texts = [p for _, _, p in rows]
    table = pa.table(
        {
            "book_id": [b.id for b, _, _ in rows],
            "paragraph_index": [i for _, i, _ in rows],
            "title": [b.title for b, _, _ in rows],
            "author": [b.author_display for b, _, _ in rows],
            "text": texts,
            "tokens": sp.encode(texts),
            "n_bytes": [len(t.encode()) for t in texts],
        },
        schema=SCHEMA,
    )
    (root / "train").mkdir(exist_ok=True)
    pq.write_table(table, root / "train" / "part-00000.parquet", row_group_size=200)
    shard = {"file": "train/part-00000.parquet", "rows": len(rows)}
    manifest = {
        "schema_version": 1,
        "tokenizer": {"file": "tokenizer.model", "vocab_size": sp.get_piece_size(), "bos_id": 1, "eos_id": 2},
        "splits": {"train": {"rows": len(rows), "books": [b.id for b in books], "shards": [shard]}},
    }
    (root / "manifest.json").write_text(json.dumps(manifest))
    return root


def write_base_run(run: Path, corpus: Path, seed: int = 0, **overrides) -> Path:
    """A model checkpoint folder (what `--base` takes, like a run folder) of a random tiny GPT."""
    sp = load_tokenizer(corpus / "tokenizer.model")
    torch.manual_seed(seed)
    model = GPT(ModelConfig.preset("tiny", **{**TINY, **overrides}, vocab_size=sp.get_piece_size()))
    extra = {"tokenizer_path": str((corpus / "tokenizer.model").resolve()), "corpus": str(corpus.resolve())}
    return save_model(model, run, extra=extra)


def write_chat_checkpoint(root: Path, **overrides) -> Path:
    """An untuned chat checkpoint (a tiny base with the chat rows and template): what chat and
    serve-model load. `overrides` change the base model (e.g. max_seq_len=128, the demo's context)."""
    from training.chat import add_chat_tokens, chat_metadata, load_chat_tokenizer
    from training.checkpoint import load_model, read_checkpoint_config

    corpus = write_sample_corpus(root / "corpus", n_extra=0)
    base = write_base_run(root / "base", corpus, **overrides)
    meta = read_checkpoint_config(base)
    tok = load_chat_tokenizer(meta["tokenizer_path"])
    model = add_chat_tokens(load_model(base), tok)
    extra = {"tokenizer_path": meta["tokenizer_path"], "chat": chat_metadata(tok)}
    return save_model(model, root / "chat", extra=extra)
