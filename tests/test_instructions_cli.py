"""`ptgpt instructions --out DIR` never replaces a user's files without --force (issue 21)."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
from chat_factory import write_sample_corpus
from click.testing import CliRunner

from ptgpt.cli import main


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    return write_sample_corpus(tmp_path_factory.mktemp("corpus"))


def snapshot(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def run(*args: str):
    return CliRunner().invoke(main, ["instructions", *args])


def test_existing_instruction_set_is_kept_byte_identical_unless_force(corpus, tmp_path):
    out = tmp_path / "sft"
    first = run("--corpus", str(corpus), "--out", str(out))
    assert first.exit_code == 0, first.output
    (out / "train.jsonl").write_text('{"prompt": "my own edits", "reply": "keep me"}\n', encoding="utf-8")
    before = snapshot(out)
    again = run("--corpus", str(corpus), "--out", str(out), "--seed", "1")
    assert again.exit_code != 0
    assert again.output.startswith("Error:") and "train.jsonl" in again.output
    assert "Traceback" not in again.output
    assert snapshot(out) == before
    forced = run("--corpus", str(corpus), "--out", str(out), "--force")
    assert forced.exit_code == 0, forced.output
    assert "my own edits" not in (out / "train.jsonl").read_text(encoding="utf-8")


def test_corpus_folder_is_refused_byte_identical(corpus):
    before = snapshot(corpus)
    result = run("--corpus", str(corpus), "--out", str(corpus))
    assert result.exit_code != 0
    assert result.output.startswith("Error:") and "corpus folder" in result.output
    assert snapshot(corpus) == before
    assert not (corpus / "train.jsonl").exists()


def test_new_or_unrelated_folder_is_written(corpus, tmp_path):
    notes = tmp_path / "notes"
    notes.mkdir()
    (notes / "todo.txt").write_text("ler Camões\n", encoding="utf-8")
    result = run("--corpus", str(corpus), "--out", str(notes))
    assert result.exit_code == 0, result.output
    assert (notes / "todo.txt").read_text(encoding="utf-8") == "ler Camões\n"
    assert (notes / "train.jsonl").stat().st_size > 0 and (notes / "heldout.jsonl").exists()
