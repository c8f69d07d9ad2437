"""`--extra` throughput and memory: a generated source at several sizes, and where a document's time goes.

    .venv/bin/python bench/bench_sources.py [--sizes 0.1,1] [--workers 2] [--books 12] [--profile-mb 4]
        [--profile-books 40] [--runner pool,dask]

For each size (a multiple of the shared books' 92 MB) a Portuguese-like JSONL source is generated
(bench/gen_source.py, kept in the work folder between runs) and a cold corpus build runs in a fresh
process, books from `--books` shared Gutenberg files plus that source: wall time, the build's stage
times, MB/s of the source through the extra stages (clean_extra + near_duplicates + dedup_extra +
shards), the peak RSS of the main process (overall and per stage) and of the largest worker. RSS
should stay flat as the size grows, apart from what deduplication keeps: 16 bytes per kept paragraph
(two `FingerprintSet`s) and ~30 bytes per document while LSH bands are grouped; the tokenizer trains
on at most `max_training_chars`. `--runner dask` (or `processes`) builds through the build-corpus
Prefect flow on that task runner instead of `ptgpt corpus build`'s process pool (with a temporary
Prefect server unless PREFECT_API_URL is set; its "download" stage copies the books).

Then one process profiles the per-document work on `--profile-mb` MB of the source: parsing, the
filters, MinHash, writing the cache, and pickling a chunk (the cost of moving it to a worker).
Figures are noisy on a shared machine; compare ratios within a run.
"""

from __future__ import annotations

import argparse
import json
import pickle
import resource
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

from gen_source import write_source  # noqa: E402

SHARED = HERE.parents[1] / "shared" / "gutenberg-pt" / "books"
BOOKS_MB = 92.0


def _cpu(who: int) -> float:
    r = resource.getrusage(who)
    return r.ru_utime + r.ru_stime


class RssSampler:
    """The main process's RSS every 50 ms, so the peak can be told apart by build stage."""

    def __init__(self) -> None:
        self.samples: list[tuple[float, float]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            with open("/proc/self/status") as f:
                rss = next(int(line.split()[1]) for line in f if line.startswith("VmRSS"))
            self.samples.append((time.perf_counter(), rss / 1024))
            self._stop.wait(0.05)

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()

    def peaks(self, start: float, stages: dict[str, float]) -> dict[str, float]:
        """Peak MB per stage, the stages laid end to end from `start` in the manifest's order."""
        out, t = {}, start
        for stage, seconds in stages.items():
            inside = [mb for when, mb in self.samples if t <= when < t + seconds]
            out[stage] = round(max(inside, default=0.0))
            t += seconds
        return out


def one_build(raw: Path, source: Path, out: Path, workers: int, runner: str) -> None:
    """In a fresh process: build (a process pool, or the build-corpus flow on `runner`), then print
    the figures as one JSON line."""
    from corpus.build import CorpusConfig, build_corpus, load_manifest
    from corpus.sources import parse_extras
    from corpus.tokenizer import TokenizerConfig

    with RssSampler() as rss:
        t0 = time.perf_counter()
        if runner == "pool":
            config = CorpusConfig(tokenizer=TokenizerConfig(vocab_size=8000))
            extras = parse_extras([str(source)])
            m = build_corpus(raw, out, config, workers=workers, progress=False, extras=extras)
        else:  # the flow downloads from the raw folder into its own raw store first ("download")
            from pipelines.flows import build_corpus_flow

            build_corpus_flow(
                str(raw), str(out), raw=str(out.parent / "flow-raw"), vocab_size=8000, workers=workers,
                rate=0.0, task_runner=runner, extra=[str(source)],
            )  # fmt: skip
            m = load_manifest(out)
        wall = time.perf_counter() - t0
    stages = m["build"]["stage_seconds"]
    build_start = t0 + wall - m["build"]["seconds"]  # after the flow's start-up
    src = next(s for name, s in m["sources"].items() if name != "gutenberg")
    print(
        json.dumps(
            {
                "wall_s": round(wall, 2),
                "stages": stages,
                "rss_by_stage": rss.peaks(build_start, stages),
                "source_mb": src["input_bytes"] / 1e6,
                "documents": src["documents"],
                "kept": src["kept"],
                "dropped": src["dropped"],
                "cpu_s": round(sum(_cpu(who) for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)), 2),
                "rss_main_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                "rss_worker_mb": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024,
            }
        )
    )


