"""A polite HTTP client for Gutenberg and its mirrors.

Gutenberg bans clients that hammer it, so every request goes through one place that honours
robots.txt, spaces requests per host, identifies itself, stays on the hosts it was given, caps body
sizes, and retries transient faults with exponential backoff, jitter and `Retry-After`.
"""

from __future__ import annotations

import email.utils
import importlib.metadata
import random
import threading
import time
import urllib.robotparser
from dataclasses import dataclass, field
from urllib.parse import urljoin, urlsplit

import requests


def _version() -> str:
    """The installed distribution's version, read without importing the ptgpt app package."""
    try:
        return importlib.metadata.version("ptgpt")
    except importlib.metadata.PackageNotFoundError:  # run from a checkout that was never installed
        return "0+unknown"


DEFAULT_USER_AGENT = (
    f"ptgpt/{_version()} (Portuguese corpus builder; polite bulk downloader; +https://github.com/ptgpt/ptgpt)"
)
RETRYABLE_STATUS = {429, 500, 502, 503, 504}


@dataclass
class FetchConfig:
    """How hard the client may lean on a server."""

    user_agent: str = DEFAULT_USER_AGENT
    rate: float = 1.0  # requests per second per host; 0 turns the limit off (mirrors you own)
    timeout: float = 30.0  # seconds to connect and between bytes
    max_bytes: int = 64 << 20  # the largest Portuguese book is ~5 MB; anything far bigger is wrong
    retries: int = 5  # extra attempts after the first, for transient faults only
    backoff: float = 1.0  # first backoff ceiling in seconds, doubled per attempt (full jitter)
    backoff_max: float = 60.0
    retry_after_max: float = 300.0  # never sleep longer than this on a server's say-so
    respect_robots: bool = True
    max_redirects: int = 5
    allowed_hosts: set[str] = field(default_factory=set)  # the scraper adds its source hosts


class FetchError(Exception):
    """A fetch that failed for good; `reason` is a short code for summaries."""

    def __init__(self, url: str, reason: str, detail: str = "", status: int | None = None):
        self.url, self.reason, self.detail, self.status = url, reason, detail, status
        super().__init__(f"{reason}: {url}" + (f" ({detail})" if detail else ""))


class _Transient(Exception):
    """A fault worth retrying; carries how long the server asked us to wait, if it did."""

    def __init__(
        self, reason: str, detail: str = "", retry_after: float | None = None, status: int | None = None
    ):
        super().__init__(detail)
        self.reason, self.detail, self.retry_after, self.status = reason, detail, retry_after, status


@dataclass
class Response:
    url: str  # final URL after same-host redirects
    status: int
    headers: dict[str, str]
    content: bytes


def host_of(url: str) -> str:
    return (urlsplit(url).hostname or "").lower()


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """Seconds to wait from a Retry-After header (delta-seconds or an HTTP date)."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - (time.time() if now is None else now))


class HostRateLimiter:
    """Spaces request starts to the same host by at least 1/rate seconds (thread-safe)."""

    def __init__(self, rate: float):
        self.interval = 1.0 / rate if rate > 0 else 0.0
        self._next: dict[str, float] = {}
        self._host_interval: dict[str, float] = {}
        self._lock = threading.Lock()

    def set_min_interval(self, host: str, seconds: float) -> None:
        """Raise one host's spacing (robots.txt Crawl-delay)."""
        with self._lock:
            self._host_interval[host] = max(seconds, self._host_interval.get(host, 0.0))

    def wait(self, host: str) -> None:
        with self._lock:
            interval = max(self.interval, self._host_interval.get(host, 0.0))
            if interval <= 0:
                return
            now = time.monotonic()
            start = max(now, self._next.get(host, now))
            self._next[host] = start + interval
        if start > now:
            time.sleep(start - now)


