"""Listing pages rendered by a real browser: selenium driving headless Debian Chromium.

Some pages only show their book list after scripts run, which `requests` cannot see. The browser
is opt-in (`--browser`), goes through the same robots.txt, host allow-list and rate limit as the
HTTP client, and never lets selenium download a driver: it uses the Debian binaries.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

from scraping.http import FetchError, PoliteClient, host_of

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"

# Flags that keep Chromium from phoning home (background services, component updates, DNS for
# Google hosts): this project runs offline and must not look like an unidentified crawler.
CHROMIUM_FLAGS = [
    "--headless=new",
    "--no-sandbox",  # we run as root in containers
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-default-apps",
    "--disable-extensions",
    "--no-first-run",
    "--disable-quic",
    "--metrics-recording-only",
    "--disable-features=OptimizationHints,MediaRouter,Translate",
]


class BrowserUnavailable(RuntimeError):
    pass


class HeadlessBrowser:
    """One headless Chromium session; `page_source(url)` returns the HTML after scripts ran."""

    def __init__(self, client: PoliteClient, timeout: float = 20.0, local_only: bool = False):
        for path in (CHROMIUM, CHROMEDRIVER):
            if not os.access(path, os.X_OK):
                raise BrowserUnavailable(
                    f"{path} not found: install Debian's chromium and chromium-driver (see README)"
                )
        # Imported here so `ptgpt scrape` without --browser never pays for selenium.
        from selenium import webdriver
        from selenium.webdriver.chrome.options import Options
        from selenium.webdriver.chrome.service import Service

        os.environ.setdefault("SE_OFFLINE", "true")
        os.environ.setdefault("SE_AVOID_STATS", "true")
        self.client, self.timeout = client, timeout
        self._profile = Path(tempfile.mkdtemp(prefix="ptgpt-chromium-"))
        opts = Options()
        for flag in CHROMIUM_FLAGS:
            opts.add_argument(flag)
        opts.add_argument(f"--user-data-dir={self._profile}")
        opts.add_argument(f"--user-agent={client.config.user_agent}")
        if local_only:
            # Resolve nothing but loopback: a test mirror must not leak a single DNS query.
            opts.add_argument("--host-resolver-rules=MAP * ~NOTFOUND , EXCLUDE 127.0.0.1, EXCLUDE localhost")
        opts.binary_location = CHROMIUM
        self.driver = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=opts)
        self.driver.set_page_load_timeout(timeout)

    def page_source(self, url: str, wait_css: str | None = None) -> str:
        """HTML of `url` once loaded and, if given, once `wait_css` matches (scripts have run)."""
        from selenium.common.exceptions import TimeoutException, WebDriverException
        from selenium.webdriver.common.by import By
        from selenium.webdriver.support import expected_conditions as ec
        from selenium.webdriver.support.ui import WebDriverWait

        if host_of(url) not in self.client.config.allowed_hosts:
            raise FetchError(url, "host_not_allowed")
        if not self.client.robots_allows(url):
            raise FetchError(url, "robots_disallowed")
        self.client.limiter.wait(host_of(url))
        try:
            self.driver.get(url)
            if wait_css:
                WebDriverWait(self.driver, self.timeout).until(
                    ec.presence_of_element_located((By.CSS_SELECTOR, wait_css))
                )
        except TimeoutException:
            pass  # the page may legitimately have no such element; parse what rendered
        except WebDriverException as e:
            raise FetchError(url, "browser_error", e.msg or type(e).__name__) from None
        final = self.driver.current_url
        if host_of(final) not in self.client.config.allowed_hosts:
            raise FetchError(url, "foreign_redirect", f"browser ended on {final}")
        return self.driver.page_source

    def close(self) -> None:
        try:
            self.driver.quit()
        finally:
            shutil.rmtree(self._profile, ignore_errors=True)

    def __enter__(self) -> HeadlessBrowser:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
