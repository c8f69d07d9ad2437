"""Find Portuguese books and download their plain texts into a raw store, politely and resumably.

`scrape(ScrapeConfig(...))` is the whole stage: discovery (catalog CSV, listing pages, or both to
cross-check), then one download per book trying Gutenberg's text URLs in order, skipping books
already stored with a verified sha256. A book that fails is reported and the run goes on.
"""

from __future__ import annotations

import functools
import json
import re
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

from scraping.catalog import (
    BOOK_PAGE_PATH,
    CATALOG_PATH,
    LISTING_PATH,
    BookRecord,
    iter_header_metadata,
    merge_discoveries,
    parse_book_page,
    parse_catalog,
    parse_language_listing,
)
from scraping.http import FetchConfig, FetchError, PoliteClient
from scraping.store import MANIFEST, RawStore, utc_now

GUTENBERG = "https://www.gutenberg.org"
# A PGLAF mirror: Gutenberg asks bulk downloads to go to mirrors, which keep the historic tree in
# the /1/2/3/1234/ layout.
DEFAULT_MIRROR = "https://aleph.pglaf.org"
CATALOG_MAX_BYTES = 256 << 20  # the full feed is ~20 MB and growing
LISTING_CSS = "div.pgdbbylanguage li a"  # what a rendered listing page shows once its list is built


def text_url_paths(book_id: int, layout: str = "gutenberg") -> list[str]:
    """Candidate paths of a book's plain text, best first.

    The regenerated UTF-8 file comes first; then the historic files: UTF-8 (-0), 8-bit (-8), plain.
    Mirrors keep the historic files under one folder per digit of the id but the last
    (1234 -> 1/2/3/1234; ids below 10 -> 0/7).
    """
    if layout == "gutenberg":
        folder = f"/files/{book_id}"
    elif layout == "mirror":
        digits = str(book_id)
        folder = "/" + "/".join(list(digits[:-1]) or ["0"]) + f"/{book_id}"
    else:
        raise ValueError(f"unknown layout {layout!r}: use 'gutenberg' or 'mirror'")
    return [
        f"/cache/epub/{book_id}/pg{book_id}.txt",
        f"{folder}/{book_id}-0.txt",
        f"{folder}/{book_id}-8.txt",
        f"{folder}/{book_id}.txt",
    ]


def validate_text(body: bytes) -> str | None:
    """Why a body is not a plain-text book, or None when it is."""
    if not body.strip():
        return "empty_body"
    head = body[:512].lstrip(b"\xef\xbb\xbf \t\r\n").lower()
    if head.startswith((b"<!doctype html", b"<html")):
        return "html_not_text"  # a mirror's error page served with 200
    if b"\x00" in body:
        return "binary_body"
    try:
        body.decode("utf-8")
    except UnicodeDecodeError:
        # 8-bit books (ISO-8859-1, cp1252) are fine; only C0 control bytes would mean binary data.
        if re.search(rb"[\x01-\x08\x0e-\x1a\x1c-\x1f]", body):
            return "binary_body"
    return None


@dataclass
class ScrapeConfig:
    """One scrape run. `source` is where books are discovered: a site URL or a local folder."""

    source: str = GUTENBERG
    out: Path = Path("data/raw")
    text_base: str | None = None  # where texts come from; None: the source (a mirror for gutenberg.org)
    layout: str | None = None  # "gutenberg" or "mirror"; None: "mirror" for DEFAULT_MIRROR
    discover: str = "catalog"  # "catalog", "listing" or "both"
    browser: bool = False  # render listing pages with headless Chromium
    language: str = "pt"
    ids: list[int] | None = None
    limit: int | None = None
    fetch: FetchConfig = field(default_factory=FetchConfig)
    local_only: bool = False  # browser resolves only loopback (tests, local mirrors)


@dataclass
class ScrapeSummary:
    found: int = 0
    downloaded: int = 0
    skipped: int = 0
    failed: list[tuple[int, str]] = field(default_factory=list)  # (id, last error)
    bytes: int = 0
    seconds: float = 0.0
    only_in_catalog: list[int] = field(default_factory=list)  # cross-check of --discover both
    only_in_listing: list[int] = field(default_factory=list)
    catalog_malformed_rows: int = 0

    @property
    def ok(self) -> bool:
        return not self.failed


def is_url(source: str) -> bool:
    return urlsplit(source).scheme in ("http", "https")


def _site(url: str) -> str:
    return url.rstrip("/")


def resolve_text_base(config: ScrapeConfig) -> tuple[str, str]:
    """(text base URL, layout) for a URL source."""
    source = _site(config.source)
    base = config.text_base
    if base is None:
        base = (
            DEFAULT_MIRROR if urlsplit(source).hostname in ("www.gutenberg.org", "gutenberg.org") else source
        )
    layout = config.layout or ("mirror" if _site(base) == DEFAULT_MIRROR else "gutenberg")
    return _site(base), layout


