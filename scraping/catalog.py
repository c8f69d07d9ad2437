"""Book discovery: Gutenberg's catalog CSV, its language listing page and its book pages.

The catalog feed is the one request Gutenberg asks bulk clients to make instead of crawling; the
listing and book pages are the browser-facing view of the same collection, parsed so the two can
be cross-checked.
"""

from __future__ import annotations

import csv
import io
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from html.parser import HTMLParser

CATALOG_PATH = "/cache/epub/feeds/pg_catalog.csv"
LISTING_PATH = "/browse/languages/{lang}"
BOOK_PAGE_PATH = "/ebooks/{id}"
CATALOG_COLUMNS = [
    "Text#",
    "Type",
    "Issued",
    "Title",
    "Language",
    "Authors",
    "Subjects",
    "LoCC",
    "Bookshelves",
]

# Language names as Gutenberg's pages print them; the catalog uses the codes.
LANGUAGE_CODES = {
    "portuguese": "pt",
    "english": "en",
    "french": "fr",
    "spanish": "es",
    "latin": "la",
    "galician": "gl",
    "german": "de",
    "italian": "it",
}


@dataclass(frozen=True)
class BookRecord:
    """What discovery knows about one book before downloading it."""

    id: int
    title: str | None = None
    authors: tuple[str, ...] = ()
    language: str | None = None  # as the source wrote it, e.g. "pt" or "en; pt"
    found_by: tuple[str, ...] = field(default=(), compare=False)


@dataclass
class CatalogParse:
    books: list[BookRecord]
    rows: int  # well-formed data rows read
    malformed: int  # rows with the wrong number of fields (a truncated download ends with one)


def _languages(field_value: str) -> list[str]:
    return [code.strip() for code in field_value.split(";") if code.strip()]


def _clean_title(title: str) -> str:
    # Catalog titles keep subtitle line breaks ("Title\r\nSubtitle"): one line reads better.
    lines = [line.strip() for line in title.splitlines() if line.strip()]
    return ": ".join(lines)


def parse_catalog(text: str | Iterable[str], language: str = "pt") -> CatalogParse:
    """Text books of the catalog whose Language includes `language` (so "en; pt" counts).

    Accepts the whole CSV as a string or an iterable of lines, so a 20 MB feed can stream. Rows that
    do not have the nine catalog fields are counted as malformed, not guessed at, and so is a last
    row without its line end: a truncated download can cut a row inside its last field.
    """
    lines = io.StringIO(text) if isinstance(text, str) else iter(text)
    last_line = [""]

    def tracked() -> Iterator[str]:
        for line in lines:
            last_line[0] = line
            yield line

    reader = csv.reader(tracked())
    header = next(reader, None)
    if header is None:
        raise ValueError("empty catalog")
    header = [h.lstrip("\ufeff") for h in header]
    if header[: len(CATALOG_COLUMNS)] != CATALOG_COLUMNS:
        raise ValueError(f"not a Gutenberg pg_catalog.csv: header is {header[:9]}")
    books: list[BookRecord] = []
    rows = malformed = 0
    pending: list[str] | None = None  # a row is judged once we know it was not the cut-off last one

    def take(row: list[str]) -> None:
        nonlocal rows, malformed
        if len(row) != len(CATALOG_COLUMNS) or not row[0].strip().isdigit():
            malformed += 1
            return
        rows += 1
        book_id, kind, _issued, title, lang, authors = row[:6]
        if kind == "Text" and language in _languages(lang):
            books.append(
                BookRecord(
                    id=int(book_id),
                    title=_clean_title(title) or None,
                    authors=tuple(a.strip() for a in authors.split(";") if a.strip()),
                    language=lang,
                    found_by=("catalog",),
                )
            )

    try:
        for row in reader:
            if pending is not None:
                take(pending)
            pending = row
    except csv.Error:
        pending, malformed = None, malformed + 1  # a quoted field cut off by a truncated download
    if pending is not None:
        if last_line[0].endswith(("\n", "\r")):
            take(pending)
        else:
            malformed += 1
    return CatalogParse(books, rows, malformed)


