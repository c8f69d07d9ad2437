"""Shared fixtures: a Gutenberg-layout mirror on 127.0.0.1 serving the project's sample books."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

SHARED_BOOKS = Path(__file__).resolve().parents[2] / "shared" / "gutenberg-pt"
SHARED_BOOKS = Path(os.environ.get("PTGPT_SHARED_BOOKS", SHARED_BOOKS))


@pytest.fixture(autouse=True)
def _offline_env(monkeypatch: pytest.MonkeyPatch, tmp_path_factory: pytest.TempPathFactory) -> None:
    """No test may reach a hub or phone home."""
    for k, v in {
        "HF_HUB_OFFLINE": "1",
        "HF_DATASETS_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "SE_OFFLINE": "true",
        "SE_AVOID_STATS": "true",
        "DO_NOT_TRACK": "1",
        "MPLBACKEND": "Agg",
    }.items():
        monkeypatch.setenv(k, v)
    if "HF_HOME" not in os.environ:
        monkeypatch.setenv("HF_HOME", str(tmp_path_factory.getbasetemp() / "hf"))


@pytest.fixture(scope="session")
def shared_books() -> Path:
    """../shared/gutenberg-pt (real Gutenberg files); tests using it skip where it is absent."""
    books = SHARED_BOOKS / "books"
    if not books.is_dir():
        pytest.skip(f"real books not found at {books}")
    return SHARED_BOOKS


@pytest.fixture(scope="session")
def samples():
    from fakegutenberg.books import sample_books

    return sample_books()


@pytest.fixture
def mirror_factory(samples) -> Iterator[Callable[..., object]]:
    """Start GutenbergMirror(s) over the sample books (or given books); all stopped at teardown."""
    from fakegutenberg.books import sample_catalog_csv
    from fakegutenberg.mirror import GutenbergMirror, mirror_books_from_samples

    started: list[GutenbergMirror] = []

    def make(books=None, catalog_csv: str | None = None, **kw) -> GutenbergMirror:
        if books is None:
            books = mirror_books_from_samples(samples)
            catalog_csv = catalog_csv if catalog_csv is not None else sample_catalog_csv(samples)
        m = GutenbergMirror(books, catalog_csv, **kw).start()
        started.append(m)
        return m

    yield make
    for m in started:
        m.stop()
