"""The baselines a model must beat, on a real corpus: Kneser-Ney bits per byte for orders 2-5 (fit time,
memory), the n-gram's last-word and next-sentence choice accuracy, and the heuristics beside them.

    ptgpt corpus build --raw RAW --out /tmp/corpus8k --vocab-size 8000     # e.g. the shared books
    nice -n 10 .venv/bin/python bench/bench_baselines.py --corpus /tmp/corpus8k

Runs on one core (the process pins itself). Each order is fitted from scratch (no cache) so its time and
memory are its own: "fit" (wall and CPU seconds; on a shared machine the CPU figure is the one to
compare) is reading the training stream's counts (np.unique per order) and building the
model's tables; "peak" is tracemalloc's peak during the fit (numpy reports its buffers to it), "model" the
bytes of the fitted tables. bpb is computed as `ptgpt eval` does (training/ngram.split_bpb: the model's
windows and bytes). The tasks use the full suite's items (training/eval_tasks.SuiteConfig) and the order
best on validation. A plain interpolated KN trigram with one discount of 0.75 is also printed: the figure
issue 20 quotes (1.852 val / 1.742 test on the full 485-book 8k corpus).
"""

from __future__ import annotations

import argparse
import os
import resource
import time
import tracemalloc

from training import ngram as ng
from training.data import CorpusInfo
from training.eval_tasks import (
    SuiteConfig,
    choice_baselines,
    lastword_baselines,
    load_items,
    ngram_choice,
    ngram_lastword,
    overlap_choice,
    read_split_text,
    unigram_bpb,
)
from training.evaluate import load_tokenizer


def fit(
    tokens, vocab_size: int, order: int, discount: float | None
) -> tuple[ng.KneserNey, float, float, int]:
    tracemalloc.start()
    start, cpu = time.perf_counter(), time.process_time()
    model = ng.kneser_ney(ng.count_ngrams(tokens, vocab_size, order), order, discount)
    seconds, cpu = time.perf_counter() - start, time.process_time() - cpu
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    return model, seconds, cpu, peak


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--corpus", required=True, help="A built corpus folder (train, validation, test).")
    parser.add_argument("--orders", default="2,3,4,5")
    parser.add_argument("--block-size", type=int, default=256, help="The evaluation windows' block size.")
    parser.add_argument(
        "--reference",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="Also the plain KN trigram with D = 0.75.",
    )
    args = parser.parse_args()
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})

    info = CorpusInfo.from_dir(args.corpus)
    start = time.perf_counter()
    tokens, _ = ng.split_stream(args.corpus, "train")
    read_s = time.perf_counter() - start
    splits = info.manifest["splits"]
    print(
        f"corpus {args.corpus}: vocab {info.vocab_size}, books train/val/test "
        f"{len(splits['train']['books'])}/{len(splits['validation']['books'])}/{len(splits['test']['books'])}"
    )
    print(f"train stream: {len(tokens):,} tokens (boundary tokens included), read in {read_s:.1f} s")
    print(
        f"unigram bpb: val {unigram_bpb(args.corpus, 'validation'):.4f}  test {unigram_bpb(args.corpus, 'test'):.4f}"
    )

    header = f"{'model':<22} {'fit s':>6} {'fit cpu':>7} {'peak MB':>8} {'model MB':>9} {'score cpu':>9} {'val bpb':>8} {'test bpb':>9}"
    print(header)
    val_bpb, models = {}, {}
    runs = [(k, None) for k in (int(o) for o in args.orders.split(","))] + (
        [(3, 0.75)] if args.reference else []
    )
    for order, discount in runs:
        model, fit_s, fit_cpu, peak = fit(tokens, info.vocab_size, order, discount)
        start = time.process_time()
        val = ng.split_bpb(model, args.corpus, "validation", args.block_size)["bpb"]
        test = ng.split_bpb(model, args.corpus, "test", args.block_size)["bpb"]
        score_cpu = time.process_time() - start
        name = f"{order}-gram modified KN" if discount is None else f"{order}-gram KN D={discount}"
        print(
            f"{name:<22} {fit_s:>6.1f} {fit_cpu:>7.1f} {peak / 2**20:>8.0f} {model.nbytes / 2**20:>9.0f} {score_cpu:>9.1f} "
            f"{val:>8.4f} {test:>9.4f}"
        )
        if discount is None:
            val_bpb[order], models[order] = val, model
        del model
    best = min(val_bpb, key=val_bpb.get)
    model = models[best]
    for order in list(models):
        if order != best:
            del models[order]
    print(f"best order on validation: {best}")

    config = SuiteConfig()
    tokenizer = load_tokenizer(info.tokenizer_path)
    lastword, choice = load_items(args.corpus, config)
    start = time.perf_counter()
    lw = lastword_baselines(lastword)
    ngram_lw = ngram_lastword(model, tokenizer, lastword)["acc"]
    ch = ngram_choice(model, tokenizer, choice)
    reference = [t for ps in read_split_text(args.corpus, "validation").values() for t in ps]
    cb = choice_baselines(choice, reference)
    tasks_s = time.perf_counter() - start
    print(
        f"lastword ({len(lastword)} items): {best}-gram greedy {ngram_lw:.3f}, most frequent word "
        f"{lw['most_frequent_word']:.3f}, most frequent context word {lw['most_frequent_context_word']:.3f}"
    )
    print(
        f"choice ({len(choice)} items, chance {cb['chance']:.3f}): overlap heuristic {overlap_choice(choice):.3f}, "
        f"{best}-gram PMI {ch['acc']:.3f}, {best}-gram per byte {ch['acc_per_byte']:.3f}, "
        f"word unigram {cb['unigram']:.3f}"
    )
    print(
        f"tasks scored in {tasks_s:.1f} s; peak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MB"
    )


if __name__ == "__main__":
    main()