class _ListingParser(HTMLParser):
    """Collects `/ebooks/{id}` links inside `div.pgdbbylanguage`, with the author heading above them."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.books: dict[int, BookRecord] = {}
        self._div_depth = 0  # >0 while inside the listing div
        self._in_h2 = False
        self._author = ""
        self._link_id: int | None = None
        self._link_text: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        if tag == "div":
            if self._div_depth:
                self._div_depth += 1
            elif "pgdbbylanguage" in (a.get("class") or "").split():
                self._div_depth = 1
            return
        if not self._div_depth:
            return
        if tag == "h2":
            self._in_h2, self._author = True, ""
        elif tag == "a":
            m = re.fullmatch(r"(?:https?://[^/]+)?/ebooks/(\d+)/?", a.get("href") or "")
            if m:
                self._link_id, self._link_text = int(m.group(1)), []

    def handle_endtag(self, tag: str) -> None:
        if tag == "div" and self._div_depth:
            self._div_depth -= 1
        elif tag == "h2":
            self._in_h2 = False
        elif tag == "a" and self._link_id is not None:
            title = " ".join("".join(self._link_text).split()) or None
            author = self._author.strip()
            self.books.setdefault(
                self._link_id,
                BookRecord(self._link_id, title, (author,) if author else (), None, ("listing",)),
            )
            self._link_id = None

    def handle_data(self, data: str) -> None:
        if self._in_h2:
            self._author += data
        elif self._link_id is not None:
            self._link_text.append(data)


def parse_language_listing(html: str) -> list[BookRecord]:
    """Books linked from a `/browse/languages/xx` page, in page order."""
    parser = _ListingParser()
    parser.feed(html)
    parser.close()
    return list(parser.books.values())


@dataclass(frozen=True)
class BookPage:
    id: int
    title: str | None
    authors: tuple[str, ...]
    language: str | None
    text_links: tuple[str, ...]  # hrefs of plain-text files listed on the page


class _BookPageParser(HTMLParser):
    """Reads the `bibrec` table (Author/Title/Language rows) and the plain-text file links."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.fields: dict[str, list[str]] = {}
        self.text_links: list[str] = []
        self._cell: str | None = None  # "th" or "td" while inside one
        self._th = ""
        self._td: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        if tag in ("th", "td"):
            self._cell = tag
            if tag == "th":
                self._th = ""
            else:
                self._td = []
        elif tag == "a":
            href, kind = a.get("href") or "", (a.get("type") or "").lower()
            if kind.startswith("text/plain") or re.search(r"\.txt(\.utf-?8)?$", href):
                self.text_links.append(href)

    def handle_endtag(self, tag: str) -> None:
        if tag == "td" and self._cell == "td":
            key = self._th.strip().lower()
            if key:
                self.fields.setdefault(key, []).append(" ".join("".join(self._td).split()))
        if tag in ("th", "td"):
            self._cell = None

    def handle_data(self, data: str) -> None:
        if self._cell == "th":
            self._th += data
        elif self._cell == "td":
            self._td.append(data)


def parse_book_page(html: str, book_id: int) -> BookPage:
    """Metadata and text links of an `/ebooks/{id}` page."""
    parser = _BookPageParser()
    parser.feed(html)
    parser.close()
    f = parser.fields
    language = None
    if f.get("language"):
        names = [
            LANGUAGE_CODES.get(n.strip().lower(), n.strip())
            for cell in f["language"]
            for n in re.split(r",| and ", cell)
            if n.strip()
        ]
        language = "; ".join(names)
    return BookPage(
        id=book_id,
        title=(f.get("title") or [None])[0],
        authors=tuple(f.get("author", [])),
        language=language,
        text_links=tuple(dict.fromkeys(parser.text_links)),
    )


def merge_discoveries(*sources: Iterable[BookRecord]) -> list[BookRecord]:
    """One record per id, sorted: the first source's metadata wins, `found_by` accumulates."""
    merged: dict[int, BookRecord] = {}
    for source in sources:
        for rec in source:
            old = merged.get(rec.id)
            if old is None:
                merged[rec.id] = rec
            else:
                merged[rec.id] = BookRecord(
                    old.id,
                    old.title or rec.title,
                    old.authors or rec.authors,
                    old.language or rec.language,
                    tuple(dict.fromkeys(old.found_by + rec.found_by)),
                )
    return [merged[k] for k in sorted(merged)]


def iter_header_metadata(raw: bytes) -> Iterator[tuple[str, str]]:
    """`Title:`/`Author:`/`Language:` lines of a Gutenberg file's header (for folder sources).

    Only a light read for the raw manifest; the corpus stage parses headers fully.
    """
    head = raw[:20000]
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError:
        text = head.decode("latin-1")  # total: every byte maps to a character
    for line in text.lstrip("\ufeff").splitlines():
        if line.startswith("*** START") or line.startswith("***START"):
            break
        m = re.match(r"\s*(Title|Author|Language)\s*:\s*(.+?)\s*$", line)
        if m:
            yield m.group(1).lower(), m.group(2)
