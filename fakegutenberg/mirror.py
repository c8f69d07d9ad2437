"""A local Gutenberg-layout HTTP server, with faults on demand.

Tests and the offline demo point the scraper at it instead of gutenberg.org: it serves the catalog
CSV, robots.txt, the language listing and book pages, and each book's text under the URL layouts
of the main site (`/files/{id}/...`, `/cache/epub/{id}/...`) and of mirrors (`/1/2/3/1234/...`).
`inject(path, *faults)` queues faults that the next requests to `path` get, one each: error
bursts, 429 with Retry-After, a reset or truncated body, a slow answer, a redirect to a foreign
host, an oversized body.
"""

from __future__ import annotations

import csv
import html
import io
import json
import socket
import struct
import threading
import time
from collections import defaultdict, deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import urlsplit

from scraping.catalog import CATALOG_COLUMNS, CATALOG_PATH, iter_header_metadata
from scraping.scrape import text_url_paths

LAYOUT_INDEX = {"cache": 0, "files-0": 1, "files-8": 2, "files-plain": 3}
LANGUAGE_NAMES = {"pt": "Portuguese", "en": "English", "fr": "French", "es": "Spanish", "la": "Latin"}
DEFAULT_ROBOTS = "User-agent: *\nDisallow: /ebooks/search/\n"


@dataclass(frozen=True)
class MirrorBook:
    id: int
    title: str
    author: str
    language: str  # catalog form: "pt", "en; pt"
    data: bytes  # the file exactly as served
    layout: str = "cache"  # which single Gutenberg text URL holds it (see LAYOUT_INDEX)

    def path(self, layout: str = "gutenberg") -> str:
        """The URL path of this book's text in one URL layout."""
        return text_url_paths(self.id, layout)[LAYOUT_INDEX[self.layout]]

    def paths(self) -> list[str]:
        """The URL paths serving this book: its one candidate in both URL layouts."""
        return sorted({self.path("gutenberg"), self.path("mirror")})


@dataclass(frozen=True)
class Fault:
    """One misbehaviour for one request. Build with the classmethods."""

    kind: str
    status: int = 0
    seconds: float = 0.0
    location: str = ""
    size: int = 0
    fraction: float = 0.5

    @classmethod
    def error(cls, status: int = 503) -> Fault:
        return cls("status", status=status)

    @classmethod
    def too_many_requests(cls, retry_after: float = 1) -> Fault:
        return cls("status", status=429, seconds=retry_after)

    @classmethod
    def reset(cls, fraction: float = 0.5) -> Fault:
        """Send part of the body, then reset the TCP connection."""
        return cls("reset", fraction=fraction)

    @classmethod
    def truncate(cls, fraction: float = 0.5) -> Fault:
        """Promise the full Content-Length, send part of the body, close cleanly."""
        return cls("truncate", fraction=fraction)

    @classmethod
    def slow(cls, seconds: float) -> Fault:
        return cls("slow", seconds=seconds)

    @classmethod
    def stall(cls, seconds: float, fraction: float = 0.5) -> Fault:
        """Send part of the body, pause, then send the rest (a download caught mid-body)."""
        return cls("stall", seconds=seconds, fraction=fraction)

    @classmethod
    def redirect(cls, location: str) -> Fault:
        return cls("redirect", status=302, location=location)

    @classmethod
    def oversize(cls, size: int) -> Fault:
        return cls("oversize", size=size)

    @classmethod
    def html_page(cls) -> Fault:
        """A 200 answer carrying an HTML error page instead of the text."""
        return cls("html")


@dataclass
class RequestRecord:
    path: str
    status: int
    user_agent: str
    time: float  # time.monotonic() when the request arrived


@dataclass
class MirrorSite:
    """What the server serves; mutable so tests can change robots or the listing between runs."""

    books: dict[int, MirrorBook]
    catalog_csv: str | None = None
    robots_txt: str | None = DEFAULT_ROBOTS  # None: 404
    listing: str = "static"  # "static" HTML, or "script": the list appears only after JavaScript runs
    faults: dict[str, deque[Fault]] = field(default_factory=lambda: defaultdict(deque))
    log: list[RequestRecord] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def routes(self) -> dict[str, bytes]:
        out: dict[str, bytes] = {}
        for book in self.books.values():
            for path in book.paths():
                out[path] = book.data
        return out