class PoliteClient:
    """GET with politeness and fault handling; see the module docstring."""

    def __init__(self, config: FetchConfig | None = None, session: requests.Session | None = None):
        self.config = config or FetchConfig()
        self.session = session or requests.Session()
        self.session.headers["User-Agent"] = self.config.user_agent
        # Ask for the file as it is: the store keeps the exact bytes, not a re-encoded copy.
        self.session.headers["Accept-Encoding"] = "identity"
        self.limiter = HostRateLimiter(self.config.rate)
        self._robots: dict[str, urllib.robotparser.RobotFileParser] = {}
        self._robots_lock = threading.Lock()
        self._robots_unreachable: dict[str, FetchError] = {}  # site -> why its robots.txt could not be read
        self.requests_made = 0

    def close(self) -> None:
        self.session.close()

    def __enter__(self) -> PoliteClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- policy --------------------------------------------------------------------------------
    def allow_host(self, url: str) -> None:
        """Add the host of `url` to the allow-list; nothing else is ever fetched, redirects included."""
        self.config.allowed_hosts.add(host_of(url))

    def _check_host(self, url: str, origin: str) -> None:
        if urlsplit(url).scheme not in ("http", "https"):
            raise FetchError(url, "bad_scheme")
        if host_of(url) not in self.config.allowed_hosts:
            if url == origin:
                raise FetchError(url, "host_not_allowed", "not in the allow-list")
            raise FetchError(origin, "foreign_redirect", f"redirect to {url}")

    def robots_allows(self, url: str) -> bool:
        """Whether robots.txt of the URL's site lets our User-Agent fetch it (cached per site)."""
        if not self.config.respect_robots:
            return True
        parts = urlsplit(url)
        site = f"{parts.scheme}://{parts.netloc}"
        with self._robots_lock:
            parser = self._robots.get(site)
            if parser is None:
                parser = self._load_robots(site)
                self._robots[site] = parser
        return parser.can_fetch(self.config.user_agent, url)

    def _load_robots(self, site: str) -> urllib.robotparser.RobotFileParser:
        parser = urllib.robotparser.RobotFileParser(site + "/robots.txt")
        try:
            resp = self._get_with_retries(site + "/robots.txt", check_robots=False)
        except FetchError as e:
            if e.status in (401, 403):
                parser.disallow_all = True  # the site says keep out
            elif e.status is not None and 400 <= e.status < 500:
                parser.allow_all = True  # no robots.txt: everything is allowed
            else:
                # Unreachable robots.txt (RFC 9309 §2.3.1.4): assume complete disallow.
                parser.disallow_all = True
                self._robots_unreachable[site] = e
            return parser
        parser.parse(resp.content.decode("utf-8", errors="replace").splitlines())
        delay = parser.crawl_delay(self.config.user_agent)
        if delay:
            self.limiter.set_min_interval(host_of(site), float(delay))
        return parser

    # -- fetching ------------------------------------------------------------------------------
    def get(self, url: str, max_bytes: int | None = None) -> Response:
        """Fetch `url`; raises FetchError with a reason once retries are spent."""
        self._check_host(url, url)
        return self._get_with_retries(url, check_robots=True, max_bytes=max_bytes)

    def _get_with_retries(self, url: str, check_robots: bool, max_bytes: int | None = None) -> Response:
        if check_robots and not self.robots_allows(url):
            parts = urlsplit(url)
            unreachable = self._robots_unreachable.get(f"{parts.scheme}://{parts.netloc}")
            if unreachable is not None:
                raise FetchError(url, "robots_unreachable", f"robots.txt: {unreachable.reason}")
            raise FetchError(url, "robots_disallowed")
        attempt = 0
        while True:
            try:
                return self._get_once(url, max_bytes or self.config.max_bytes)
            except _Transient as t:
                if attempt >= self.config.retries:
                    raise FetchError(url, t.reason, t.detail, t.status) from None
                ceiling = min(self.config.backoff_max, self.config.backoff * 2**attempt)
                sleep = random.uniform(0, ceiling)
                if t.retry_after is not None:
                    sleep = max(sleep, min(t.retry_after, self.config.retry_after_max))
                time.sleep(sleep)
                attempt += 1

    def _get_once(self, url: str, max_bytes: int) -> Response:
        origin = url
        for _ in range(self.config.max_redirects + 1):
            self._check_host(url, origin)
            self.limiter.wait(host_of(url))
            self.requests_made += 1
            try:
                resp = self.session.get(url, stream=True, timeout=self.config.timeout, allow_redirects=False)
            except requests.Timeout as e:
                raise _Transient("timeout", str(e)) from None
            except requests.RequestException as e:
                raise _Transient("connection_error", type(e).__name__) from None
            with resp:
                if resp.is_redirect:
                    url = urljoin(url, resp.headers["Location"])
                    continue
                if resp.status_code in RETRYABLE_STATUS:
                    raise _Transient(
                        f"http_{resp.status_code}",
                        retry_after=parse_retry_after(resp.headers.get("Retry-After")),
                        status=resp.status_code,
                    )
                if resp.status_code != 200:
                    raise FetchError(url, f"http_{resp.status_code}", status=resp.status_code)
                body = self._read_body(resp, url, max_bytes)
                return Response(resp.url, resp.status_code, dict(resp.headers), body)
        raise FetchError(origin, "too_many_redirects")

    def _read_body(self, resp: requests.Response, url: str, max_bytes: int) -> bytes:
        declared = resp.headers.get("Content-Length")
        expected = int(declared) if declared and declared.isdigit() else None
        if expected is not None and expected > max_bytes:
            raise FetchError(url, "body_too_large", f"Content-Length {expected} > {max_bytes}")
        chunks, size = [], 0
        try:
            for chunk in resp.iter_content(1 << 16):
                size += len(chunk)
                if size > max_bytes:
                    raise FetchError(url, "body_too_large", f"more than {max_bytes} bytes")
                chunks.append(chunk)
        except requests.Timeout as e:
            raise _Transient("timeout", str(e)) from None
        except requests.RequestException as e:
            # urllib3 raises here when the peer resets or closes before Content-Length bytes.
            raise _Transient("incomplete_body", type(e).__name__) from None
        body = b"".join(chunks)
        encoded = resp.headers.get("Content-Encoding", "identity").lower() not in ("", "identity")
        if expected is not None and not encoded and len(body) != expected:
            raise _Transient("incomplete_body", f"got {len(body)} of {expected} bytes")
        return body
