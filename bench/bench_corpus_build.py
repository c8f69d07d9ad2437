"""Full corpus build on the real books: wall time and stage breakdown, cold and resumed.

    .venv/bin/python bench/bench_corpus_build.py [--raw ../shared/gutenberg-pt/books] [--out DIR]
        [--vocab-size 32000] [--workers N] [--keep]

Runs `build_corpus` twice into the same folder: first with an empty cache (every book cleaned),
then again (every book read back from the cache, as after a crash), and checks that the two
manifests are equal apart from their timings and that the shards are byte-identical.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import tempfile
import time
from pathlib import Path

from corpus.build import CorpusConfig, build_corpus
from corpus.tokenizer import TokenizerConfig

DEFAULT_RAW = Path(__file__).resolve().parents[2] / "shared" / "gutenberg-pt" / "books"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--raw", type=Path, default=DEFAULT_RAW)
    ap.add_argument("--out", type=Path, default=None, help="default: a temp folder, removed unless --keep")
    ap.add_argument("--vocab-size", type=int, default=32000)
    ap.add_argument("--workers", type=int, default=os.cpu_count())
    ap.add_argument("--keep", action="store_true")
    args = ap.parse_args()
    if not args.raw.is_dir():
        raise SystemExit(f"raw books not found: {args.raw}")
    out = args.out or Path(tempfile.mkdtemp(prefix="ptgpt-bench-corpus-"))
    shutil.rmtree(out, ignore_errors=True)
    config = CorpusConfig(tokenizer=TokenizerConfig(vocab_size=args.vocab_size))
    raw_mb = sum(p.stat().st_size for p in args.raw.glob("*.txt")) / 1e6
    print(
        f"raw: {args.raw} ({raw_mb:.1f} MB), workers {args.workers}, vocab {args.vocab_size}, cpus {os.cpu_count()}"
    )

    runs = {}
    for name in ("cold", "resumed"):
        t = time.perf_counter()
        manifest = build_corpus(args.raw, out, config, workers=args.workers, progress=False)
        wall = time.perf_counter() - t
        runs[name] = manifest
        stages = "  ".join(f"{k} {v:.1f}s" for k, v in manifest["build"]["stage_seconds"].items())
        print(f"{name:8s} wall {wall:7.1f} s   {stages}")

    m = runs["cold"]
    tokens = sum(s["tokens"] for s in m["splits"].values())
    text_mb = sum(s["bytes"] for s in m["splits"].values()) / 1e6
    cold = m["build"]["seconds"]
    print(
        f"corpus: {m['books']['kept']} books kept of {m['books']['raw_files']} files, {text_mb:.1f} MB text, "
        f"{tokens:,} tokens; cold build {raw_mb / cold:.2f} MB raw/s"
    )
    for split, s in m["splits"].items():
        print(
            f"  {split:10s} books {len(s['books']):4d}  rows {s['rows']:8,}  tokens {s['tokens']:11,}  "
            f"shards {len(s['shards'])}"
        )
    print("drops:", json.dumps(m["drops"], ensure_ascii=False))
    print("near-duplicates:", json.dumps(m["books"]["near_duplicates"]))
    same = {k: v for k, v in runs["cold"].items() if k != "build"} == {
        k: v for k, v in runs["resumed"].items() if k != "build"
    }
    print(f"resumed manifest identical to cold (timings aside): {same}")
    self_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    child_mb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    print(f"peak RSS: build process {self_mb:.0f} MB, largest cleaning worker {child_mb:.0f} MB")
    print(
        f"speed-up of a resumed build: {runs['cold']['build']['seconds'] / runs['resumed']['build']['seconds']:.1f}x"
    )
    if not args.keep and args.out is None:
        shutil.rmtree(out, ignore_errors=True)
    else:
        print(f"corpus kept in {out}")


if __name__ == "__main__":
    main()