def catalog_csv_for(books: Iterable[MirrorBook]) -> str:
    """A minimal pg_catalog.csv for books that came without one."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(CATALOG_COLUMNS)
    for b in sorted(books, key=lambda b: b.id):
        w.writerow([b.id, "Text", "2000-01-01", b.title, b.language, b.author, "", "", ""])
    return buf.getvalue()


def listing_html(site: MirrorSite, lang: str = "pt") -> str:
    books = [
        b
        for b in sorted(site.books.values(), key=lambda b: (b.author, b.id))
        if lang in [c.strip() for c in b.language.split(";")]
    ]
    if site.listing == "script":
        data = json.dumps([{"id": b.id, "title": b.title, "author": b.author} for b in books])
        return f"""<!DOCTYPE html><html><head><title>Books in Portuguese</title></head><body>
<h1>Books in Portuguese</h1><div class="pgdbbylanguage" id="books"></div>
<script>
const BOOKS = {data};
setTimeout(() => {{
  const ul = document.createElement("ul");
  for (const b of BOOKS) {{
    const li = document.createElement("li"); li.className = "pgdbetext";
    const a = document.createElement("a"); a.href = "/ebooks/" + b.id; a.textContent = b.title;
    li.appendChild(a); li.appendChild(document.createTextNode(" (Portuguese)")); ul.appendChild(li);
  }}
  document.getElementById("books").appendChild(ul);
}}, 300);
</script></body></html>"""
    parts, author = [], None
    for b in books:
        if b.author != author:
            if author is not None:
                parts.append("</ul>")
            author = b.author
            parts.append(f'<h2><a name="a{b.id}">{html.escape(b.author)}</a></h2><ul>')
        parts.append(
            f'<li class="pgdbetext"><a href="/ebooks/{b.id}">{html.escape(b.title)}</a> (Portuguese)</li>'
        )
    if author is not None:
        parts.append("</ul>")
    body = "\n".join(parts)
    return f"""<!DOCTYPE html><html><head><title>Books in Portuguese</title></head><body>
<h1>Books in Portuguese</h1><div class="pgdbbylanguage">
{body}
</div></body></html>"""


def book_page_html(book: MirrorBook) -> str:
    langs = ", ".join(LANGUAGE_NAMES.get(c.strip(), c.strip()) for c in book.language.split(";"))
    rows = "".join(
        f"<tr><th>{k}</th><td>{html.escape(v)}</td></tr>"
        for k, v in (
            ("Author", book.author),
            ("Title", book.title),
            ("Language", langs),
            ("EBook-No.", str(book.id)),
        )
    )
    return f"""<!DOCTYPE html><html><head><title>{html.escape(book.title)}</title></head><body>
