"""`ptgpt demo`: the main job, offline, on the project's own sample books."""

from __future__ import annotations

import sys
from pathlib import Path

import click


@click.command()
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), default=Path("data/demo"),
              show_default=True)
@click.option("--extra-books", type=click.IntRange(min=0), default=24, show_default=True,
              help="Generated sample books added to the hand-written ones.")
def demo(out: Path, extra_books: int) -> None:
    """Serve a local Gutenberg-layout mirror of sample books and scrape it into OUT/raw.

    Rerunning is safe: books already stored and verified are skipped.
    """
    from scraping.http import FetchConfig
    from scraping.mirror import GutenbergMirror, mirror_books_from_samples
    from scraping.sample_books import sample_books, sample_catalog_csv
    from scraping.scrape import ScrapeConfig, scrape

    samples = sample_books(extra=extra_books)
    with GutenbergMirror(mirror_books_from_samples(samples), sample_catalog_csv(samples)) as mirror:
        click.echo(f"local Gutenberg mirror at {mirror.url} with {len(samples)} sample books")
        # Our own mirror: no rate limit needed; everything else (robots, retries, checks) as for real.
        summary = scrape(ScrapeConfig(source=mirror.url, out=out / "raw", fetch=FetchConfig(rate=0),
                                      local_only=True), progress=True)
    click.echo(f"scrape: found {summary.found}, downloaded {summary.downloaded}, skipped {summary.skipped}, "
               f"failed {len(summary.failed)} -> {out / 'raw'}")
    for book_id, error in summary.failed:
        click.echo(f"FAILED {book_id}: {error}", err=True)
    sys.exit(0 if summary.ok else 1)