# -- discovery --------------------------------------------------------------------------------------
def discover_from_catalog(client: PoliteClient, site: str, language: str) -> tuple[list[BookRecord], int]:
    resp = client.get(site + CATALOG_PATH, max_bytes=CATALOG_MAX_BYTES)
    parsed = parse_catalog(resp.content.decode("utf-8-sig"), language)
    return parsed.books, parsed.malformed


def discover_from_listing(
    client: PoliteClient,
    site: str,
    language: str,
    fetch_html: Callable[..., str],
    book_pages: bool = True,
) -> list[BookRecord]:
    """Books of the language listing; each book page then confirms language and metadata.

    `fetch_html(url, wait_css=None)` returns a page's HTML; a browser waits for `wait_css`.
    """
    listing_url = site + LISTING_PATH.format(lang=language)
    listed = parse_language_listing(fetch_html(listing_url, wait_css=LISTING_CSS))
    if not book_pages:
        return listed
    books = []
    for rec in listed:
        try:
            page = parse_book_page(fetch_html(site + BOOK_PAGE_PATH.format(id=rec.id)), rec.id)
        except FetchError:
            books.append(rec)  # the listing alone still says it is a book in this language
            continue
        books.append(
            BookRecord(
                rec.id,
                page.title or rec.title,
                page.authors or rec.authors,
                page.language or language,
                rec.found_by,
            )
        )
    return books


def discover_local(folder: Path) -> list[BookRecord]:
    """Books of a folder of `<id>.txt` files; metadata from its manifest.jsonl or the headers."""
    manifest: dict[int, dict] = {}
    if (folder / MANIFEST).exists():
        for line in (folder / MANIFEST).read_text(encoding="utf-8").splitlines():
            if line.strip():
                rec = json.loads(line)
                manifest[int(rec["id"])] = rec
    books = []
    for path in sorted(folder.glob("*.txt"), key=lambda p: (len(p.stem), p.stem)):
        m = re.fullmatch(r"(?:pg)?(\d+)(?:-[08])?", path.stem)
        if not m:
            continue
        book_id = int(m.group(1))
        if book_id in manifest:
            rec = manifest[book_id]
            books.append(
                BookRecord(
                    book_id,
                    rec.get("title"),
                    tuple(rec.get("authors") or ()),
                    rec.get("language"),
                    ("folder",),
                )
            )
            continue
        with open(path, "rb") as f:
            meta = dict(iter_header_metadata(f.read(20000)))
        books.append(
            BookRecord(
                book_id,
                meta.get("title"),
                (meta["author"],) if meta.get("author") else (),
                meta.get("language"),
                ("folder",),
            )
        )
    return merge_discoveries(books)


# -- download ---------------------------------------------------------------------------------------
def download_text(client: PoliteClient, base: str, book_id: int, layout: str) -> tuple[bytes, str]:
    """The first candidate URL that yields a valid text body: (bytes exactly as served, URL)."""
    errors: list[FetchError] = []
    for path in text_url_paths(book_id, layout):
        url = base + path
        try:
            resp = client.get(url)
        except FetchError as e:
            errors.append(e)
            continue
        problem = validate_text(resp.content)
        if problem:
            errors.append(FetchError(url, problem))
            continue
        return resp.content, resp.url
    # Report the most informative error: a real fault beats "this candidate does not exist".
    real = [e for e in errors if e.reason not in ("http_404", "http_410")]
    raise (real or errors)[-1]


def _local_file(folder: Path, book_id: int) -> Path:
    for name in (f"{book_id}.txt", f"pg{book_id}.txt", f"{book_id}-0.txt", f"{book_id}-8.txt"):
        if (folder / name).exists():
            return folder / name
    raise FetchError(str(folder / f"{book_id}.txt"), "not_found")


def _fill_from_header(rec: BookRecord, data: bytes) -> BookRecord:
    if rec.title and rec.authors and rec.language:
        return rec
    meta = dict(iter_header_metadata(data))
    return BookRecord(
        rec.id,
        rec.title or meta.get("title"),
        rec.authors or ((meta["author"],) if meta.get("author") else ()),
        rec.language or meta.get("language"),
        rec.found_by,
    )


# -- the run ----------------------------------------------------------------------------------------
def make_client(config: ScrapeConfig) -> PoliteClient:
    """The polite client of a run, allowed onto the source's and the text base's hosts only."""
    client = PoliteClient(config.fetch)
    if is_url(config.source):
        client.allow_host(config.source)
        client.allow_host(resolve_text_base(config)[0])
    return client


