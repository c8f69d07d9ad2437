"""The downloader against the local mirror: byte-exact storage, URL fallback, every fault mode."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from fakegutenberg.mirror import Fault, GutenbergMirror, MirrorBook
from scraping.http import FetchConfig, FetchError, PoliteClient, parse_retry_after
from scraping.scrape import ScrapeConfig, ScrapeSummary, scrape, text_url_paths, validate_text
from scraping.store import RawStore, sha256_hex


def fast(**kw) -> FetchConfig:
    """No rate limit and tiny backoffs: tests exercise the logic, not the waiting."""
    kw.setdefault("rate", 0)
    kw.setdefault("backoff", 0.01)
    kw.setdefault("timeout", 5)
    return FetchConfig(**kw)


def run(mirror: GutenbergMirror, out: Path, **kw) -> ScrapeSummary:
    fetch = kw.pop("fetch", None) or fast()
    return scrape(ScrapeConfig(source=mirror.url, out=out, fetch=fetch, local_only=True, **kw))


def book_path(mirror: GutenbergMirror, book_id: int) -> str:
    return mirror.site.books[book_id].path()


def first_book(mirror: GutenbergMirror, layout: str | None = None) -> MirrorBook:
    return next(
        b
        for b in sorted(mirror.site.books.values(), key=lambda b: b.id)
        if layout is None or b.layout == layout
    )


def test_all_sample_books_stored_byte_exact(mirror_factory, tmp_path):
    m = mirror_factory()
    summary = run(m, tmp_path)
    pt_books = [b for b in m.site.books.values() if "pt" in b.language]
    assert summary.ok and summary.downloaded == summary.found == len(pt_books)
    store = RawStore(tmp_path)
    for book in pt_books:
        assert (tmp_path / f"{book.id}.txt").read_bytes() == book.data
        rec = store.record(book.id)
        assert rec["sha256"] == sha256_hex(book.data) and rec["bytes"] == len(book.data)
        assert rec["source_url"] == m.url + book.path()
        assert rec["title"] == book.title and rec["authors"] == [book.author]
    lines = (tmp_path / "manifest.jsonl").read_text().splitlines()
    assert [json.loads(x)["id"] for x in lines] == sorted(b.id for b in pt_books)
    assert not (tmp_path / ".partial").exists()
    # Every request identified itself.
    assert {r.user_agent for r in m.site.log} == {FetchConfig().user_agent}


def test_text_urls_are_tried_in_gutenberg_order(mirror_factory, tmp_path):
    m = mirror_factory()
    book = first_book(m, "files-plain")
    run(m, tmp_path, ids=[book.id])
    asked = [r.path for r in m.site.log if str(book.id) in r.path and r.path.endswith(".txt")]
    assert asked == text_url_paths(book.id, "gutenberg")


def test_mirror_layout(mirror_factory, tmp_path):
    m = mirror_factory()
    book = first_book(m, "files-8")
    summary = run(m, tmp_path, ids=[book.id], layout="mirror")
    assert summary.ok
    d = str(book.id)
    assert any(r.path == "/" + "/".join(d[:-1]) + f"/{d}/{d}-8.txt" for r in m.site.log)
    assert text_url_paths(7, "mirror")[1] == "/0/7/7-0.txt"
    assert text_url_paths(1234, "mirror")[3] == "/1/2/3/1234/1234.txt"


def test_error_burst_is_retried(mirror_factory, tmp_path):
    m = mirror_factory()
    book = first_book(m)
    m.inject(book_path(m, book.id), Fault.error(500), Fault.error(503), Fault.error(502))
    summary = run(m, tmp_path, ids=[book.id])
    assert summary.ok and summary.downloaded == 1
    assert [r.status for r in m.requests_to(book_path(m, book.id))] == [500, 503, 502, 200]
    assert (tmp_path / f"{book.id}.txt").read_bytes() == book.data


def test_retry_after_is_honoured(mirror_factory, tmp_path):
    m = mirror_factory()
    book = first_book(m)
    m.inject(book_path(m, book.id), Fault.too_many_requests(retry_after=1))
    summary = run(m, tmp_path, ids=[book.id])
    assert summary.ok
    first, second = m.requests_to(book_path(m, book.id))
    assert first.status == 429 and second.status == 200
    assert second.time - first.time >= 0.95  # the server asked for one second


@pytest.mark.parametrize("fault", [Fault.reset(0.3), Fault.truncate(0.7)], ids=["reset", "truncate"])
def test_broken_body_is_refetched_never_stored(mirror_factory, tmp_path, fault):
    m = mirror_factory()
    book = first_book(m)
    m.inject(book_path(m, book.id), fault, fault)
    summary = run(m, tmp_path, ids=[book.id])
    assert summary.ok
    assert len(m.requests_to(book_path(m, book.id))) == 3
    assert (tmp_path / f"{book.id}.txt").read_bytes() == book.data


def test_slow_response_times_out_and_is_retried(mirror_factory, tmp_path):
    m = mirror_factory()
    book = first_book(m)
    m.inject(book_path(m, book.id), Fault.slow(3))
    summary = run(m, tmp_path, ids=[book.id], fetch=fast(timeout=0.5))
    assert summary.ok and len(m.requests_to(book_path(m, book.id))) == 2


def test_redirect_to_foreign_host_is_refused(mirror_factory, tmp_path):
    m = mirror_factory()
    other = mirror_factory()
    book = first_book(m, "cache")
    # "localhost" is another host name than the 127.0.0.1 the scrape was given.
    port = other.url.rsplit(":", 1)[1]
    m.inject(book_path(m, book.id), Fault.redirect(f"http://localhost:{port}{book_path(m, book.id)}"))
    summary = run(m, tmp_path, ids=[book.id])
    assert not summary.ok and "foreign_redirect" in summary.failed[0][1]
    assert other.site.log == []  # the foreign host was never contacted
    assert not (tmp_path / f"{book.id}.txt").exists()


def test_same_host_redirect_is_followed(mirror_factory, tmp_path):
    m = mirror_factory()
    a, b = sorted(m.site.books.values(), key=lambda x: x.id)[:2]
    m.inject(book_path(m, a.id), Fault.redirect(book_path(m, a.id)))
    assert run(m, tmp_path, ids=[a.id]).ok
    assert (tmp_path / f"{a.id}.txt").read_bytes() == a.data


def test_oversized_body_is_rejected(mirror_factory, tmp_path):
    m = mirror_factory()
    book = first_book(m)
    m.inject(book_path(m, book.id), Fault.oversize(300_000))
    summary = run(m, tmp_path, ids=[book.id], fetch=fast(max_bytes=200_000))
    assert not summary.ok and "body_too_large" in summary.failed[0][1]
    assert not (tmp_path / f"{book.id}.txt").exists()


def test_html_error_page_is_not_stored(mirror_factory, tmp_path):
    m = mirror_factory()
    book = first_book(m, "cache")
    m.inject(book_path(m, book.id), Fault.html_page())
    summary = run(m, tmp_path, ids=[book.id])
    assert not summary.ok and "html_not_text" in summary.failed[0][1]


def test_robots_disallow_is_honoured(mirror_factory, tmp_path):
    m = mirror_factory(robots_txt="User-agent: *\nDisallow: /files/\n")
    summary = run(m, tmp_path)
    for book in m.site.books.values():
        if "pt" not in book.language:
            continue
        stored = (tmp_path / f"{book.id}.txt").exists()
        assert stored == (book.layout == "cache"), book.layout
    assert not [r for r in m.site.log if r.path.startswith("/files/")]
    assert all("robots_disallowed" in err for _, err in summary.failed)


def test_persistent_failure_is_reported_and_run_goes_on(mirror_factory, tmp_path):
    m = mirror_factory()
    bad = first_book(m, "cache")
    m.inject(book_path(m, bad.id), *[Fault.error(503)] * 3)
    summary = run(m, tmp_path, fetch=fast(retries=2))
    assert [book_id for book_id, _ in summary.failed] == [bad.id]
    assert "http_503" in summary.failed[0][1]
    assert summary.downloaded == summary.found - 1


def test_missing_book_reports_not_found(mirror_factory, tmp_path):
    m = mirror_factory()
    summary = run(m, tmp_path, ids=[99999999])
    assert summary.failed and "http_404" in summary.failed[0][1]


def test_rate_limit_spaces_requests(mirror_factory, tmp_path):
    m = mirror_factory()
    run(m, tmp_path, limit=3, fetch=fast(rate=10))
    times = [r.time for r in m.site.log]
    assert len(times) >= 5
    gaps = [b - a for a, b in zip(times, times[1:], strict=False)]
    assert min(gaps) >= 0.09  # 10 requests/s per host


def test_rerun_skips_verified_and_refetches_corrupt(mirror_factory, tmp_path):
    m = mirror_factory()
    first = run(m, tmp_path)
    victim = sorted(m.site.books)[0]
    (tmp_path / f"{victim}.txt").write_bytes(b"corrupted")
    second = run(m, tmp_path)
    assert second.downloaded == 1 and second.skipped == first.downloaded - 1
    assert (tmp_path / f"{victim}.txt").read_bytes() == m.site.books[victim].data
    lines = (tmp_path / "manifest.jsonl").read_text().splitlines()
    assert len(lines) == first.downloaded  # compacted: one line per book


def test_folder_source_reads_header_metadata(samples, tmp_path):
    from fakegutenberg.books import write_sample_books

    src = tmp_path / "src"
    write_sample_books(src, samples)
    summary = scrape(ScrapeConfig(source=str(src), out=tmp_path / "raw"))
    assert summary.ok and summary.downloaded == len(samples)
    store = RawStore(tmp_path / "raw")
    for s in samples:
        assert (tmp_path / "raw" / f"{s.id}.txt").read_bytes() == s.raw_bytes()
        if s.variant != "no-marker" and "Title:" in s.raw_bytes().decode(s.encoding):
            assert store.record(s.id)["title"] == s.title


def test_bad_source_is_a_clear_error(tmp_path):
    with pytest.raises(ValueError, match="neither an http"):
        scrape(ScrapeConfig(source=str(tmp_path / "nope"), out=tmp_path / "raw"))


def test_host_allow_list_and_retry_after_parsing(mirror_factory):
    m = mirror_factory()
    with PoliteClient(fast()) as client, pytest.raises(FetchError) as e:
        client.get(m.url + "/robots.txt")
    assert e.value.reason == "host_not_allowed"
    assert parse_retry_after("7") == 7
    assert 0 <= parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT") < 1  # a past date: no wait
    assert parse_retry_after("soon") is None


def test_validate_text():
    assert validate_text(b"") == "empty_body"
    assert validate_text(b"\xef\xbb\xbf<!DOCTYPE html><html>") == "html_not_text"
    assert validate_text(b"abc\x00def") == "binary_body"
    assert validate_text("Constituição".encode("latin-1")) is None
    assert validate_text("Constituição".encode()) is None


def test_unreachable_robots_txt_means_keep_out(mirror_factory, tmp_path):
    """RFC 9309: a robots.txt that cannot be read (5xx after retries) disallows everything, and says so."""
    m = mirror_factory()
    m.inject("/robots.txt", *[Fault.error(503)] * 3)
    with pytest.raises(FetchError) as e:
        run(m, tmp_path, fetch=fast(retries=2))
    assert e.value.reason == "robots_unreachable" and "http_503" in str(e.value)
    assert [r.path for r in m.site.log] == ["/robots.txt"] * 3  # nothing else was asked for
