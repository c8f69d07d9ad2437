"""Stages 1-5 together (`clean_book`), its result contract, and checks over the real Gutenberg books."""

from __future__ import annotations

import json
import pickle
import random
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import pytest

from corpus.boilerplate import find_residue, strip_gutenberg_boilerplate
from corpus.clean import BookRejected, CleanConfig, CleanedBook, clean_book
from corpus.decode import decode_gutenberg
from corpus.filters import group_short_paragraphs
from corpus.normalize import normalize_text, split_paragraphs


def test_clean_sample_books(samples):
    for b in samples:
        if not b.cleanable:
            with pytest.raises(BookRejected, match="no_start_marker"):
                clean_book(b.raw_bytes(), b.id)
            continue
        if b.language != "pt":  # "en; pt": the mostly-English sample book
            with pytest.raises(BookRejected) as e:
                clean_book(b.raw_bytes(), b.id)
            assert e.value.reason == "not_portuguese"
            continue
        book = clean_book(b.raw_bytes(), b.id)
        expected = group_short_paragraphs(split_paragraphs(normalize_text(b.body)))
        assert set(book.paragraphs) <= set(expected)  # nothing invented, nothing left of the boilerplate
        assert book.kept_chars >= 0.95 * sum(map(len, expected)), (b.id, book.drops)
        assert book.replacements == 0 and book.raw_bytes == len(b.raw_bytes())
        assert sum(book.drops.values()) == len(expected) - len(book.paragraphs)
        assert find_residue("\n\n".join(book.paragraphs)) is None


def test_metadata_and_encoding_reported(samples):
    b = next(s for s in samples if s.encoding == "cp1252")
    book = clean_book(b.raw_bytes(), b.id)
    assert book.encoding == "cp1252" and book.metadata.encoding == "ISO-8859-1"
    assert book.metadata.title == b.title


def test_to_dict_round_trip_through_json_and_pickle(samples):
    book = clean_book(samples[1].raw_bytes(), samples[1].id)
    again = CleanedBook.from_dict(json.loads(json.dumps(book.to_dict())))
    assert again == book
    assert pickle.loads(pickle.dumps(book)) == book
    assert list(book.records())[0] == (book.book_id, 0, book.paragraphs[0])


def test_clean_book_runs_in_a_process_pool(samples):
    raws = [(b.raw_bytes(), b.id) for b in samples[:3]]
    with ProcessPoolExecutor(2) as pool:
        got = list(pool.map(clean_book, *zip(*raws, strict=True)))
    assert [g.paragraphs for g in got] == [clean_book(r, i).paragraphs for r, i in raws]


def test_config_thresholds_are_used(samples):
    b = samples[1]
    strict = CleanConfig()
    strict.filter.min_chars = 10_000
    strict.filter.min_sentence_chars = 10_000
    with pytest.raises(BookRejected) as e:
        clean_book(b.raw_bytes(), b.id, strict)
    assert e.value.reason == "too_little_text"
    timings: dict[str, float] = {}
    clean_book(b.raw_bytes(), b.id, timings=timings)
    assert set(timings) == {"decode", "strip", "normalize", "filter"}


# --- the real books (../shared/gutenberg-pt); skipped where absent ---------------------------------


def _real(shared_books: Path, name: str) -> bytes:
    path = shared_books / "books" / name
    if not path.exists():
        pytest.skip(f"{name} not in the shared books")
    return path.read_bytes()


@pytest.mark.realbooks
def test_real_books_no_residue_no_loss(shared_books):
    """All real books through the cheap stages (decode, strip): zero decode loss, zero boilerplate
    residue, a body found in every file. Normalizing and language id are left out to stay fast."""
    files = sorted((shared_books / "books").glob("*.txt"))
    assert len(files) > 400
    for f in files:
        raw = f.read_bytes()
        d = decode_gutenberg(raw)
        assert d.replacements == 0, f.name
        src = (raw[3:] if d.had_bom else raw).replace(b"\r\n", b"\n")
        n = len(d.text.encode("utf-8")) if d.encoding == "utf-8" else len(d.text)
        assert n == len(src), f.name  # same UTF-8 bytes, or one character per byte
        body = strip_gutenberg_boilerplate(d.text).body
        assert find_residue(body) is None, (f.name, find_residue(body))


@pytest.mark.realbooks
def test_real_special_books(shared_books):
    """The hard cases named in the shared README, through the whole of clean_book."""
    a = clean_book(_real(shared_books, "55752.txt"), 55752)
    b = clean_book(_real(shared_books, "55752.alt-2017.txt"), 55752)
    assert a.paragraphs == b.paragraphs  # markers-only 2025 file == full-header 2017 file
    assert b.metadata.title == "Dom Casmurro" and a.metadata.title is None
    with pytest.raises(BookRejected) as e:
        clean_book(_real(shared_books, "75473.txt"), 75473)  # mostly English
    assert e.value.reason == "not_portuguese"
    lus = clean_book(_real(shared_books, "3333.txt"), 3333)
    assert lus.encoding == "iso-8859-1"
    assert any(
        "As armas e os barões assinalados,\nQue da ocidental praia Lusitana," in p for p in lus.paragraphs
    )
    cp = clean_book(_real(shared_books, "16922.txt"), 16922)
    assert cp.encoding == "cp1252"
    assert not any(0x80 <= ord(c) <= 0x9F for p in cp.paragraphs for c in p)


@pytest.mark.realbooks
def test_real_books_sample_keeps_most_text(shared_books):
    files = sorted((shared_books / "books").glob("*.txt"))
    for f in random.Random(0).sample(files, 6):
        if f.name.startswith("75473"):
            continue
        book = clean_book(f.read_bytes(), int(f.name.split(".")[0]))
        assert book.kept_chars > 0.9 * book.body_chars, (f.name, book.drops)
        assert all(p == p.strip() and "\n\n" not in p for p in book.paragraphs)
