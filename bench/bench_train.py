"""Training throughput of training/train.py: tokens/s, MFU and loader stalls, per preset.

    .venv/bin/python bench/bench_train.py                                  # CPU: tiny and small
    python bench/bench_train.py --presets base base-moe --compile --steps 30 --batch-size 16   # a GPU

Each preset trains in-process on a synthetic corpus (written to a temp dir, or --corpus), with
evaluation, samples, plots and TensorBoard off and one checkpoint at the end. Figures are the medians
over the logged steps after the first `--warmup` (compilation, allocator warm-up):

  tokens/s     global tokens per second of wall time, data waiting included
  MFU          model FLOPs utilisation (training/flops.py; GPUs in its table only)
  data wait    fraction of step time spent waiting for the next batch from the prefetch thread;
               near 0 means the loader never stalls the accelerator

The synthetic corpus has the layout of docs/formats.md: Zipf-distributed ids, prose-like paragraph
lengths, books of a few hundred paragraphs, row groups of 1000 rows.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from common import corpus_format as fmt
from training.metrics import read_metrics
from training.model import ModelConfig
from training.train import TrainConfig, train


def write_synthetic_corpus(root: Path, n_tokens: int, vocab_size: int, seed: int = 0) -> Path:
    """A train split of about n_tokens and a validation split of 5% of that; returns root."""
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    tokenizer = b"synthetic tokenizer %d" % vocab_size
    (root / fmt.TOKENIZER_FILE).write_bytes(tokenizer)
    splits = {}
    for split, target, first_book in (
        ("train", n_tokens, 0),
        ("validation", max(n_tokens // 20, 20_000), 10**6),
    ):
        lengths = np.clip(rng.lognormal(3.9, 0.9, size=target // 40 + 10), 1, 2000).astype(np.int32)
        lengths = lengths[np.cumsum(lengths) <= target]
        n = len(lengths)
        book = first_book + np.arange(n) // 300
        starts = np.r_[0, np.flatnonzero(np.diff(book)) + 1]
        index = np.arange(n) - np.repeat(starts, np.diff(np.r_[starts, n]))
        values = (np.minimum(rng.zipf(1.3, size=int(lengths.sum())), vocab_size - 9) + 8).astype(np.int32)
        offsets = np.r_[0, np.cumsum(lengths)].astype(np.int32)
        table = pa.table(
            {
                "book_id": pa.array(book, pa.int32()),
                "paragraph_index": pa.array(index, pa.int32()),
                "title": pa.array(["Livro"] * n),
                "author": pa.array(["Autor"] * n),
                "text": pa.array(["texto"] * n),
                "tokens": pa.ListArray.from_arrays(pa.array(offsets), pa.array(values)),
                "n_bytes": pa.array(lengths * 4, pa.int32()),  # ~4 bytes per token, as in Portuguese prose
            }
        )
        rel = fmt.shard_file(split, 0)
        (root / split).mkdir(exist_ok=True)
        pq.write_table(table, root / rel, row_group_size=1000, compression="zstd")
        shard = fmt.shard_entry(root, rel, n, int(lengths.sum()), int(lengths.sum()) * 4)
        splits[split] = fmt.split_entry([], [shard])
    tokenizer_entry = fmt.tokenizer_entry(root, vocab_size, separator_ids=[5, 6])
    fmt.write_manifest(root, fmt.make_manifest(tokenizer_entry, splits))
    return root


def bench_preset(preset: str, corpus: Path, run_dir: Path, args: argparse.Namespace) -> dict:
    block = args.block_size or ModelConfig.preset(preset).max_seq_len
    config = TrainConfig(
        corpus=str(corpus),
        run_dir=str(run_dir),
        preset=preset,
        max_steps=args.warmup + args.steps,
        batch_size=args.batch_size,
        block_size=block,
        grad_accum=args.grad_accum,
        warmup_steps=10,
        eval_every=0,
        checkpoint_every=10**9,
        log_every=1,
        samples=False,
        tensorboard=False,
        plot=False,
        progress=False,
        compile=args.compile,
        device=args.device,
        threads=args.threads,
    )
    t0 = time.perf_counter()
    summary = train(config)
    wall = time.perf_counter() - t0
    timed = [r for r in read_metrics(run_dir) if r["step"] > args.warmup]
    params = json.loads((run_dir / "config.json").read_text())
    result = {
        "preset": preset,
        "params_M": params["n_params"] / 1e6,
        "active_M": params["n_params_active"] / 1e6,
        "tokens_per_step": params["tokens_per_step"],
        "tokens_per_s": statistics.median(r["tokens_per_s"] for r in timed),
        "data_wait": statistics.median(r["data_wait_frac"] for r in timed),
        "max_data_wait": max(r["data_wait_frac"] for r in timed),
        "final_loss": summary["final_loss"],
        "wall_s": wall,
    }
    if "mfu" in timed[0]:
        result["mfu"] = statistics.median(r["mfu"] for r in timed)
    return result


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--presets", nargs="+", default=["tiny", "tiny-moe", "small"])
    p.add_argument("--corpus", type=Path, help="corpus folder (default: a synthetic one in a temp dir)")
    p.add_argument("--tokens", type=float, default=2e6, help="size of the synthetic train split")
    p.add_argument("--vocab-size", type=int, default=8000, help="of the synthetic corpus (and so the model)")
    p.add_argument("--steps", type=int, default=10, help="timed steps per preset")
    p.add_argument("--warmup", type=int, default=3, help="untimed first steps")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--block-size", type=int, default=None, help="default: the preset's max_seq_len")
    p.add_argument("--grad-accum", type=int, default=1)
    p.add_argument("--compile", action="store_true")
    p.add_argument("--device", default="auto")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    p.add_argument("--json", type=Path, help="also write the results here")
    args = p.parse_args()

    device = torch.cuda.get_device_name() if torch.cuda.is_available() and args.device != "cpu" else "cpu"
    print(
        f"device: {device}, torch {torch.__version__}, threads {torch.get_num_threads()}, compile {args.compile}"
    )
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        corpus = args.corpus or write_synthetic_corpus(
            Path(tmp) / "corpus", int(args.tokens), args.vocab_size
        )
        for preset in args.presets:
            results.append(bench_preset(preset, corpus, Path(tmp) / f"run-{len(results)}-{preset}", args))
            r = results[-1]
            mfu = f"{100 * r['mfu']:.1f}%" if "mfu" in r else "n/a"
            print(
                f"{r['preset']:>10}: {r['params_M']:7.1f}M params ({r['active_M']:.1f}M active), "
                f"{r['tokens_per_step']:>7,} tok/step, {r['tokens_per_s']:>10,.0f} tok/s, MFU {mfu}, "
                f"data wait {100 * r['data_wait']:.1f}% (max {100 * r['max_data_wait']:.1f}%), "
                f"wall {r['wall_s']:.1f}s",
                flush=True,
            )
    if args.json:
        args.json.write_text(json.dumps({"device": device, "results": results}, indent=1))


if __name__ == "__main__":
    main()
