"""SentencePiece (our tokenizer stage) against a byte-level BPE baseline, on the real books.

    .venv/bin/python bench/bench_tokenizer.py [--corpus OUT | --raw ../shared/gutenberg-pt/books]
        [--vocab-size 32000] [--threads N] [--unigram]

Text: the train split trains both tokenizers, the validation split measures them. With `--corpus`
the paragraphs come from a built corpus's shards; otherwise the raw books are cleaned,
deduplicated and split with the corpus stages (cached in a temp folder).

Reported for each tokenizer, all in one run on the same text and machine:
  train time; encode throughput on the validation split (batch encode with all threads, in
  tokens/s and MB/s); fertility (tokens per whitespace word) and bytes per token on validation;
  the share of validation paragraphs that decode back exactly.
Baseline: HF `tokenizers` byte-level BPE (GPT-2 style pre-tokenizer) with the same vocab size.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

DEFAULT_RAW = Path(__file__).resolve().parents[2] / "shared" / "gutenberg-pt" / "books"


def corpus_texts(out: Path, split: str) -> list[str]:
    import pyarrow.parquet as pq

    return pq.read_table(out / split, columns=["text"])["text"].to_pylist()


def cleaned_texts(raw: Path, workers: int) -> dict[str, list[str]]:
    """Train and validation paragraphs of the raw books, through the corpus stages."""
    from corpus import build

    config = build.CorpusConfig()
    with tempfile.TemporaryDirectory(prefix="ptgpt-bench-tok-") as cache:
        summaries = build.clean_books(build.list_raw_books(raw), config, cache, workers)
        selection = build.select_books(summaries, config)
        selection, keep, _ = build.plan_paragraphs(selection, config)
        return {
            split: [t for _, _, texts in build.iter_split_paragraphs(selection, keep, split) for t in texts]
            for split in ("train", "validation")
        }


def words(texts: list[str]) -> int:
    return sum(len(t.split()) for t in texts)


def measure(name: str, train_s: float, encode, decode, valid: list[str]) -> dict:
    valid_bytes = sum(len(t.encode()) for t in valid)
    encode(valid[:200])  # warm-up
    t = time.perf_counter()
    ids = encode(valid)
    enc_s = time.perf_counter() - t
    n_tokens = sum(len(x) for x in ids)
    exact = sum(decode(x) == text for x, text in zip(ids, valid, strict=True)) / len(valid)
    return {
        "name": name,
        "train_s": train_s,
        "tok_per_s": n_tokens / enc_s,
        "mb_per_s": valid_bytes / 1e6 / enc_s,
        "fertility": n_tokens / words(valid),
        "bytes_per_token": valid_bytes / n_tokens,
        "tokens": n_tokens,
        "exact": exact,
    }


def bench_sentencepiece(
    train: list[str], valid: list[str], vocab: int, threads: int, model_type: str
) -> dict:
    from corpus.tokenizer import TokenizerConfig, encode_batch, load_tokenizer, train_tokenizer

    config = TokenizerConfig(vocab_size=vocab, model_type=model_type)
    with tempfile.TemporaryDirectory() as d:
        t = time.perf_counter()
        path = train_tokenizer(iter(train), Path(d) / "spm", config)
        train_s = time.perf_counter() - t
        sp = load_tokenizer(path)
    return measure(
        f"SentencePiece {model_type} ({config.num_threads} train threads)",
        train_s,
        lambda texts: encode_batch(sp, texts, threads),
        sp.decode,
        valid,
    )


def bench_hf_bytelevel(train: list[str], valid: list[str], vocab: int, threads: int) -> dict:
    os.environ["RAYON_NUM_THREADS"] = str(threads)
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tk = Tokenizer(models.BPE())
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tk.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab,
        special_tokens=["<unk>", "<s>", "</s>", "<pad>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )

    def stream() -> Iterator[str]:
        yield from train

    t = time.perf_counter()
    tk.train_from_iterator(stream(), trainer, length=len(train))
    train_s = time.perf_counter() - t
    return measure(
        "HF tokenizers byte-level BPE",
        train_s,
        lambda texts: [e.ids for e in tk.encode_batch(texts)],
        tk.decode,
        valid,
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    src = ap.add_mutually_exclusive_group()
    src.add_argument("--corpus", type=Path, help="a built corpus folder (uses its train/validation text)")
    src.add_argument("--raw", type=Path, default=DEFAULT_RAW)
    ap.add_argument("--vocab-size", type=int, default=32000)
    ap.add_argument(
        "--threads", type=int, default=os.cpu_count(), help="encode threads (and cleaning workers)"
    )
    ap.add_argument("--unigram", action="store_true", help="also train a unigram model (~20x slower)")
    args = ap.parse_args()

    t = time.perf_counter()
    if args.corpus:
        text = {s: corpus_texts(args.corpus, s) for s in ("train", "validation")}
        source = f"corpus {args.corpus}"
    else:
        if not args.raw.is_dir():
            raise SystemExit(f"raw books not found: {args.raw}")
        text = cleaned_texts(args.raw, args.threads)
        source = f"raw {args.raw} (cleaned here)"
    train, valid = text["train"], text["validation"]
    mb = sum(len(x.encode()) for x in train) / 1e6
    print(f"text from {source} in {time.perf_counter() - t:.1f} s", file=sys.stderr)
    print(
        f"train: {len(train):,} paragraphs, {mb:.1f} MB, {words(train):,} words; "
        f"validation: {len(valid):,} paragraphs, {words(valid):,} words; vocab {args.vocab_size}; "
        f"cpus {os.cpu_count()}, encode threads {args.threads}"
    )
    results = [bench_sentencepiece(train, valid, args.vocab_size, args.threads, "bpe")]
    if args.unigram:
        results.append(bench_sentencepiece(train, valid, args.vocab_size, args.threads, "unigram"))
    results.append(bench_hf_bytelevel(train, valid, args.vocab_size, args.threads))

    print(
        f"\n{'tokenizer':44s} {'train s':>8s} {'encode tok/s':>13s} {'MB/s':>6s} {'tok/word':>9s} "
        f"{'bytes/tok':>9s} {'exact':>6s}"
    )
    for r in results:
        print(
            f"{r['name']:44s} {r['train_s']:8.1f} {r['tok_per_s']:13,.0f} {r['mb_per_s']:6.2f} "
            f"{r['fertility']:9.3f} {r['bytes_per_token']:9.2f} {r['exact']:6.1%}"
        )
    base, ours = results[-1], results[0]
    print(
        f"\nSentencePiece BPE vs byte-level BPE: train {base['train_s'] / ours['train_s']:.2f}x faster, "
        f"encode {ours['tok_per_s'] / base['tok_per_s']:.2f}x the tokens/s, "
        f"{ours['tokens']:,} vs {base['tokens']:,} tokens on validation ({ours['tokens'] / base['tokens'] - 1:+.2%})"
    )


if __name__ == "__main__":
    main()
