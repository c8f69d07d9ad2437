"""The Prefect flows, run for real against a local Gutenberg mirror of the sample books.

With PREFECT_API_URL set (CI starts `prefect server start`), the flows report to that server;
otherwise one temporary server (prefect_test_harness) serves the whole session.
"""

from __future__ import annotations

import atexit
import itertools
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

# Offline, and a Prefect home of our own, before prefect is first imported.
for _k, _v in {
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "DO_NOT_TRACK": "1",
    "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "120",
}.items():
    os.environ.setdefault(_k, _v)
if not os.environ.get("PREFECT_API_URL") and "PREFECT_HOME" not in os.environ:
    os.environ["PREFECT_HOME"] = tempfile.mkdtemp(prefix="ptgpt-prefect-")
    atexit.register(shutil.rmtree, os.environ["PREFECT_HOME"], ignore_errors=True)

import pyarrow.parquet as pq  # noqa: E402

from corpus.build import load_manifest  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
VOCAB = 400
MISSING_ID = 424242  # asked for by id, served by nobody: a failed download
TINY_TRAIN = {
    "n_layer": 1,
    "n_embd": 32,
    "n_head": 2,
    "n_kv_head": 1,
    "mlp_hidden": 64,
    "max_seq_len": 32,
    "batch_size": 4,
    "block_size": 32,
    "warmup_steps": 2,
    "eval_every": 10,
    "eval_batches": 2,
    "checkpoint_every": 10,
    "log_every": 2,
    "shuffle_buffer": 8,
    "threads": 1,
    "samples": False,
    "tensorboard": False,
}


@pytest.fixture(scope="session")
def prefect_api() -> str:
    """The API the flows report to: CI's server, or one temporary server for this session."""
    from prefect.settings import PREFECT_API_URL

    if os.environ.get("PREFECT_API_URL"):
        yield os.environ["PREFECT_API_URL"]
        return
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield PREFECT_API_URL.value()


@pytest.fixture(scope="module")
def mirror():
    from fakegutenberg.books import sample_books, sample_catalog_csv
    from fakegutenberg.mirror import GutenbergMirror, mirror_books_from_samples

    samples = sample_books(extra=10, extra_kb=6)
    with GutenbergMirror(mirror_books_from_samples(samples), sample_catalog_csv(samples)) as m:
        m.book_ids = sorted(s.id for s in samples)
        yield m


def params(source: str, ids: list[int], root: Path, **kw) -> dict:
    """build-corpus parameters: the sample books by id, plus one id nobody serves."""
    base = {
        "source": source,
        "out": str(root / "corpus"),
        "raw": str(root / "raw"),
        "ids": [*ids, MISSING_ID],
        "vocab_size": VOCAB,
        "workers": 2,
        "rate": 0.0,  # our own mirror
    }
    return {**base, **kw}


def comparable(manifest: dict) -> dict:
    """A manifest minus what legitimately differs between builds: timings and folder paths."""
    return {k: v for k, v in manifest.items() if k not in ("build", "source")}


def run_and_subflow_ids(client, flow_run_id) -> list:
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterParentFlowRunId

    subflows = client.read_flow_runs(
        flow_run_filter=FlowRunFilter(parent_flow_run_id=FlowRunFilterParentFlowRunId(any_=[flow_run_id]))
    )
    return [flow_run_id, *(r.id for r in subflows)]


def flow_run_tasks(flow_run_id) -> list:
    """Every task run of a flow run and of its subflows, read back from the API.

    The server records task runs from events it processes asynchronously, so the last ones can
    arrive a moment after the flow returns: read until two reads agree and every run is final.
    """
    from prefect import get_client
    from prefect.client.schemas.filters import FlowRunFilter

    with get_client(sync_client=True) as client:
        ids = run_and_subflow_ids(client, flow_run_id)
        seen: list = []
        deadline = time.monotonic() + 30
        while True:
            runs = client.read_task_runs(flow_run_filter=FlowRunFilter(id={"any_": ids}), limit=200)
            settled = all(r.state and r.state.is_final() for r in runs)
            if (settled and len(runs) == len(seen)) or time.monotonic() > deadline:
                return runs
            seen = runs
            time.sleep(0.5)


def is_clean_task(task_run) -> bool:
    return task_run.name.startswith("clean-") and not task_run.name.startswith(
        "clean-books"
    )  # not the subflow


