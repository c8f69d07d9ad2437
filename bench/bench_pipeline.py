"""The build-corpus flow on the real books (a folder source): figures of a cold run and a rerun.

    .venv/bin/python bench/bench_pipeline.py [--source ../shared/gutenberg-pt/books] [--limit N]
        [--vocab-size 8000] [--workers 2] [--task-runner threads|processes|dask] [--keep]

Runs `build_corpus_flow` twice into the same temp folder: cold (every book copied into the raw
store, cleaned, tokenizer trained) and rerun (store, Prefect clean cache and tokenizer cache hit),
then checks the two manifests agree apart from timings. With PREFECT_API_URL unset the flows start
a temporary Prefect server (~15-30 s, counted in neither wall time below: a warm-up flow runs first).
Prints books, paragraphs and tokens per split, the stage times and the wall time of each run.
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from pathlib import Path

for _k, _v in {
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "DO_NOT_TRACK": "1",
    "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "120",
    "PREFECT_LOGGING_LEVEL": "WARNING",
}.items():
    os.environ.setdefault(_k, _v)

DEFAULT_SOURCE = Path(__file__).resolve().parents[2] / "shared" / "gutenberg-pt" / "books"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--source", type=Path, default=DEFAULT_SOURCE)
    ap.add_argument("--limit", type=int, default=None)
    ap.add_argument("--vocab-size", type=int, default=8000)
    ap.add_argument("--workers", type=int, default=os.cpu_count())
    ap.add_argument("--task-runner", default="threads", choices=["threads", "processes", "dask"])
    ap.add_argument("--keep", action="store_true", help="keep the temp folder")
    args = ap.parse_args()
    if not args.source.is_dir():
        raise SystemExit(f"books not found: {args.source}")

    from prefect import flow

    from corpus.build import load_manifest
    from pipelines.flows import build_corpus_flow

    @flow(name="bench-warmup")
    def warmup() -> None:  # starts the temporary server (if any) outside the timings
        return None

    warmup()
    root = Path(tempfile.mkdtemp(prefix="ptgpt-bench-pipeline-"))
    params = dict(
        source=str(args.source),
        out=str(root / "corpus"),
        raw=str(root / "raw"),
        limit=args.limit,
        vocab_size=args.vocab_size,
        workers=args.workers,
        task_runner=args.task_runner,
    )
    print(
        f"source {args.source}, limit {args.limit}, vocab {args.vocab_size}, task runner {args.task_runner} "
        f"x {args.workers}, cpus {os.cpu_count()}"
    )
    manifests = {}
    try:
        for name in ("cold", "rerun"):
            t = time.perf_counter()
            state = build_corpus_flow(**params, return_state=True)
            wall = time.perf_counter() - t
            if not state.is_completed():
                raise SystemExit(f"{name} run ended {state.type.value}: {state.message}")
            result = state.result()
            manifests[name] = load_manifest(params["out"])
            b = result["books"]
            stages = "  ".join(f"{k} {v:.1f}s" for k, v in manifests[name]["build"]["stage_seconds"].items())
            print(
                f"\n{name}: wall {wall:.1f} s (flow body {result['seconds']:.1f} s)   {stages}\n"
                f"  books: {b['found']} found, {b['downloaded']} stored, {b['skipped']} already there, "
                f"{len(b['failed'])} failed, {b['raw_files']} cleaned, {b['kept']} kept"
            )
            for split, s in result["splits"].items():
                print(
                    f"  {split:10s} books {s['books']:4d}  paragraphs {s['rows']:8,d}  tokens {s['tokens']:11,d}"
                )
            print(f"  fertility {result['tokenizer']['fertility']} tokens/word")
        same = {k: v for k, v in manifests["cold"].items() if k != "build"} == {
            k: v for k, v in manifests["rerun"].items() if k != "build"
        }
        print(f"\nrerun manifest identical to cold (timings aside): {same}")
    finally:
        if args.keep:
            print(f"kept {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
