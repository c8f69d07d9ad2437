"""Discovery parsers: the real catalog data, the sample catalog, listing and book pages."""

from __future__ import annotations

import pytest

from fakegutenberg.mirror import MirrorSite, book_page_html, listing_html, mirror_books_from_samples
from scraping.catalog import merge_discoveries, parse_book_page, parse_catalog, parse_language_listing


def test_real_catalog_prefix_is_parsed_despite_truncation(shared_books):
    text = (shared_books / "catalog" / "pg_catalog.prefix-to-7702.csv").read_text(encoding="utf-8")
    parsed = parse_catalog(text)
    assert [b.id for b in parsed.books] == [2837, 3333, 7384]
    assert parsed.rows > 7000
    assert parsed.malformed == 1  # the file is cut off in the middle of its last row
    lusiadas = next(b for b in parsed.books if b.id == 3333)
    assert "Lusíadas" in lusiadas.title and any("Camões" in a for a in lusiadas.authors)


def test_real_catalog_excerpt_multiline_titles(shared_books):
    text = (shared_books / "catalog" / "pg_catalog.excerpt-34273-34293.csv").read_text(encoding="utf-8")
    parsed = parse_catalog(text)
    assert [b.id for b in parsed.books] == [34274, 34275, 34276, *range(34286, 34294)]
    assert parsed.malformed == 0
    assert all("\n" not in b.title for b in parsed.books)


def test_sample_catalog_keeps_portuguese_text_rows_only(samples):
    from fakegutenberg.books import sample_catalog_csv

    parsed = parse_catalog(sample_catalog_csv(samples))
    ids = {b.id for b in parsed.books}
    assert ids == {b.id for b in samples if "pt" in [c.strip() for c in b.language.split(";")]}
    assert parsed.rows > len(ids)  # distractors (other languages, a Sound row) were read and dropped
    assert any(b.language != "pt" for b in parsed.books)  # a multi-language "en; pt" book stays


def test_catalog_rejects_other_csv():
    with pytest.raises(ValueError, match="pg_catalog"):
        parse_catalog("id,name\n1,x\n")
    with pytest.raises(ValueError, match="empty"):
        parse_catalog("")


def test_listing_and_book_pages_round_trip(samples):
    books = mirror_books_from_samples(samples)
    site = MirrorSite({b.id: b for b in books})
    listed = parse_language_listing(listing_html(site))
    assert {b.id for b in listed} == {b.id for b in books if "pt" in b.language}
    by_id = {b.id: b for b in books}
    for rec in listed:
        assert rec.title == by_id[rec.id].title
        assert rec.authors == (by_id[rec.id].author,)
    page = parse_book_page(book_page_html(books[0]), books[0].id)
    assert (page.title, page.authors) == (books[0].title, (books[0].author,))
    for book in books:
        assert parse_book_page(book_page_html(book), book.id).language == book.language
    assert page.text_links == (f"/ebooks/{books[0].id}.txt.utf-8",)


def test_script_listing_has_no_links_without_a_browser(samples):
    site = MirrorSite({b.id: b for b in mirror_books_from_samples(samples)}, listing="script")
    assert parse_language_listing(listing_html(site)) == []


def test_merge_discoveries_keeps_first_metadata_and_sources():
    from scraping.catalog import BookRecord

    a = [BookRecord(2, "Dois", ("A",), "pt", ("catalog",)), BookRecord(1, None, (), "pt", ("catalog",))]
    b = [BookRecord(1, "Um", ("B",), "pt", ("listing",))]
    merged = merge_discoveries(a, b)
    assert [m.id for m in merged] == [1, 2]
    assert merged[0].title == "Um" and merged[0].found_by == ("catalog", "listing")
    assert merged[1].found_by == ("catalog",)