def flow_run_artifacts(flow_run_id) -> dict:
    """key -> artifact, of a flow run and its subflows, read back from the API."""
    from prefect import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId

    with get_client(sync_client=True) as client:
        ids = run_and_subflow_ids(client, flow_run_id)
        found = client.read_artifacts(
            artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=ids))
        )
    return {a.key: a for a in found if a.key}


@pytest.fixture(scope="module")
def reference(prefect_api, mirror, tmp_path_factory):
    """One uninterrupted build on the threads runner: (params, final state, result)."""
    from pipelines.flows import build_corpus_flow

    p = params(mirror.url, mirror.book_ids, tmp_path_factory.mktemp("reference"))
    state = build_corpus_flow(**p, return_state=True)
    return p, state, state.result(raise_on_failure=False)


def test_build_corpus_completes(reference) -> None:
    p, state, result = reference
    assert state.is_completed(), state.message
    manifest = load_manifest(p["out"])
    assert result["books"]["failed"] == [{"id": MISSING_ID, "error": result["books"]["failed"][0]["error"]}]
    assert "http_404" in result["books"]["failed"][0]["error"]  # reported, and the flow still completed
    assert result["books"]["found"] == len(p["ids"])
    assert result["books"]["kept"] == manifest["books"]["kept"] > 5
    assert manifest["tokenizer"]["vocab_size"] == VOCAB
    for split, info in manifest["splits"].items():
        assert result["splits"][split]["rows"] == info["rows"]
        rows = sum(pq.read_metadata(Path(p["out"]) / s["file"]).num_rows for s in info["shards"])
        assert rows == info["rows"]
    train = pq.read_table(Path(p["out"]) / manifest["splits"]["train"]["shards"][0]["file"])
    assert train.num_rows > 0 and set(train.column("book_id").to_pylist()) <= set(p["ids"])
    assert 1.0 < result["tokenizer"]["fertility"] < 5.0


def test_build_artifacts_readable_by_key(reference) -> None:
    from pipelines import artifacts

    p, state, result = reference
    found = flow_run_artifacts(state.state_details.flow_run_id)
    assert "| train |" in found[artifacts.CORPUS_SUMMARY_KEY].data
    assert "fertility" in found[artifacts.CORPUS_SUMMARY_KEY].data
    drops = json.loads(found[artifacts.DROPS_KEY].data)
    kept_rows = next(r["count"] for r in drops if r["unit"] == "paragraph" and r["reason"] == "kept")
    assert kept_rows == sum(s["rows"] for s in result["splits"].values())
    recorded = load_manifest(p["out"])["drops"]  # every drop the build counted is in the artifact
    for unit in ("book", "paragraph"):
        shown = {r["reason"]: r["count"] for r in drops if r["unit"] == unit and r["reason"] != "kept"}
        assert shown == recorded[unit + "s"] and shown
    books = json.loads(found[artifacts.BOOKS_KEY].data)
    assert {r["book_id"]: r["outcome"] for r in books}[MISSING_ID] == "failed"
    assert sum(r["outcome"] == "downloaded" for r in books) == len(books) - 1
    for key in ("download-progress", "clean-progress"):  # progress bars, finished at 100 %
        assert found[key].type == "progress" and float(found[key].data) == 100.0


def test_rerun_reuses_work(reference) -> None:
    from pipelines.flows import build_corpus_flow

    p, _, _ = reference
    before = load_manifest(p["out"])
    state = build_corpus_flow(**p, return_state=True)
    assert state.is_completed(), state.message
    result = state.result()
    assert result["books"]["downloaded"] == 0 and result["books"]["skipped"] == len(p["ids"]) - 1
    tasks = flow_run_tasks(state.state_details.flow_run_id)
    clean = [t for t in tasks if is_clean_task(t)]
    assert len(clean) == result["books"]["raw_files"]
    assert all(t.state.name == "Cached" for t in clean), {t.name: t.state.name for t in clean}
    assert comparable(load_manifest(p["out"])) == comparable(before)


def test_cli_build_and_flow_build_give_identical_shards(reference, tmp_path) -> None:
    """One corpus build, two executors: `ptgpt corpus build` on the flow's raw store makes the same bytes."""
    p, _, _ = reference
    out = tmp_path / "cli"
    cmd = [sys.executable, "-m", "ptgpt", "corpus", "build", "--raw", p["raw"], "--out", str(out)]
    cmd += ["--vocab-size", str(VOCAB), "--workers", "2", "--quiet"]
    done = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    flow_manifest, cli_manifest = load_manifest(p["out"]), load_manifest(out)
    assert comparable(cli_manifest) == comparable(flow_manifest)
    files = ["tokenizer.model"] + [
        s["file"] for split in flow_manifest["splits"].values() for s in split["shards"]
    ]
    assert len(files) > 3
    for name in files:
        assert (out / name).read_bytes() == (Path(p["out"]) / name).read_bytes(), name
    # The same stages, timed under the same names (the flow adds its download).
    flow_stages = list(flow_manifest["build"]["stage_seconds"])
    assert flow_stages == ["download", *cli_manifest["build"]["stage_seconds"]]


