"""`ptgpt scrape` and `ptgpt mirror`."""

from __future__ import annotations

import contextlib
import sys
from pathlib import Path

import click


@click.command()
@click.option(
    "--source",
    default="https://www.gutenberg.org",
    show_default=True,
    help="Where books are discovered: a Gutenberg-layout site URL, or a folder of <id>.txt files.",
)
@click.option(
    "--out",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path("data/raw"),
    show_default=True,
    help="Raw store folder.",
)
@click.option(
    "--text-base",
    default=None,
    help="Where texts are downloaded from. Default: the source; for gutenberg.org a PGLAF mirror.",
)
@click.option(
    "--layout",
    type=click.Choice(["gutenberg", "mirror"]),
    default=None,
    help="URL layout of --text-base (mirrors use /1/2/3/1234/).",
)
@click.option(
    "--discover",
    type=click.Choice(["catalog", "listing", "both"]),
    default=None,
    help="Catalog CSV (one request), listing + book pages, or both to cross-check. "
    "Default: catalog, or listing with --browser.",
)
@click.option("--browser", is_flag=True, help="Render listing pages with headless Chromium (selenium).")
@click.option("--limit", type=click.IntRange(min=0), default=None, help="At most N books.")
@click.option("--ids", default=None, help="Only these ebook numbers (comma or space separated).")
@click.option(
    "--rate",
    type=click.FloatRange(min=0),
    default=1.0,
    show_default=True,
    help="Requests per second per host; 0 turns the limit off (mirrors you own).",
)
@click.option(
    "--retries", type=click.IntRange(min=0), default=5, show_default=True, help="Retries per request."
)
@click.option(
    "--timeout", type=click.FloatRange(min=0.1), default=30.0, show_default=True, help="Seconds per request."
)
@click.option("--ignore-robots", is_flag=True, help="Do not read robots.txt (only for your own mirror).")
@click.option("--quiet", is_flag=True, help="No progress bar.")
def scrape(
    source: str,
    out: Path,
    text_base: str | None,
    layout: str | None,
    discover: str | None,
    browser: bool,
    limit: int | None,
    ids: str | None,
    rate: float,
    retries: int,
    timeout: float,
    ignore_robots: bool,
    quiet: bool,
) -> None:
    """Find Portuguese books and download their plain texts into a raw store.

    Exits 1 when any book failed (they are listed); rerunning skips books already stored.
    """
    from scraping.http import FetchConfig, FetchError
    from scraping.scrape import ScrapeConfig, scrape

    try:
        id_list = [int(x) for x in ids.replace(",", " ").split()] if ids else None
    except ValueError:
        raise click.BadParameter("ids must be ebook numbers", param_hint="--ids") from None
    config = ScrapeConfig(
        source=source,
        out=out,
        text_base=text_base,
        layout=layout,
        discover=discover or ("listing" if browser else "catalog"),
        browser=browser,
        ids=id_list,
        limit=limit,
        fetch=FetchConfig(rate=rate, retries=retries, timeout=timeout, respect_robots=not ignore_robots),
    )
    try:
        summary = scrape(config, progress=not quiet)
    except FetchError as e:
        raise click.ClickException(f"discovery failed: {e}") from None
    except ValueError as e:
        raise click.ClickException(str(e)) from None
    click.echo(
        f"found {summary.found}, downloaded {summary.downloaded} ({summary.bytes / 1e6:.1f} MB), "
        f"skipped {summary.skipped} (already stored), failed {len(summary.failed)} "
        f"in {summary.seconds:.1f} s -> {out}"
    )
    if summary.catalog_malformed_rows:
        click.echo(f"catalog: {summary.catalog_malformed_rows} malformed row(s) ignored (truncated feed?)")
    if config.discover == "both":
        click.echo(
            f"cross-check: {len(summary.only_in_catalog)} only in catalog {summary.only_in_catalog[:20]}, "
            f"{len(summary.only_in_listing)} only in listing {summary.only_in_listing[:20]}"
        )
    for book_id, error in summary.failed:
        click.echo(f"FAILED {book_id}: {error}", err=True)
    sys.exit(0 if summary.ok else 1)


@click.command()
@click.option("--port", type=int, default=8765, show_default=True, help="Port on 127.0.0.1.")
@click.option(
    "--books",
    "books_dir",
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    default=None,
    help="Serve these <id>.txt files instead of the project's sample books.",
)
@click.option("--extra", type=click.IntRange(min=0), default=0, help="Generated sample books to add.")
def mirror(port: int, books_dir: Path | None, extra: int) -> None:
    """Serve a Gutenberg-layout mirror on 127.0.0.1 (Ctrl-C to stop)."""
    from fakegutenberg.books import sample_books
    from fakegutenberg.mirror import GutenbergMirror, mirror_books_from_folder, mirror_books_from_samples

    books = (
        mirror_books_from_folder(books_dir)
        if books_dir
        else mirror_books_from_samples(sample_books(extra=extra))
    )
    with GutenbergMirror(books, port=port) as m:
        click.echo(f"serving {len(books)} books at {m.url} (Ctrl-C to stop)")
        with contextlib.suppress(KeyboardInterrupt):
            m.serve_forever()