def profile(source: Path, megabytes: float) -> None:
    from corpus.dedup import DedupConfig, book_signature
    from corpus.doc_filters import DocFilterConfig, DocumentRejected, clean_lines, line_junk, quality_reason
    from corpus.filters import filter_paragraphs

    clock = time.process_time
    times = dict.fromkeys(
        ["parse", "lines", "paragraph filters", "quality", "minhash", "cache json", "pickle"], 0.0
    )
    config, dedup = DocFilterConfig(), DedupConfig()
    size, docs, out = 0, [], []
    t = clock()
    with open(source, encoding="utf-8") as f:
        for line in f:
            rec = json.loads(line)
            docs.append((rec["id"], rec["text"]))
            size += len(rec["text"].encode())
            if size >= megabytes * 1e6:
                break
    times["parse"] = clock() - t
    for doc_id, text in docs:
        t = clock()
        lines = [x for x in clean_lines(text) if not line_junk(x)]
        t1 = clock()
        result = filter_paragraphs(lines, config.paragraph)
        t2 = clock()
        try:
            reason = quality_reason(lines, config) if lines else "empty"
        except DocumentRejected:
            reason = "rejected"
        t3 = clock()
        if reason is None and result.kept:
            out.append({"id": doc_id, "paragraphs": result.kept, "sig": book_signature(result.kept, dedup)})
        t4 = clock()
        times["lines"] += t1 - t
        times["paragraph filters"] += t2 - t1
        times["quality"] += t3 - t2
        times["minhash"] += t4 - t3
    t = clock()
    with tempfile.TemporaryFile("w", encoding="utf-8") as f:
        json.dump({"docs": out}, f, ensure_ascii=False)
    times["cache json"] = clock() - t
    t = clock()
    pickle.loads(pickle.dumps(docs))
    times["pickle"] = clock() - t
    total = sum(times.values())
    print(f"\nper-document work, one process, {size / 1e6:.1f} MB, {len(docs):,} documents (CPU seconds):")
    for name, sec in times.items():
        print(f"  {name:18s} {sec:7.2f} s  {sec / total:5.1%}  {size / 1e6 / sec if sec else 0:8.1f} MB/s")
    print(f"  {'total':18s} {total:7.2f} s         {size / 1e6 / total:8.1f} MB/s")