def test_parallel_downloads_keep_the_politeness_rate(prefect_api, mirror, tmp_path) -> None:
    """Downloads run on several threads, yet request starts to the host stay 1/rate apart."""
    from pipelines.flows import DOWNLOAD_THREADS, download_books_flow

    rate = 8.0
    first_request = len(mirror.site.log)
    ids = mirror.book_ids[: 2 * DOWNLOAD_THREADS]
    result = download_books_flow(mirror.url, str(tmp_path / "raw"), ids=ids, rate=rate)
    assert result["downloaded"] == len(ids) and result["stored_ids"] == ids
    times = sorted(r.time for r in mirror.site.log[first_request:])
    assert len(times) > len(ids)  # robots.txt, then at least one request per book
    gaps = [b - a for a, b in itertools.pairwise(times)]
    assert min(gaps) > 0.8 / rate, gaps  # arrival jitter aside


@pytest.mark.slow
@pytest.mark.parametrize("runner", ["dask", "processes"])
def test_other_runners_match_threads(reference, tmp_path, runner) -> None:
    """Cleaning on a local 2-worker Dask cluster, or on 2 processes, builds the same corpus."""
    if runner == "dask":
        pytest.importorskip("prefect_dask")
    from pipelines.flows import build_corpus_flow

    p, _, _ = reference
    q = params(p["source"], p["ids"][:-1], tmp_path, raw=p["raw"], task_runner=runner, workers=2)
    state = build_corpus_flow(**q, return_state=True)
    assert state.is_completed(), state.message
    tasks = [t for t in flow_run_tasks(state.state_details.flow_run_id) if is_clean_task(t)]
    assert tasks and all(t.state.name == "Completed" for t in tasks)  # new OUT: cleaned, not cached
    assert comparable(load_manifest(q["out"])) == comparable(load_manifest(p["out"]))


@pytest.mark.slow
def test_extra_sources_are_cleaned_as_tasks_on_dask(reference, tmp_path) -> None:
    """An --extra source's chunks become clean-chunk task runs on a Dask cluster (the "processes"
    runner takes the same path), and the corpus is byte for byte `ptgpt corpus build --extra`'s (a
    process pool) from the same raw store."""
    pytest.importorskip("prefect_dask")
    sys.path.insert(0, str(REPO / "bench"))
    from gen_source import documents

    from corpus.sources import SourcesConfig, chunked, iter_documents, parse_extras
    from pipelines.flows import build_corpus_flow

    p, _, _ = reference
    web = tmp_path / "web.jsonl"
    with open(web, "w", encoding="utf-8") as f:
        for doc in itertools.islice(documents(seed=3), 1500):  # ~1.6 MB: two chunks
            f.write(json.dumps(doc, ensure_ascii=False) + "\n")
    docs = iter_documents(parse_extras([str(web)])[0])
    chunks = len(list(chunked(docs, SourcesConfig().chunk_chars)))
    assert chunks >= 2
    q = params(p["source"], p["ids"][:-1], tmp_path, raw=p["raw"], task_runner="dask", workers=2)
    state = build_corpus_flow(**q, extra=[f"{web}:2"], return_state=True)
    assert state.is_completed(), state.message
    tasks = [t for t in flow_run_tasks(state.state_details.flow_run_id) if t.name.startswith("clean-")]
    chunk_tasks = [t for t in tasks if t.task_key and "clean_chunk" in t.task_key]
    assert len(chunk_tasks) == chunks and all(t.state.name == "Completed" for t in chunk_tasks)

    out = tmp_path / "cli"
    cmd = [sys.executable, "-m", "ptgpt", "corpus", "build", "--raw", p["raw"], "--out", str(out)]
    cmd += ["--vocab-size", str(VOCAB), "--workers", "2", "--quiet", "--extra", f"{web}:2"]
    done = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    flow_manifest, cli_manifest = load_manifest(q["out"]), load_manifest(out)
    assert comparable(cli_manifest) == comparable(flow_manifest)
    assert flow_manifest["sources"]["web"]["kept"] > 1000  # most of the 1,500 (10% are junk)
    for split in flow_manifest["splits"].values():
        for shard in split["shards"]:
            assert (out / shard["file"]).read_bytes() == (Path(q["out"]) / shard["file"]).read_bytes()


