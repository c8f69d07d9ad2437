"""Stage 7: split by whole book, from the book id alone."""

from __future__ import annotations

from collections import Counter

import pytest

from corpus.split import SPLITS, SplitConfig, assign_split, split_books, split_position


def test_split_depends_on_the_id_only() -> None:
    ids = range(1, 2001)
    first = [assign_split(i) for i in ids]
    assert first == [assign_split(i) for i in ids]
    assert set(first) == set(SPLITS)
    # Another salt draws another split, still deterministic.
    other = [assign_split(i, SplitConfig(salt="another")) for i in ids]
    assert other != first and other == [assign_split(i, SplitConfig(salt="another")) for i in ids]


def test_fractions_are_respected_on_many_books() -> None:
    config = SplitConfig(validation_fraction=0.1, test_fraction=0.2)
    counts = Counter(assign_split(i, config) for i in range(20000))
    assert abs(counts["validation"] / 20000 - 0.1) < 0.01
    assert abs(counts["test"] / 20000 - 0.2) < 0.01
    positions = [split_position(i) for i in range(1000)]
    assert all(0 <= p < 1 for p in positions)


@pytest.mark.parametrize("n", [3, 4, 5, 7, 10, 25])
def test_every_split_non_empty_from_three_books(n: int) -> None:
    ids = [1000 + 17 * i for i in range(n)]
    splits = split_books(ids)
    assert all(splits[s] for s in SPLITS), splits
    assert sorted(b for s in SPLITS for b in splits[s]) == sorted(ids)  # each book exactly once
    assert splits == split_books(reversed(ids))  # order of the input does not matter


def test_fewer_than_three_books_go_where_their_hash_says() -> None:
    for ids in ([], [5], [5, 6]):
        splits = split_books(ids)
        assert {b: s for s in SPLITS for b in splits[s]} == {b: assign_split(b) for b in ids}


def test_adding_books_does_not_move_others() -> None:
    before = split_books(range(1, 401))
    after = split_books(range(1, 801))
    where_after = {b: s for s in SPLITS for b in after[s]}
    assert all(where_after[b] == s for s in SPLITS for b in before[s])


def test_bad_fractions_are_rejected() -> None:
    with pytest.raises(ValueError):
        SplitConfig(validation_fraction=0.6, test_fraction=0.4)
    with pytest.raises(ValueError):
        SplitConfig(validation_fraction=-0.1)