def profile_books(n_books: int) -> None:
    """Where a cold build's per-book time goes besides cleaning: MinHash, the cache write, the IPC."""
    import hashlib

    from corpus.build import BookSummary, CorpusConfig, book_cache_key
    from corpus.clean import BookRejected, clean_book
    from corpus.dedup import book_signature

    clock = time.process_time
    config = CorpusConfig()
    times = dict.fromkeys(["read+sha256", "clean_book", "minhash", "cache json", "summary pickle"], 0.0)
    size = 0
    books = sorted(SHARED.glob("*.txt"))[:n_books]
    with tempfile.TemporaryDirectory() as tmp:
        for path in books:
            t0 = clock()
            data = path.read_bytes()
            book_cache_key(hashlib.sha256(data).hexdigest(), 0, config)
            t1 = clock()
            try:
                book = clean_book(data, 0, config.clean)
            except BookRejected:
                continue
            t2 = clock()
            sig = book_signature(book.paragraphs, config.dedup)
            t3 = clock()
            with open(Path(tmp) / "entry.json", "w", encoding="utf-8") as f:
                json.dump({"status": "ok", "book": book.to_dict(), "signature": sig}, f)
            t4 = clock()
            pickle.loads(pickle.dumps(BookSummary("k", 0, "f", "ok", signature=sig)))
            t5 = clock()
            size += len(data)
            for name, dt in zip(times, (t1 - t0, t2 - t1, t3 - t2, t4 - t3, t5 - t4), strict=True):
                times[name] += dt
    total = sum(times.values())
    print(
        f"\nper-book work of a cold build, one process, {len(books)} shared books, {size / 1e6:.1f} MB (CPU s):"
    )
    for name, sec in times.items():
        print(f"  {name:18s} {sec:7.2f} s  {sec / total:5.1%}")
    print(f"  {'total':18s} {total:7.2f} s  {size / 1e6 / total:.1f} MB/s")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="0.1,1", help="multiples of 92 MB, comma-separated")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument(
        "--runner",
        default="pool",
        help="comma-separated: pool (ptgpt corpus build's process pool) or a build-corpus flow "
        "task runner (dask, processes); each size is built once per runner",
    )
    ap.add_argument("--books", type=int, default=12, help="shared Gutenberg books in the raw store")
    ap.add_argument("--profile-mb", type=float, default=4.0)
    ap.add_argument("--profile-books", type=int, default=0, help="also profile a cold build's per-book work")
    ap.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "ptgpt-bench-sources")
    ap.add_argument("--one", nargs=3, type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.one:
        one_build(*args.one, args.workers, args.runner)
        return
    work = args.work
    raw = work / "raw"
    if not raw.exists():
        raw.mkdir(parents=True)
        for book in sorted(SHARED.glob("*.txt"))[: args.books]:
            (raw / book.name).symlink_to(book.resolve())
    print(f"{args.books} shared books + a generated source; {args.workers} workers; peak RSS in MB")
    print(
        "MB/s: source MB / seconds of the extra stages (clean_extra + near_duplicates + dedup_extra + shards);"
        "\nMB/CPU-s: source MB / CPU seconds of the whole build (main + workers), robust to a shared CPU"
    )
    print(
        f"{'runner':>9} {'size':>6} {'MB':>7} {'docs':>9} {'wall s':>7} {'extra s':>8} {'MB/s':>6} {'CPU s':>7} "
        f"{'MB/CPU-s':>9} {'RSS main':>9} {'RSS wkr':>8}"
    )
    source = None
    for runner in args.runner.split(","):
        for multiple in [float(x) for x in args.sizes.split(",")]:
            source = work / f"source-{multiple:g}x.jsonl"
            if not source.exists():
                write_source(source, BOOKS_MB * multiple, seed=0)
            out = work / "out"
            shutil.rmtree(out, ignore_errors=True)
            shutil.rmtree(work / "flow-raw", ignore_errors=True)
            cmd = [sys.executable, __file__, "--workers", str(args.workers), "--runner", runner]
            proc = subprocess.run(
                [*cmd, "--one", str(raw), str(source), str(out)], capture_output=True, text=True
            )
            if proc.returncode != 0:
                sys.exit(f"the {runner} build failed:\n{proc.stderr[-3000:]}")
            r = json.loads(proc.stdout.strip().splitlines()[-1])
            st = r["stages"]
            extra_s = sum(st.get(k, 0) for k in ("clean_extra", "near_duplicates", "dedup_extra", "shards"))
            print(
                f"{runner:>9} {multiple:>5g}x {r['source_mb']:7.1f} {r['documents']:9,} {r['wall_s']:7.1f} "
                f"{extra_s:8.1f} {r['source_mb'] / extra_s:6.2f} {r['cpu_s']:7.1f} "
                f"{r['source_mb'] / r['cpu_s']:9.2f} {r['rss_main_mb']:9.0f} {r['rss_worker_mb']:8.0f}"
            )
            print(f"       stages (s): {st}")
            print(f"       main RSS by stage (MB): {r['rss_by_stage']}")
            print(f"       dropped: {r['dropped']}")
    if source is not None and args.profile_mb > 0:
        profile(source, args.profile_mb)
    if args.profile_books:
        profile_books(args.profile_books)


if __name__ == "__main__":
    main()