@pytest.mark.slow
def test_crash_then_rerun_gives_same_manifest(reference, prefect_api, tmp_path) -> None:
    """SIGKILL the flow process while it cleans, rerun: the same manifest as an uninterrupted build."""
    from pipelines.flows import build_corpus_flow

    p, _, _ = reference
    q = params(p["source"], p["ids"][:-1], tmp_path, workers=1)
    code = "import json, sys; from pipelines.flows import build_corpus_flow; build_corpus_flow(**json.loads(sys.argv[1]))"
    env = {**os.environ, "PREFECT_API_URL": prefect_api}
    proc = subprocess.Popen(
        [sys.executable, "-c", code, json.dumps(q)],
        cwd=REPO,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    books_cache = Path(q["out"]) / ".cache" / "books"
    deadline = time.monotonic() + 120
    try:
        while time.monotonic() < deadline and proc.poll() is None:
            if books_cache.is_dir() and len(list(books_cache.glob("*.json"))) >= 2:
                break
            time.sleep(0.02)
        else:
            pytest.fail(f"the flow process never started cleaning (rc={proc.returncode})")
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait()
    cleaned_before = {f: f.stat().st_mtime_ns for f in books_cache.glob("*.json")}
    assert not (Path(q["out"]) / "manifest.json").exists()
    assert 2 <= len(cleaned_before) < len(p["ids"]) - 1  # killed midway

    state = build_corpus_flow(**q, return_state=True)
    assert state.is_completed(), state.message
    assert state.result()["books"]["downloaded"] == 0  # the store kept every book of the killed run
    assert {f: f.stat().st_mtime_ns for f in cleaned_before} == cleaned_before  # not cleaned again
    assert comparable(load_manifest(q["out"])) == comparable(load_manifest(p["out"]))


@pytest.mark.slow
def test_failing_stage_fails_the_flow(reference, tmp_path, monkeypatch) -> None:
    """A stage that fails ends the flow run Failed (the state, not an exit code, says so)."""
    from pipelines.flows import build_corpus_flow

    missing = build_corpus_flow(source=str(tmp_path / "nowhere"), out=str(tmp_path / "c"), return_state=True)
    assert missing.is_failed() and "neither an http(s) URL nor a folder" in missing.message
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "1.txt").write_bytes(b"")  # found, but not a text: its download fails, so nothing to build
    nothing = build_corpus_flow(source=str(empty), out=str(tmp_path / "c"), return_state=True)
    assert nothing.is_failed() and "nothing to build" in nothing.message
    bad_runner = build_corpus_flow(
        source=str(empty), out=str(tmp_path / "c"), task_runner="gpu", return_state=True
    )
    assert bad_runner.is_failed() and "task_runner" in bad_runner.message

    def broken_cleaner(data, book_id, config):
        raise KeyError("a bug in the cleaning code")

    monkeypatch.setattr("corpus.build.clean_book", broken_cleaner)
    p, _, _ = reference
    q = params(p["source"], p["ids"][:3], tmp_path, raw=p["raw"])  # a new OUT: nothing cached for it
    broken = build_corpus_flow(**q, return_state=True)
    assert broken.is_failed() and "a bug in the cleaning code" in broken.message
    assert not (Path(q["out"]) / "manifest.json").exists()


@pytest.mark.slow
def test_a_failed_flow_leaves_the_previous_corpus_byte_identical(reference, tmp_path, monkeypatch) -> None:
    """The flow builds through the same staging folder as `ptgpt corpus build`: a failure costs nothing."""
    from pipelines.flows import build_corpus_flow

    p, _, _ = reference
    out = tmp_path / "corpus"
    shutil.copytree(p["out"], out, ignore=shutil.ignore_patterns(".cache"))  # no cache: books get cleaned

    def files(folder: Path) -> dict[str, bytes]:
        return {str(f.relative_to(folder)): f.read_bytes() for f in folder.rglob("*") if f.is_file()}

    before = files(out)

    def broken_cleaner(data, book_id, config):
        raise KeyError("a bug in the cleaning code")

    monkeypatch.setattr("corpus.build.clean_book", broken_cleaner)
    state = build_corpus_flow(**params(p["source"], p["ids"][:-1], tmp_path, raw=p["raw"]), return_state=True)
    assert state.is_failed() and "a bug in the cleaning code" in state.message
    assert files(out) == before
    assert not list(tmp_path.glob(".corpus.*"))


