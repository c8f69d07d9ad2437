"""Throughput of training/data.py on one core: tokens/s from Parquet, per batch time vs a trainer step.

    .venv/bin/python bench/bench_loader.py                      # synthetic corpus of 50M tokens in a temp dir
    .venv/bin/python bench/bench_loader.py --corpus data/corpus # a real corpus folder (its train split)

The process pins itself to one CPU and pyarrow/torch to one thread. The synthetic corpus has the layout
of docs/formats.md with Zipf-distributed token ids and paragraph lengths like prose (mean ~70 tokens);
its text column is a short placeholder, which the loader never reads. Files are read from the page cache
after writing, so this measures decoding and packing, not the disk.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from tqdm import tqdm

from common import corpus_format as fmt
from training.data import CorpusInfo, DevicePrefetcher, LoaderConfig, RowGroupReader, TokenWindowLoader

VOCAB = 32000


def write_synthetic_corpus(
    root: Path, n_tokens: int, tokens_per_shard: int = 10_000_000, rows_per_group: int = 1000, seed: int = 0
) -> Path:
    rng = np.random.default_rng(seed)
    (root / "train").mkdir(parents=True)
    tok_bytes = b"synthetic tokenizer"
    (root / fmt.TOKENIZER_FILE).write_bytes(tok_bytes)
    shards, book_id, written = [], 1, 0
    with tqdm(total=n_tokens, unit="tok", unit_scale=True, desc="writing synthetic corpus") as bar:
        while written < n_tokens:
            lengths = np.clip(rng.lognormal(3.9, 0.9, size=tokens_per_shard // 60), 1, 4000).astype(np.int32)
            lengths = lengths[np.cumsum(lengths) <= min(tokens_per_shard, n_tokens - written)]
            if len(lengths) == 0:
                break
            n = len(lengths)
            # Books of 200-3000 paragraphs, contiguous.
            book_sizes = rng.integers(200, 3000, size=n // 200 + 2)
            book_of_row = np.repeat(np.arange(len(book_sizes)), book_sizes)[:n]
            starts = np.r_[0, np.flatnonzero(np.diff(book_of_row)) + 1]
            paragraph_index = np.arange(n) - np.repeat(starts, np.diff(np.r_[starts, n]))
            values = (np.minimum(rng.zipf(1.3, size=int(lengths.sum())), VOCAB - 5) + 4).astype(np.int32)
            offsets = np.r_[0, np.cumsum(lengths)].astype(np.int32)
            table = pa.table(
                {
                    "book_id": pa.array(book_of_row + book_id, pa.int32()),
                    "paragraph_index": pa.array(paragraph_index, pa.int32()),
                    "title": pa.array(["Livro"] * n),
                    "author": pa.array(["Autor"] * n),
                    "text": pa.array(["texto"] * n),
                    "tokens": pa.ListArray.from_arrays(pa.array(offsets), pa.array(values)),
                    "n_bytes": pa.array(lengths * 4, pa.int32()),
                }
            )
            rel = fmt.shard_file("train", len(shards))
            pq.write_table(table, root / rel, row_group_size=rows_per_group, compression="zstd")
            shards.append(fmt.shard_entry(root, rel, n, int(lengths.sum()), int(lengths.sum()) * 4))
            book_id += int(book_of_row[-1]) + 1
            written += int(lengths.sum())
            bar.update(int(lengths.sum()))
    tokenizer = fmt.tokenizer_entry(root, VOCAB, separator_ids=[13, 13])
    fmt.write_manifest(root, fmt.make_manifest(tokenizer, {"train": fmt.split_entry([], shards)}))
    return root


def time_loader(batches, n_batches: int, tokens_per_batch: int, desc: str) -> tuple[float, float]:
    """(tokens/s, ms per batch) over n_batches, after one warm-up batch."""
    next(batches)
    t0 = time.perf_counter()
    for _ in tqdm(range(n_batches), desc=desc, leave=False):
        next(batches)
    dt = time.perf_counter() - t0
    return n_batches * tokens_per_batch / dt, 1000 * dt / n_batches


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--corpus", type=Path, help="corpus folder (default: write a synthetic one to a temp dir)")
    p.add_argument("--tokens", type=float, default=50e6, help="size of the synthetic corpus")
    p.add_argument("--block-size", type=int, default=1024)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--shuffle-buffer", type=int, default=512)
    p.add_argument(
        "--trainer-tokens-per-s",
        type=float,
        default=1e6,
        help="what the trainer consumes, for the headroom figure (1M tok/s is more than a "
        "124M-parameter GPT trains at on one H100)",
    )
    p.add_argument("--max-tokens", type=float, default=30e6, help="tokens to time per configuration")
    args = p.parse_args()

    os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})
    torch.set_num_threads(1)
    pa.set_cpu_count(1)
    pa.set_io_thread_count(1)

    with tempfile.TemporaryDirectory() as tmp:
        root = args.corpus or write_synthetic_corpus(Path(tmp) / "corpus", int(args.tokens))
        info = CorpusInfo.from_dir(root)
        units = info.split_units("train")
        split_tokens = info.split("train")["tokens"]
        print(
            f"corpus: {root}  train: {split_tokens / 1e6:.1f}M tokens, {len(units)} row groups, "
            f"{sum(p.stat().st_size for p in info.shard_paths('train')) / 2**20:.0f} MiB on disk; 1 CPU"
        )

        # 1. Reading and packing alone (pyarrow decode + vectorised boundary insertion).
        reader = RowGroupReader(info, "train")
        t0, n = time.perf_counter(), 0
        for shard, group in tqdm(units, desc="read+pack", leave=False):
            n += len(reader.read(shard, group)[0])
            if n >= args.max_tokens:
                break
        read_rate = n / (time.perf_counter() - t0)
        print(f"read + pack row groups:        {read_rate / 1e6:7.1f} M tokens/s")

        B, T = args.batch_size, args.block_size
        n_batches = max(int(args.max_tokens // (B * T)), 10)
        configs = [
            ("file order, no shuffle buffer", {"shuffle": False, "shuffle_buffer": 0}, False),
            ("shuffled row groups, no buffer", {"shuffle": True, "shuffle_buffer": 0}, False),
            (
                f"shuffled + buffer {args.shuffle_buffer}",
                {"shuffle": True, "shuffle_buffer": args.shuffle_buffer},
                False,
            ),
            (
                f"shuffled + buffer {args.shuffle_buffer}, prefetcher",
                {"shuffle": True, "shuffle_buffer": args.shuffle_buffer},
                True,
            ),
        ]
        step_ms = 1000 * B * T / args.trainer_tokens_per_s
        print(
            f"batches of {B} x {T} tokens; a trainer step at {args.trainer_tokens_per_s / 1e6:.2f} M tokens/s "
            f"takes {step_ms:.1f} ms"
        )
        for name, kw, prefetch in configs:
            loader = TokenWindowLoader(root, LoaderConfig(block_size=T, batch_size=B, **kw))
            batches = DevicePrefetcher(loader, "cpu") if prefetch else loader
            rate, ms = time_loader(batches, n_batches, B * T, name)
            if prefetch:
                batches.close()
            print(
                f"{name:38s} {rate / 1e6:7.1f} M tokens/s  {ms:6.2f} ms/batch  "
                f"{rate / args.trainer_tokens_per_s:6.0f}x the trainer"
            )

        state = loader.state_dict()  # the last loader: shuffle buffer full
        t0 = time.perf_counter()
        for _ in range(100):
            loader.state_dict()
        print(
            f"state_dict(): {1000 * (time.perf_counter() - t0) / 100:.3f} ms "
            f"(taken at checkpoints only); shuffle buffer {state['buffer'].nbytes / 2**20:.1f} MiB"
        )


if __name__ == "__main__":
    main()
