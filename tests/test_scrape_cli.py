"""`ptgpt scrape` end to end through the CLI, and the real books served by the mirror."""

from __future__ import annotations

import pytest
from click.testing import CliRunner

from fakegutenberg.mirror import Fault, GutenbergMirror, mirror_books_from_folder
from ptgpt.cli import main


def test_cli_summary_and_exit_status(mirror_factory, tmp_path):
    m = mirror_factory()
    runner = CliRunner()
    args = ["scrape", "--source", m.url, "--out", str(tmp_path), "--rate", "0", "--quiet"]
    ok = runner.invoke(main, args)
    assert ok.exit_code == 0, ok.output
    n = sum("pt" in b.language for b in m.site.books.values())
    assert f"found {n}, downloaded {n}" in ok.output and "failed 0" in ok.output

    victim = min(m.site.books.values(), key=lambda b: b.id)
    (tmp_path / f"{victim.id}.txt").unlink()
    m.inject(victim.path(), *[Fault.error(500)] * 10)
    failed = runner.invoke(main, [*args, "--retries", "1"])
    assert failed.exit_code == 1
    assert f"skipped {n - 1}" in failed.output and f"FAILED {victim.id}: http_500" in failed.output


def test_cli_rejects_bad_input(tmp_path):
    runner = CliRunner()
    r = runner.invoke(main, ["scrape", "--source", str(tmp_path / "missing"), "--out", str(tmp_path / "o")])
    assert r.exit_code != 0 and "neither an http(s) URL nor a folder" in r.output
    r = runner.invoke(main, ["scrape", "--ids", "12,abc", "--out", str(tmp_path / "o")])
    assert r.exit_code != 0 and "ids must be ebook numbers" in r.output
    r = runner.invoke(main, ["scrape", "--rate", "-1"])
    assert r.exit_code != 0


@pytest.mark.realbooks
@pytest.mark.slow
def test_every_real_book_downloads_byte_identical(shared_books, tmp_path):
    books = mirror_books_from_folder(shared_books / "books")
    assert len(books) == 485
    with GutenbergMirror(books) as m:
        r = CliRunner().invoke(
            main, ["scrape", "--source", m.url, "--out", str(tmp_path), "--rate", "0", "--quiet"]
        )
    assert r.exit_code == 0, r.output
    for book in books:
        assert (tmp_path / f"{book.id}.txt").read_bytes() == book.data, book.id