@pytest.mark.slow
def test_corpus_and_train(reference, tmp_path) -> None:
    """The main job: build, then train; a rerun with more steps continues from the checkpoint."""
    from pipelines import artifacts
    from pipelines.flows import corpus_and_train_flow, train_model_flow
    from training.metrics import read_metrics

    p, _, _ = reference
    q = params(p["source"], p["ids"][:-1], tmp_path, raw=p["raw"])
    run = tmp_path / "run"
    state = corpus_and_train_flow(**q, run=str(run), max_steps=10, overrides=TINY_TRAIN, return_state=True)
    assert state.is_completed(), state.message
    result = state.result()
    assert result["corpus"]["splits"] == reference[2]["splits"]
    trained = result["train"]
    assert trained["step"] == 10 and trained["final_loss"] > 0 and trained["val_loss"] > 0
    assert Path(trained["checkpoint"]).is_dir() and (run / "loss.png").is_file()
    assert [m["step"] for m in read_metrics(run) if "loss" in m][-1] == 10
    found = flow_run_artifacts(state.state_details.flow_run_id)
    summary = found[artifacts.TRAIN_SUMMARY_KEY]
    assert "final train loss" in summary.data and "data:image/png;base64," in summary.data
    assert float(found["train-progress"].data) == 100.0
    assert artifacts.CORPUS_SUMMARY_KEY in found

    more = train_model_flow(corpus=q["out"], run=str(run), max_steps=14, overrides=TINY_TRAIN)
    assert more["start_step"] == 10 and more["step"] == 14
    bad = train_model_flow(corpus=q["out"], run=str(run), overrides={"no_such_knob": 1}, return_state=True)
    assert bad.is_failed() and "no_such_knob" in bad.message


@pytest.mark.slow
@pytest.mark.realbooks
def test_build_corpus_over_the_real_books(prefect_api, shared_books, tmp_path) -> None:
    """build-corpus over ../shared/gutenberg-pt/books (a folder source): all 485 real books."""
    from pipelines.flows import build_corpus_flow

    start = time.monotonic()
    state = build_corpus_flow(
        source=str(shared_books / "books"),
        out=str(tmp_path / "corpus"),
        raw=str(tmp_path / "raw"),
        vocab_size=2000,
        workers=2,
        return_state=True,
    )
    assert state.is_completed(), state.message
    result = state.result()
    manifest = load_manifest(tmp_path / "corpus")
    assert result["books"]["found"] == 485 and not result["books"]["failed"]
    assert manifest["books"]["rejected"] == {"75473": "not_portuguese"}  # mostly English
    dropped = {d for group in manifest["books"]["near_duplicates"] for d in group["dropped"]}
    assert "27236" in {str(d) for d in dropped}  # the second edition of Os Lusíadas
    for name, split in result["splits"].items():
        assert split["books"] > 0 and split["tokens"] > 0, name
    print(f"\nreal books: {json.dumps(result['splits'])} in {time.monotonic() - start:.1f} s")


@pytest.mark.slow
def test_cli_build_and_run_in_process(prefect_api, mirror, tmp_path) -> None:
    """`ptgpt fetch-and-build` and `ptgpt run` drive the same flows and exit by the run's final state."""
    from click.testing import CliRunner

    from ptgpt.cli import main

    runner = CliRunner()
    common = ["--source", mirror.url, "--vocab-size", str(VOCAB), "--rate", "0", "--workers", "1"]
    built = runner.invoke(main, ["fetch-and-build", *common, "--out", str(tmp_path / "a" / "corpus")])
    assert built.exit_code == 0, built.output
    assert json.loads(built.output[built.output.index("{") :])["splits"]["train"]["books"] > 0
    assert (tmp_path / "a" / "raw" / "manifest.jsonl").exists()  # the raw store beside OUT

    ran = runner.invoke(
        main,
        [
            "run",
            *common,
            "--out",
            str(tmp_path / "b" / "corpus"),
            "--run",
            str(tmp_path / "b" / "run"),
            "--max-steps",
            "2",
        ],
    )
    assert ran.exit_code == 0, ran.output
    assert load_manifest(tmp_path / "b" / "corpus") and any(
        (tmp_path / "b" / "run" / "checkpoints").iterdir()
    )

    failed = runner.invoke(
        main, ["fetch-and-build", "--source", str(tmp_path / "missing"), "--out", str(tmp_path / "c")]
    )
    assert failed.exit_code == 1 and "flow run ended FAILED" in failed.output