def discover(config: ScrapeConfig, client: PoliteClient, summary: ScrapeSummary) -> list[BookRecord]:
    """All books to fetch, after --ids and --limit; cross-check results go into `summary`."""
    if config.discover not in ("catalog", "listing", "both"):
        raise ValueError(f"discover must be catalog, listing or both, not {config.discover!r}")
    if not is_url(config.source):
        folder = Path(config.source)
        if not folder.is_dir():
            raise ValueError(f"source {config.source!r} is neither an http(s) URL nor a folder")
        books = discover_local(folder)
    else:
        site = _site(config.source)
        from_catalog: list[BookRecord] = []
        from_listing: list[BookRecord] = []
        if config.discover in ("catalog", "both"):
            from_catalog, summary.catalog_malformed_rows = discover_from_catalog(
                client, site, config.language
            )
        if config.discover in ("listing", "both"):
            if config.browser:
                from scraping.browser import HeadlessBrowser

                with HeadlessBrowser(client, local_only=config.local_only) as browser:
                    from_listing = discover_from_listing(client, site, config.language, browser.page_source)
            else:
                from_listing = discover_from_listing(
                    client,
                    site,
                    config.language,
                    lambda url, wait_css=None: client.get(url).content.decode("utf-8", errors="replace"),
                )
        if config.discover == "both":
            cat, lst = {b.id for b in from_catalog}, {b.id for b in from_listing}
            summary.only_in_catalog, summary.only_in_listing = sorted(cat - lst), sorted(lst - cat)
        books = merge_discoveries(from_catalog, from_listing)
    if config.ids:
        known = {b.id: b for b in books}
        books = [known.get(i, BookRecord(i, found_by=("ids",))) for i in dict.fromkeys(config.ids)]
    if config.limit is not None:
        books = books[: config.limit]
    return books


def fetch_book(book: BookRecord, config: ScrapeConfig, client: PoliteClient, store: RawStore) -> int:
    """Store one book's text unless a verified copy is there: bytes stored, 0 when skipped.

    Raises FetchError when every candidate failed. The per-book step, for loops and task mappers.
    """
    if store.is_verified(book.id):
        return 0
    if is_url(config.source):
        base, layout = resolve_text_base(config)
        data, url = download_text(client, base, book.id, layout)
    else:
        path = _local_file(Path(config.source), book.id)
        data, url = path.read_bytes(), str(path.resolve())
        if problem := validate_text(data):
            raise FetchError(url, problem)
    book = _fill_from_header(book, data)
    store.put(
        book.id,
        data,
        title=book.title,
        authors=book.authors,
        language=book.language,
        source_url=url,
        fetched_at=utc_now(),
    )
    return len(data)


@dataclass
class BookOutcome:
    """What happened to one book: `downloaded`, `skipped` (already stored and verified) or `failed`."""

    book_id: int
    title: str | None
    outcome: str
    bytes: int = 0
    error: str | None = None


# An executor of the per-book download: calls fetch(book) for every book and yields (book, bytes
# stored or the FetchError that failed it) as each finishes. Any other exception is no book's fault
# and must propagate. `one_by_one` is the plain one; the Prefect flow maps a retrying task per book.
FetchMapper = Callable[
    [Callable[[BookRecord], int], Sequence[BookRecord]], Iterator[tuple[BookRecord, int | FetchError]]
]


def one_by_one(
    fetch: Callable[[BookRecord], int], books: Sequence[BookRecord]
) -> Iterator[tuple[BookRecord, int | FetchError]]:
    """The plain executor: each book in turn, in this thread (the politeness limit spaces them anyway)."""
    for book in books:
        try:
            yield book, fetch(book)
        except FetchError as e:
            yield book, e


def iter_scrape(
    config: ScrapeConfig,
    summary: ScrapeSummary,
    map_books: FetchMapper = one_by_one,
    discover_books: Callable[[ScrapeConfig, PoliteClient, ScrapeSummary], list[BookRecord]] = discover,
) -> Iterator[BookOutcome]:
    """Run the scrape, yielding each book's outcome as it finishes; `summary` is filled as it goes.

    One loop for every way to run it: `map_books` runs the per-book fetches (in turn, or as Prefect
    tasks), `discover_books` finds the books (plain, or as a Prefect task). A generator so callers
    can drive progress bars.
    """
    start = time.monotonic()
    store = RawStore(config.out)
    with make_client(config) as client:
        books = discover_books(config, client, summary)
        summary.found = len(books)
        fetch = functools.partial(fetch_book, config=config, client=client, store=store)
        for book, result in map_books(fetch, books):
            if isinstance(result, FetchError):
                summary.failed.append((book.id, str(result)))
                yield BookOutcome(book.id, book.title, "failed", error=str(result))
            elif result:
                summary.downloaded += 1
                summary.bytes += result
                yield BookOutcome(book.id, book.title, "downloaded", result)
            else:
                summary.skipped += 1
                yield BookOutcome(book.id, book.title, "skipped")
    store.compact()
    summary.seconds = time.monotonic() - start


def scrape(config: ScrapeConfig, progress: bool = False) -> ScrapeSummary:
    """Run a whole scrape; see iter_scrape."""
    from tqdm import tqdm

    summary = ScrapeSummary()
    bar = tqdm(desc="books", unit="book", disable=not progress)
    for _outcome in iter_scrape(config, summary):
        bar.total = summary.found
        bar.update(1)
        bar.set_postfix(new=summary.downloaded, skipped=summary.skipped, failed=len(summary.failed))
    bar.close()
    return summary
