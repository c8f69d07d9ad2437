"""The selenium path with the real headless Chromium against the local mirror.

CI installs Debian's chromium and chromium-driver, so there (CI set) a missing browser is a failure,
not a skip: the browser path must really run.
"""

from __future__ import annotations

import os

import pytest

from scraping.browser import CHROMEDRIVER, CHROMIUM
from scraping.http import FetchConfig
from scraping.scrape import ScrapeConfig, scrape

pytestmark = pytest.mark.browser

if not (os.access(CHROMIUM, os.X_OK) and os.access(CHROMEDRIVER, os.X_OK)):
    if os.environ.get("CI"):
        raise RuntimeError(f"CI must run the browser tests: {CHROMIUM} / {CHROMEDRIVER} missing")
    pytest.skip("Debian chromium / chromium-driver not installed", allow_module_level=True)


def config(url, out, **kw):
    return ScrapeConfig(source=url, out=out, fetch=FetchConfig(rate=0, backoff=0.01), local_only=True, **kw)


@pytest.mark.slow
def test_browser_sees_script_rendered_listing(mirror_factory, tmp_path):
    m = mirror_factory(listing="script")
    pt_ids = sorted(b.id for b in m.site.books.values() if "pt" in b.language)

    # Plain requests cannot see a list that scripts build: nothing found.
    plain = scrape(config(m.url, tmp_path / "plain", discover="listing"))
    assert plain.found == 0

    # Chromium runs the script; the book pages then confirm metadata; texts download byte-exact.
    both = scrape(config(m.url, tmp_path / "browser", discover="both", browser=True))
    assert both.ok and both.found == len(pt_ids)
    assert both.only_in_catalog == [] and both.only_in_listing == []
    for book_id in pt_ids:
        assert (tmp_path / "browser" / f"{book_id}.txt").read_bytes() == m.site.books[book_id].data
    pages = {r.path for r in m.site.log}
    assert "/browse/languages/pt" in pages and all(f"/ebooks/{i}" in pages for i in pt_ids)
    assert {r.user_agent for r in m.site.log} == {FetchConfig().user_agent}


@pytest.mark.slow
def test_browser_respects_robots(mirror_factory, tmp_path):
    m = mirror_factory(listing="script", robots_txt="User-agent: *\nDisallow: /browse/\n")
    from scraping.http import FetchError

    with pytest.raises(FetchError, match="robots_disallowed"):
        scrape(config(m.url, tmp_path, discover="listing", browser=True))
    assert not [r for r in m.site.log if r.path.startswith("/browse/")]
