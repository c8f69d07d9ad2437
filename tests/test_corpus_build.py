"""The whole corpus build: raw store -> shards + tokenizer + manifest, resumable and deterministic."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner

from common.files import sha256_file
from corpus.build import CorpusConfig, build_corpus, list_raw_books, load_manifest
from corpus.shards import ShardConfig
from corpus.tokenizer import TokenizerConfig, load_tokenizer
from ptgpt.cli import main
from ptgpt.cli.corpus import corpus as corpus_cli

REPO = Path(__file__).resolve().parents[1]
VOCAB = 500
CONFIG = CorpusConfig(tokenizer=TokenizerConfig(vocab_size=VOCAB), shards=ShardConfig(row_group_rows=50))
EDITION_OF, REPRINT_ID = 91001, 91901  # 91901 is a reprint of 91001 under another ebook number


def without_timings(manifest: dict) -> dict:
    return {k: v for k, v in manifest.items() if k != "build"}


@pytest.fixture(scope="module")
def raw_store(tmp_path_factory) -> tuple[Path, list]:
    """The sample books, a reprint under another id, a second file of one ebook, and a manifest."""
    from fakegutenberg.books import sample_books, write_sample_books

    books = sample_books(extra=6, extra_kb=8)
    raw = tmp_path_factory.mktemp("raw")
    write_sample_books(raw, books)
    by_id = {b.id: b for b in books}
    original = by_id[EDITION_OF].raw_bytes()
    (raw / f"{REPRINT_ID}.txt").write_bytes(
        original.replace(str(EDITION_OF).encode(), str(REPRINT_ID).encode())
    )
    (raw / "91002.alt-2017.txt").write_bytes(by_id[91002].raw_bytes().replace(b"\r\n", b"\n"))
    (raw / "notes.txt").write_text("not a book")  # not <id>.txt: ignored
    with open(raw / "manifest.jsonl", "w", encoding="utf-8") as f:
        for b in books:
            rec = {"id": b.id, "title": f"Catálogo: {b.title}", "authors": [b.author, "Outro, Autor"]}
            f.write(json.dumps(rec, ensure_ascii=False) + "\n")
        f.write('{"id": 9000')  # a line cut by a crash
    return raw, books


@pytest.fixture(scope="module")
def built(raw_store, tmp_path_factory) -> tuple[Path, dict]:
    """The reference build, through the CLI."""
    raw, _ = raw_store
    out = tmp_path_factory.mktemp("corpus")
    result = CliRunner().invoke(
        corpus_cli,
        ["build", "--raw", str(raw), "--out", str(out), "--vocab-size", str(VOCAB), "--workers", "2"],
    )
    assert result.exit_code == 0, result.output
    assert "train" in result.output and "total" in result.output
    # The CLI uses the default shard config; the Python API gets the small row groups.
    manifest = build_corpus(raw, out, CONFIG, workers=2, progress=False)
    return out, manifest


def test_raw_store_listing(raw_store) -> None:
    raw, books = raw_store
    listed = list_raw_books(raw)
    keys = [b.key for b in listed]
    assert keys == sorted(keys, key=lambda k: (int(k.split(".")[0]), k))
    assert "notes" not in keys and "91002.alt-2017" in keys and str(REPRINT_ID) in keys
    alt = next(b for b in listed if b.key == "91002.alt-2017")
    assert alt.book_id == 91002 and alt.title.startswith("Catálogo: ")
    assert next(b for b in listed if b.key == str(REPRINT_ID)).title is None  # not in the manifest
    with pytest.raises(FileNotFoundError):
        list_raw_books(raw / "missing")


def test_manifest_follows_the_format(built, raw_store) -> None:
    out, m = built
    _, books = raw_store
    assert load_manifest(out) == m
    assert m["schema_version"] == 1
    tok = m["tokenizer"]
    assert tok["file"] == "tokenizer.model" and tok["sha256"] == sha256_file(out / "tokenizer.model")
    assert (tok["vocab_size"], tok["unk_id"], tok["bos_id"], tok["eos_id"], tok["pad_id"]) == (
        VOCAB,
        0,
        1,
        2,
        3,
    )
    sp = load_tokenizer(out / "tokenizer.model")
    assert sp.decode(tok["separator_ids"]) == "\n\n"

    split_books = [set(m["splits"][s]["books"]) for s in ("train", "validation", "test")]
    assert all(split_books)  # every split non-empty
    assert not (
        split_books[0] & split_books[1] or split_books[0] & split_books[2] or split_books[1] & split_books[2]
    )
    kept = set().union(*split_books)
    assert len(kept) == m["books"]["kept"]

    # Editions: the reprint and the second file are reported, and only one of each pair is kept.
    groups = [{g["kept"], *g["dropped"]} for g in m["books"]["near_duplicates"]]
    assert {str(EDITION_OF), str(REPRINT_ID)} in groups and {"91002", "91002.alt-2017"} in groups
    assert not {EDITION_OF, REPRINT_ID} <= kept and 91002 in kept
    assert m["drops"]["books"]["near_duplicate"] == 2
    # Books a cleaner must reject are reported with their reason and never reach a shard.
    uncleanable = [b.id for b in books if not b.cleanable]
    assert uncleanable and all(str(i) in m["books"]["rejected"] for i in uncleanable)
    assert not kept & set(uncleanable)
    assert sum(m["drops"]["books"].values()) == m["books"]["raw_files"] - m["books"]["kept"]

    for split, s in m["splits"].items():
        assert s["rows"] == sum(e["rows"] for e in s["shards"])
        assert s["tokens"] == sum(e["tokens"] for e in s["shards"])
        for e in s["shards"]:
            assert e["file"].startswith(f"{split}/part-") and e["sha256"] == sha256_file(out / e["file"])
    assert (out / "README.md").read_text().startswith("---\n")
    assert not [p for p in out.rglob("*.tmp")]


def test_shards_hold_the_cleaned_books(built) -> None:
    out, m = built
    sp = load_tokenizer(out / "tokenizer.model")
    seen = set()
    for split, s in m["splits"].items():
        table = pq.read_table(out / split)
        assert table.num_rows == s["rows"]
        ids = table["book_id"].to_pylist()
        assert sorted(set(ids)) == s["books"]
        runs = [b for i, b in enumerate(ids) if i == 0 or ids[i - 1] != b]
        assert runs == sorted(runs) and len(runs) == len(set(runs))  # contiguous, by id
        rows = table.to_pylist()
        for r in rows:
            assert sp.decode(r["tokens"]) == r["text"]
            assert r["n_bytes"] == len(r["text"].encode())
            assert r["title"].startswith("Catálogo: ") and r["author"].endswith("; Outro, Autor")
            assert r["text"] not in seen or len(r["text"]) < CONFIG.dedup.min_paragraph_chars
            seen.add(r["text"])
        for b in s["books"]:
            idx = [r["paragraph_index"] for r in rows if r["book_id"] == b]
            assert idx == sorted(idx) and len(idx) == len(set(idx))
        for e in s["shards"]:
            f = pq.ParquetFile(out / e["file"])
            assert all(f.metadata.row_group(g).num_rows <= 50 for g in range(f.metadata.num_row_groups))


def test_hf_datasets_loads_the_corpus_offline(built) -> None:
    import datasets

    assert os.environ["HF_DATASETS_OFFLINE"] == "1" and os.environ["HF_HUB_OFFLINE"] == "1"
    out, m = built
    ds = datasets.load_dataset("parquet", data_dir=str(out))
    assert {k: v.num_rows for k, v in ds.items()} == {k: v["rows"] for k, v in m["splits"].items()}
    assert ds["train"].features["tokens"].feature.dtype == "int32"
    # The dataset card's YAML also lets the folder load by itself.
    by_card = datasets.load_dataset(str(out))
    assert {k: v.num_rows for k, v in by_card.items()} == {k: v["rows"] for k, v in m["splits"].items()}


@pytest.mark.slow
def test_rebuild_reuses_the_cache_and_is_byte_identical(built, raw_store, monkeypatch, tmp_path) -> None:
    out, m = built
    raw, _ = raw_store
    # Stale leftovers of a crashed build: a temp shard and a shard number that is no longer made.
    (out / "train" / ".part-00000.parquet.tmp").write_bytes(b"half")
    (out / "train" / "part-00042.parquet").write_bytes(b"old")

    def must_not_clean(*args, **kwargs):
        raise AssertionError("a cached book was cleaned again")

    monkeypatch.setattr("corpus.build.clean_book", must_not_clean)
    again = build_corpus(raw, out, CONFIG, workers=1, progress=False)  # workers=1: in this process
    assert without_timings(again) == without_timings(m)
    assert sorted(p.name for p in (out / "train").iterdir()) == [
        Path(e["file"]).name for e in m["splits"]["train"]["shards"]
    ]

    # Another folder, no cache, one worker (one encode thread): the same bytes.
    monkeypatch.undo()
    fresh = build_corpus(raw, tmp_path / "fresh", CONFIG, workers=1, progress=False)
    assert without_timings(fresh) == without_timings(m)


@pytest.mark.slow
def test_killed_build_resumes_to_the_same_manifest(built, raw_store, tmp_path) -> None:
    raw, _ = raw_store
    ref_out, _ = built
    out = tmp_path / "corpus"
    cmd = [
        sys.executable,
        "-c",
        "from ptgpt.cli.corpus import corpus; corpus(prog_name='ptgpt corpus')",
        "build",
        "--raw",
        str(raw),
        "--out",
        str(out),
        "--vocab-size",
        str(VOCAB),
        "--workers",
        "1",
        "--quiet",
    ]
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    cache = out / ".cache" / "books"
    deadline = time.monotonic() + 60
    while not (cache.is_dir() and len(list(cache.glob("*.json"))) >= 2):
        assert proc.poll() is None, proc.stderr.read().decode()
        assert time.monotonic() < deadline, "the build never cached a book"
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    cached_at_kill = len(list(cache.glob("*.json")))
    assert not (out / "manifest.json").exists()
    assert cached_at_kill < len(list_raw_books(raw))

    result = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    # Compare with an uninterrupted build of the CLI's config (two workers, the cache of `built`).
    defaults = CorpusConfig(tokenizer=TokenizerConfig(vocab_size=VOCAB))
    ref = build_corpus(raw, tmp_path / "ref", defaults, 2, False, cache_dir=ref_out / ".cache")
    assert without_timings(load_manifest(out)) == without_timings(ref)


def test_stats_command(built) -> None:
    out, m = built
    result = CliRunner().invoke(corpus_cli, ["stats", str(out), "--verify"])
    assert result.exit_code == 0, result.output
    assert f"{m['splits']['train']['rows']:,}" in result.output and "verified" in result.output
    assert "near-duplicate" in result.output


def test_stats_refuses_an_unfinished_corpus(tmp_path) -> None:
    (tmp_path / "train").mkdir()
    result = CliRunner().invoke(corpus_cli, ["stats", str(tmp_path)])
    assert result.exit_code != 0 and "not a finished corpus" in result.output


def test_build_rejects_an_empty_raw_store(tmp_path) -> None:
    (tmp_path / "raw").mkdir()
    result = CliRunner().invoke(
        main, ["corpus", "build", "--raw", str(tmp_path / "raw"), "--out", str(tmp_path / "o")]
    )
    assert result.exit_code != 0 and "no <id>.txt books" in result.output


def test_a_book_whose_every_paragraph_is_a_duplicate_is_reported(tmp_path) -> None:
    from corpus.build import BookSelection, BookSummary, plan_paragraphs
    from corpus.clean import BookMetadata, CleanedBook

    def cached(key: str, paragraphs: list[str]) -> BookSummary:
        book = CleanedBook(
            book_id=int(key),
            metadata=BookMetadata(),
            paragraphs=paragraphs,
            drops={},
            encoding="utf-8",
            replacements=0,
            raw_bytes=0,
            body_chars=0,
            kept_chars=0,
        )
        path = tmp_path / f"{key}.json"
        path.write_text(json.dumps({"status": "ok", "book": book.to_dict()}))
        return BookSummary(key, int(key), str(path), "ok")

    poems = [
        f"Soneto {i}: um verso longo o bastante para contar como parágrafo de verdade." for i in range(5)
    ]
    collected = cached("10", poems + ["Mais um soneto que só aparece nas obras completas do poeta."])
    selected = cached("20", poems[1:4])  # a selection printed inside the collection
    other = cached("30", ["Um romance que não tem nada a ver com os sonetos acima, nem de longe."])
    selection = BookSelection(
        [collected, selected, other], {}, [], {"train": [10, 20], "validation": [30], "test": []}
    )
    after, keep, dropped = plan_paragraphs(selection, CONFIG, progress=False)
    assert [s.key for s in after.kept] == ["10", "30"] and after.splits["train"] == [10]
    assert after.rejected == {"20": "all_paragraphs_duplicate"}
    assert keep == {"10": list(range(6)), "30": [0]} and dropped == 3


@pytest.mark.realbooks
@pytest.mark.slow
def test_real_books_end_to_end(shared_books, tmp_path) -> None:
    """Two pairs of editions, three Opúsculos volumes, a book with paragraphs over 16 KB."""
    raw = tmp_path / "raw"
    raw.mkdir()
    keys = ["3333", "27236", "55752", "55752.alt-2017", "16111", "16922", "17036", "22870"]
    for key in keys:
        (raw / f"{key}.txt").symlink_to(shared_books / "books" / f"{key}.txt")
    config = CorpusConfig(tokenizer=TokenizerConfig(vocab_size=2000))
    m = build_corpus(raw, tmp_path / "out", config, workers=2, progress=False)
    groups = {frozenset([g["kept"], *g["dropped"]]) for g in m["books"]["near_duplicates"]}
    assert groups == {frozenset({"3333", "27236"}), frozenset({"55752", "55752.alt-2017"})}
    kept = {b for s in m["splits"].values() for b in s["books"]}
    assert {16111, 16922, 17036, 22870, 3333, 55752} == kept  # the modern Lusíadas is kept
    assert all(s["books"] for s in m["splits"].values())
    sp = load_tokenizer(tmp_path / "out" / "tokenizer.model")
    texts = [t for split in m["splits"] for t in pq.read_table(tmp_path / "out" / split)["text"].to_pylist()]
    assert max(len(t.encode()) for t in texts) > 16384
    decoded = sp.decode(sp.encode(texts))
    assert decoded == texts  # verse, indentation, º/ª and long paragraphs all survive


def test_dataset_card_says_where_the_text_came_from(built) -> None:
    """A corpus of a local raw store claims no licence; one downloaded from gutenberg.org says public
    domain in the USA. Both carry the Hub's card fields and the limitations."""
    import yaml

    from corpus.card import dataset_card

    out = built[0] if isinstance(built, tuple) else built
    local = (out / "README.md").read_text()
    front = yaml.safe_load(local.split("---")[1])
    assert front["license"] == "unknown" and "public domain" not in local
    assert front["task_categories"] == ["text-generation"] and front["size_categories"][0].startswith("n<")
    assert "## Limitations" in local
    manifest = json.loads((out / "manifest.json").read_text())
    manifest["source"]["source"] = "https://www.gutenberg.org"
    downloaded = dataset_card(manifest)
    assert "license: other" in downloaded and "public domain in the USA" in downloaded
