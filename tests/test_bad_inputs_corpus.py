"""Bad input to the corpus, scrape and flow commands: one line, no traceback, nothing good destroyed.

Every case runs the real `ptgpt` command in a subprocess and checks its exit status, that stderr is
one `Error: ...` line naming the problem, and that the corpus built before is byte-identical after.
The full-disk and read-only cases mount a small tmpfs, so they need root (skipped otherwise).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
VOCAB = 400


def ptgpt(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "ptgpt", *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, **(env or {})},
    )


def build_in_process(*args: str) -> None:
    """A build that must succeed, run in this process: only a failing command needs a subprocess,
    to see exactly what it prints."""
    from click.testing import CliRunner

    from ptgpt.cli.corpus import corpus

    result = CliRunner().invoke(corpus, ["build", *args, "--vocab-size", str(VOCAB), "--quiet"])
    assert result.exit_code == 0, result.output


def snapshot(folder: Path) -> dict[str, str]:
    """sha256 of every file of a corpus folder (the per-book cache aside: it may only gain entries)."""
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file() and ".cache" not in p.relative_to(folder).parts
    }


def assert_one_line_error(done: subprocess.CompletedProcess, *expected: str) -> str:
    assert done.returncode != 0, done.stdout
    assert "Traceback" not in done.stderr + done.stdout
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("Error: "), done.stderr
    for text in expected:
        assert text in lines[0], lines[0]
    return lines[0]


def write_books(folder: Path, books) -> Path:
    from fakegutenberg.books import write_sample_books

    write_sample_books(folder, books)
    return folder


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    """A raw store of sample books and a corpus built from it: what every failure must leave alone."""
    from fakegutenberg.books import sample_books

    root = tmp_path_factory.mktemp("bad-inputs")
    books = sample_books(extra=4, extra_kb=6)
    raw = write_books(root / "raw", books)
    corpus = root / "corpus"
    build_in_process("--raw", str(raw), "--out", str(corpus))
    (root / "empty").mkdir()
    write_books(root / "two", books[:2])
    foreign = root / "notes"
    foreign.mkdir()
    (foreign / "README.md").write_text("# my notes\n")
    (foreign / "draft.txt").write_text("not a corpus")
    return {"root": root, "raw": raw, "corpus": corpus, "books": books}


def unused_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# (case, arguments after `ptgpt corpus build` with {raw}, {corpus}, {root} filled in, words of the message)
CORPUS_CASES = [
    ("empty raw store", ["--raw", "{root}/empty"], ["no <id>.txt books", "empty"]),
    ("mistyped raw store", ["--raw", "{root}/rwa"], ["raw store not found", "rwa"]),
    (
        "vocabulary too small",
        ["--raw", "{raw}", "--vocab-size", "10"],
        ["10 is too small", "261"],
    ),
    ("vocabulary too large for the text", ["--raw", "{raw}", "--vocab-size", "200000"], ["SentencePiece"]),
    (
        "too few books for three splits",
        ["--raw", "{root}/two"],
        ["2 book(s)", "3 books", "--allow-empty-splits"],
    ),
]


@pytest.mark.parametrize("case, args, expected", CORPUS_CASES, ids=[c[0] for c in CORPUS_CASES])
def test_a_failed_rebuild_leaves_the_corpus_byte_identical(workspace, case, args, expected) -> None:
    corpus = workspace["corpus"]
    before = snapshot(corpus)
    fill = {"raw": str(workspace["raw"]), "root": str(workspace["root"])}
    args = [a.format(**fill) for a in args]
    done = ptgpt("corpus", "build", *args, "--out", str(corpus), "--quiet")
    assert_one_line_error(done, *expected)
    assert snapshot(corpus) == before
    assert not list(corpus.parent.glob(".corpus.*"))  # no staging folder left behind


def _web_lines(n: int) -> list[str]:
    sys.path.insert(0, str(REPO / "bench"))
    from gen_source import documents

    docs = documents(seed=11)
    return [json.dumps(next(docs), ensure_ascii=False) for _ in range(n)]


def _bad_extras(root: Path) -> dict[str, Path]:
    """The bad --extra sources of EXTRA_CASES, written once under root/extras."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    d = root / "extras"
    if d.exists():
        return {p.name: p for p in d.iterdir()}
    d.mkdir()
    good = _web_lines(3)
    (d / "web.jsonl").write_text("\n".join(good) + "\n", encoding="utf-8")
    (d / "latin1.jsonl").write_bytes(
        (good[0] + "\n").encode() + '{"id": "x", "text": "Ação e coração"}\n'.encode("latin-1")
    )
    texts = d / "texts"
    texts.mkdir()
    (texts / "a_good.txt").write_text(json.loads(good[1])["text"], encoding="utf-8")
    (texts / "b_latin1.txt").write_bytes("Não há ação sem coração.\n".encode("latin-1") * 40)
    pq.write_table(pa.table({"text": [json.loads(g)["text"] for g in good]}), d / "good.parquet")
    data = (d / "good.parquet").read_bytes()
    (d / "corrupt.parquet").write_bytes(data[:8] + b"\0" * (len(data) - 16) + data[-8:])
    (d / "cut.parquet").write_bytes(data[: len(data) // 2])
    parquets = d / "parquets"
    parquets.mkdir()
    (parquets / "part-0.parquet").write_bytes(data[: len(data) // 2])
    with open(d / "huge.jsonl", "wb") as f:  # sparse: a first good document, then 1 TiB of nothing
        f.write((good[2] + "\n").encode())
        f.truncate(2**40)
    return {p.name: p for p in d.iterdir()}


# (case, the --extra argument with {corpus}, {raw}, {root}, {x:NAME} filled in, words of the message)
EXTRA_CASES = [
    ("the output folder itself", "{corpus}", ["overlaps --out", "{corpus}"]),
    ("a folder inside the output", "{corpus}/train", ["overlaps --out"]),
    ("a folder that holds the output", "{root}", ["overlaps --out"]),
    ("the raw store", "{raw}", ["overlaps the raw store"]),
    ("a book of the raw store", "{raw}/90001.txt", ["overlaps the raw store"]),
    ("a weight of a million", "{x:web.jsonl}:1000000", ["weight", "from 0 to 100"]),
    ("a weight that is not a number", "{x:web.jsonl}:nan", ["weight", "from 0 to 100"]),
    ("an unknown option", "{x:web.jsonl}:2:min_wrods=3", ["unknown option", "min_wrods"]),
    ("a min_words that is not a number", "{x:web.jsonl}:min_words=many", ["min_words", "whole number"]),
    ("more output than free disk", "{x:huge.jsonl}:100", ["would write about", "MB free", "huge.jsonl"]),
    ("latin-1 in a folder of text files", "{x:texts}", ["b_latin1.txt", "not UTF-8", "0xe3"]),
    ("latin-1 on a JSON line", "{x:latin1.jsonl}", ["latin1.jsonl:2", "not UTF-8"]),
    (
        "a Parquet file with garbage inside",
        "{x:corrupt.parquet}",
        ["corrupt.parquet", "not a readable Parquet"],
    ),
    ("a Parquet file cut short", "{x:cut.parquet}", ["cut.parquet", "not a readable Parquet"]),
    ("a folder with a cut Parquet file", "{x:parquets}", ["parquets"]),
]


@pytest.mark.parametrize("case, extra, expected", EXTRA_CASES, ids=[c[0] for c in EXTRA_CASES])
def test_a_bad_extra_source_is_one_line_and_the_corpus_stays(workspace, case, extra, expected) -> None:
    corpus = workspace["corpus"]
    files = _bad_extras(workspace["root"])
    fill = {"corpus": str(corpus), "raw": str(workspace["raw"]), "root": str(workspace["root"])}

    def filled(text: str) -> str:
        for name, path in files.items():
            text = text.replace(f"{{x:{name}}}", str(path))
        return text.format(**fill)

    before = snapshot(corpus)
    args = ["--raw", str(workspace["raw"]), "--out", str(corpus), "--extra", filled(extra), "--quiet"]
    done = ptgpt("corpus", "build", *args, "--vocab-size", str(VOCAB))
    assert done.returncode == 1
    assert_one_line_error(done, *map(filled, expected))
    assert snapshot(corpus) == before
    assert not list(corpus.parent.glob(".corpus.*"))


def test_out_must_not_be_or_lie_inside_the_raw_store(workspace) -> None:
    raw = workspace["raw"]
    before = {p.name: p.stat().st_mtime_ns for p in raw.iterdir()}
    for out in (raw, raw / "corpus"):
        done = ptgpt("corpus", "build", "--raw", str(raw), "--out", str(out), "--quiet")
        assert_one_line_error(done, "raw store", "choose another folder")
    assert {p.name: p.stat().st_mtime_ns for p in raw.iterdir()} == before


def test_a_folder_that_is_not_a_corpus_is_refused_unless_forced(workspace, tmp_path) -> None:
    foreign = workspace["root"] / "notes"
    before = snapshot(foreign)
    done = ptgpt("corpus", "build", "--raw", str(workspace["raw"]), "--out", str(foreign), "--quiet")
    assert_one_line_error(done, "not a ptgpt corpus", "--force")
    assert snapshot(foreign) == before

    forced = tmp_path / "forced"
    forced.mkdir()
    (forced / "draft.txt").write_text("kept")
    cache = str(workspace["corpus"] / ".cache")
    build_in_process("--raw", str(workspace["raw"]), "--out", str(forced), "--force", "--cache-dir", cache)
    assert (forced / "draft.txt").read_text() == "kept" and (forced / "manifest.json").is_file()


def test_allow_empty_splits_builds_from_two_books(workspace, tmp_path) -> None:
    out = tmp_path / "small"
    two = str(workspace["root"] / "two")
    build_in_process(
        "--raw", two, "--out", str(out), "--allow-empty-splits", "--cache-dir", str(tmp_path / "c")
    )
    splits = json.loads((out / "manifest.json").read_text())["splits"]
    assert splits["train"]["books"] and not all(s["books"] for s in splits.values())


def test_rejection_reasons_are_true(workspace, tmp_path) -> None:
    raw = write_books(tmp_path / "raw", workspace["books"][:3])
    (raw / "80001.txt").write_bytes(b"")
    (raw / "80002.txt").write_bytes(b" \r\n\r\n")
    (raw / "80003.txt").write_bytes("Era uma vez um livro em UTF-16.\n".encode("utf-16") * 50)
    (raw / "80004.txt").write_bytes(bytes(range(256)) * 40)
    out = tmp_path / "corpus"
    build_in_process("--raw", str(raw), "--out", str(out), "--cache-dir", str(workspace["corpus"] / ".cache"))
    rejected = json.loads((out / "manifest.json").read_text())["books"]["rejected"]
    assert {k: rejected[k] for k in ("80001", "80002", "80003", "80004")} == {
        "80001": "empty_file",
        "80002": "empty_file",
        "80003": "not_text",
        "80004": "not_text",
    }

    only_bad = tmp_path / "bad"
    only_bad.mkdir()
    for i in range(3):
        (only_bad / f"8000{i}.txt").write_bytes(b"")
    done = ptgpt("corpus", "build", "--raw", str(only_bad), "--out", str(tmp_path / "none"), "--quiet")
    assert_one_line_error(done, "every one of the 3 books", "empty_file: 3")


@pytest.mark.parametrize(
    "command", [["fetch-and-build", "--source", "{raw}", "--out", "{root}/c"], ["serve"]]
)
def test_an_unreachable_prefect_api_is_named_with_how_to_start_one(workspace, command) -> None:
    url = f"http://127.0.0.1:{unused_port()}/api"
    args = [a.format(raw=workspace["raw"], root=workspace["root"]) for a in command]
    done = ptgpt(*args, env={"PREFECT_API_URL": url})
    assert_one_line_error(done, url, "prefect server start")
    assert not (workspace["root"] / "c").exists()


# -- a small file system of our own: full and read-only disks -------------------------------------
@contextlib.contextmanager
def tmpfs(path: Path, size: str, *options: str):
    path.mkdir(parents=True, exist_ok=True)
    opts = ",".join([f"size={size}", *options])
    if subprocess.run(
        ["mount", "-t", "tmpfs", "-o", opts, "tmpfs", str(path)], capture_output=True
    ).returncode:
        pytest.skip("cannot mount a tmpfs here")
    try:
        yield path
    finally:
        subprocess.run(["umount", str(path)], check=True)


def fill(folder: Path) -> None:
    """Write zeros until the file system is full."""
    with contextlib.suppress(OSError), open(folder / "filler", "wb", buffering=0) as f:
        while True:
            f.write(b"\0" * 65536)


needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="mounting a tmpfs needs root")


@needs_root
def test_a_rebuild_on_a_full_disk_leaves_the_corpus_byte_identical(workspace, tmp_path) -> None:
    with tmpfs(tmp_path / "small", "16m") as disk:
        corpus = disk / "corpus"
        cache = str(
            workspace["corpus"] / ".cache"
        )  # cleaned books come from there: only outputs fill the disk
        args = ["--raw", str(workspace["raw"]), "--out", str(corpus), "--quiet", "--cache-dir", cache]
        build_in_process(*args)
        before = snapshot(corpus)
        fill(disk)
        done = ptgpt("corpus", "build", *args, "--vocab-size", str(VOCAB + 50))  # new tokenizer, new shards
        assert_one_line_error(done, "no space left", str(corpus), "free")
        assert snapshot(corpus) == before
        assert not list(disk.glob(".corpus.*"))


@needs_root
@pytest.mark.parametrize("fault", ["full", "read-only"])
def test_scrape_into_a_full_or_read_only_folder_names_it(workspace, tmp_path, fault) -> None:
    options = ("ro",) if fault == "read-only" else ()
    with tmpfs(tmp_path / "disk", "1m", *options) as disk:
        if fault == "full":
            fill(disk)
        out = disk / "raw" if fault == "full" else disk
        done = ptgpt("scrape", "--source", str(workspace["raw"]), "--out", str(out), "--quiet")
        message = assert_one_line_error(done, str(disk))
        assert (
            ("no space left" in message and "free" in message)
            if fault == "full"
            else "read-only file system" in message
        )