<table class="bibrec">{rows}</table>
<table class="files"><tr><td><a href="/ebooks/{book.id}.txt.utf-8" type="text/plain; charset=utf-8">Plain Text UTF-8</a></td></tr></table>
</body></html>"""


class _Handler(BaseHTTPRequestHandler):
    server_version = "ptgpt-mirror/1"
    site: MirrorSite  # set on the subclass made per server

    def log_message(self, format: str, *args: object) -> None:
        pass  # tests read site.log instead

    def do_GET(self) -> None:
        path = urlsplit(self.path).path
        with self.site.lock:
            queue = self.site.faults.get(path)
            fault = queue.popleft() if queue else None
            record = RequestRecord(path, 0, self.headers.get("User-Agent", ""), time.monotonic())
            self.site.log.append(record)
        status, body, ctype = self._route(path)
        record.status = status if fault is None else (fault.status or status)
        if fault is not None and self._apply(fault, body):
            return
        self._send(status, body, ctype)

    def _route(self, path: str) -> tuple[int, bytes, str]:
        site = self.site
        text = "text/plain; charset=utf-8"
        htm = "text/html; charset=utf-8"
        if path == "/robots.txt":
            return (200, site.robots_txt.encode(), text) if site.robots_txt is not None else (404, b"", text)
        if path == CATALOG_PATH:
            csv_text = (
                site.catalog_csv if site.catalog_csv is not None else catalog_csv_for(site.books.values())
            )
            return 200, csv_text.encode("utf-8"), "text/csv; charset=utf-8"
        if path.startswith("/browse/languages/"):
            return 200, listing_html(site, path.rsplit("/", 1)[-1]).encode(), htm
        if path.startswith("/ebooks/") and path[len("/ebooks/") :].isdigit():
            book = site.books.get(int(path[len("/ebooks/") :]))
            return (200, book_page_html(book).encode(), htm) if book else (404, b"not found", text)
        data = site.routes().get(path)
        if data is not None:
            # Like Gutenberg: the header says text/plain and nothing about the 8-bit files' charset.
            return 200, data, "text/plain"
        return 404, b"<html><body>404 Not Found</body></html>", htm

    def _send(self, status: int, body: bytes, ctype: str, headers: dict[str, str] | None = None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(body)

    def _apply(self, fault: Fault, body: bytes) -> bool:
        """Misbehave; True when the response is finished (or abandoned)."""
        if fault.kind == "status":
            headers = {"Retry-After": str(int(fault.seconds))} if fault.status == 429 else {}
            self._send(fault.status, b"try again later", "text/plain", headers)
            return True
        if fault.kind == "redirect":
            self._send(fault.status, b"", "text/plain", {"Location": fault.location})
            return True
        if fault.kind == "slow":
            time.sleep(fault.seconds)
            return False
        if fault.kind == "oversize":
            self._send(200, b"x" * fault.size, "text/plain")
            return True
        if fault.kind == "html":
            self._send(200, b"<!DOCTYPE html><html><body>Temporarily unavailable</body></html>", "text/html")
            return True
        if fault.kind == "stall":
            cut = int(len(body) * fault.fraction)
            self.send_response(200)
            self.send_header("Content-Type", "text/plain")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body[:cut])
            self.wfile.flush()
            time.sleep(fault.seconds)
            self.wfile.write(body[cut:])
            return True
        if fault.kind in ("reset", "truncate"):
            self.send_response(200)
            self.send_header("Content-Type", "text/plain")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body[: int(len(body) * fault.fraction)])
            self.wfile.flush()
            if fault.kind == "reset":
                # SO_LINGER with a zero timeout makes close() send RST instead of FIN.
                self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            self.close_connection = True
            return True
        raise ValueError(f"unknown fault {fault.kind}")


class _QuietServer(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request: object, client_address: object) -> None:
        # A client that timed out or hung up mid-body is what the faults are for: not an error.
        import sys

        if not isinstance(sys.exc_info()[1], (ConnectionError, TimeoutError)):
            super().handle_error(request, client_address)


class GutenbergMirror:
    """Serve a MirrorSite on 127.0.0.1 (random port) in a background thread; use as a context manager."""

    def __init__(
        self, books: Iterable[MirrorBook], catalog_csv: str | None = None, port: int = 0, **site_kw: object
    ):
        self.site = MirrorSite({b.id: b for b in books}, catalog_csv, **site_kw)  # type: ignore[arg-type]
        handler = type("Handler", (_Handler,), {"site": self.site})
        self.server = _QuietServer(("127.0.0.1", port), handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self._thread = threading.Thread(
            target=self.server.serve_forever, name="gutenberg-mirror", daemon=True
        )

    def start(self) -> GutenbergMirror:
        self._thread.start()
        return self

    def serve_forever(self) -> None:
        """Block until interrupted (for `ptgpt mirror`)."""
        self._thread.join()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def __enter__(self) -> GutenbergMirror:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def inject(self, path: str, *faults: Fault) -> None:
        """Queue faults for the next requests to `path` (one fault per request)."""
        with self.site.lock:
            self.site.faults[path].extend(faults)

    def requests_to(self, path: str) -> list[RequestRecord]:
        with self.site.lock:
            return [r for r in self.site.log if r.path == path]


def mirror_books_from_folder(folder: Path) -> list[MirrorBook]:
    """Serve a folder of real `<id>.txt` files (e.g. ../shared/gutenberg-pt/books) byte for byte.

    Titles and authors come from a `catalog.csv` beside them when there is one (columns
    `ebook_id,title,author,catalog_language`), else from each file's header. UTF-8 files are served
    as `-0.txt`, 8-bit ones as `-8.txt`, like Gutenberg's historic tree.
    """
    meta: dict[int, dict[str, str]] = {}
    if (folder / "catalog.csv").exists():
        with open(folder / "catalog.csv", encoding="utf-8", newline="") as f:
            for row in csv.DictReader(f):
                if row.get("ebook_id", "").isdigit() and row.get("file", "") == f"{row['ebook_id']}.txt":
                    meta[int(row["ebook_id"])] = row
    books = []
    for path in sorted(folder.glob("*.txt")):
        if not path.stem.isdigit():
            continue
        book_id, data = int(path.stem), path.read_bytes()
        row = meta.get(book_id) or dict(iter_header_metadata(data))
        try:
            data.decode("utf-8")
            layout = "files-0"
        except UnicodeDecodeError:
            layout = "files-8"
        language = (row.get("catalog_language") or row.get("language") or "pt").replace("/", "; ")
        books.append(
            MirrorBook(
                book_id,
                row.get("title") or f"Book {book_id}",
                row.get("author") or "Anonymous",
                "pt" if language.lower() == "portuguese" else language,
                data,
                layout,
            )
        )
    return books


def mirror_books_from_samples(samples: Iterable[object]) -> list[MirrorBook]:
    """MirrorBooks from fakegutenberg.books.SampleBook objects."""
    return [MirrorBook(s.id, s.title, s.author, s.language, s.raw_bytes(), s.layout) for s in samples]  # type: ignore[attr-defined]
