"""Stage 7: train / validation / test split, by whole book.

A book's split is a pure function of its Gutenberg id (a salted sha256 mapped to [0, 1)), so it
does not move when books are added or removed, the same book always lands in the same split across
builds and machines, and no book is ever cut. Editions of one work are deduplicated before this
stage, so they cannot leak across splits.

Tiny corpora are the one exception: with at least three books every split must be non-empty, so
when hashing leaves a split empty, the book whose hash lies closest to that split's range is moved
into it. That only happens for a handful of books, and is reported in the manifest.

The documents of extra sources are split by the same function, keyed `SOURCE:DOC_ID` instead of the
ebook number: a document never moves between builds either.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from dataclasses import dataclass

SPLITS = ("train", "validation", "test")


@dataclass(frozen=True)
class SplitConfig:
    validation_fraction: float = 0.05
    test_fraction: float = 0.05
    salt: str = "ptgpt-split-v1"  # change it to draw a different (still deterministic) split

    def __post_init__(self) -> None:
        if self.validation_fraction < 0 or self.test_fraction < 0:
            raise ValueError("split fractions must be non-negative")
        if self.validation_fraction + self.test_fraction >= 1:
            raise ValueError("validation_fraction + test_fraction must leave room for train")


def split_position(key: int | str, salt: str = SplitConfig.salt) -> float:
    """Where a book (its ebook number) or a document (`SOURCE:DOC_ID`) falls in [0, 1): the first 8
    bytes of sha256(salt:key), uniform."""
    key = int(key) if not isinstance(key, str) else key
    digest = hashlib.sha256(f"{salt}:{key}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def _ranges(config: SplitConfig) -> dict[str, tuple[float, float]]:
    v, t = config.validation_fraction, config.test_fraction
    return {"validation": (0.0, v), "test": (v, v + t), "train": (v + t, 1.0)}


def assign_split(key: int | str, config: SplitConfig = SplitConfig()) -> str:
    """The split of one book or document, from its key alone (see `split_position`)."""
    x = split_position(key, config.salt)
    for name, (lo, hi) in _ranges(config).items():
        if lo <= x < hi:
            return name
    return "train"


def split_books(book_ids: Iterable[int], config: SplitConfig = SplitConfig()) -> dict[str, list[int]]:
    """Sorted book ids per split; every split is non-empty whenever there are at least 3 books."""
    ids = sorted(set(int(b) for b in book_ids))
    splits: dict[str, list[int]] = {name: [] for name in SPLITS}
    for b in ids:
        splits[assign_split(b, config)].append(b)
    if len(ids) >= 3:
        ranges = _ranges(config)
        for name in SPLITS:
            if splits[name]:
                continue
            lo, hi = ranges[name]
            centre = (lo + hi) / 2
            # Take from a split that can spare a book, the book nearest to this split's range.
            donors = [b for s in SPLITS if len(splits[s]) > 1 for b in splits[s]]
            moved = min(donors, key=lambda b: (abs(split_position(b, config.salt) - centre), b))
            for s in SPLITS:
                if moved in splits[s]:
                    splits[s].remove(moved)
            splits[name].append(moved)
    return {name: sorted(v) for name, v in splits.items()}
