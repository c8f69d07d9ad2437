"""training/data.py: packing, shuffling, sharding over ranks, exact resume and evaluation windows."""

from __future__ import annotations

import json
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from corpus_factory import (
    BOS,
    EOS,
    PAD,
    SEPARATOR,
    paragraph_text,
    random_books,
    reference_stream,
    reference_unit_streams,
    reference_windows,
    write_corpus,
)
from hypothesis import given, settings
from hypothesis import strategies as st
from safetensors.numpy import load as st_load
from safetensors.numpy import save as st_save

from training.data import (
    IGNORE_INDEX,
    CorpusError,
    CorpusInfo,
    DevicePrefetcher,
    LoaderConfig,
    TokenWindowLoader,
    check_tokenizer,
    iter_eval_windows,
    pack_paragraphs,
)

ROWS_PER_GROUP, BOOKS_PER_SHARD = 4, 3


@pytest.fixture
def corpus(tmp_path: Path) -> tuple[Path, list]:
    books = random_books(0, 11)  # 4 shards, 20-odd row groups of 4 rows; books span row groups
    root = write_corpus(
        tmp_path / "corpus",
        {"train": books, "validation": random_books(1, 4, first_id=900)},
        rows_per_group=ROWS_PER_GROUP,
        books_per_shard=BOOKS_PER_SHARD,
    )
    return root, books


def make_loader(root: Path, **kw) -> TokenWindowLoader:
    kw = {"block_size": 8, "batch_size": 1, "shuffle_buffer": 0, **kw}
    return TokenWindowLoader(root, LoaderConfig(**kw))


def windows_of(x: torch.Tensor, y: torch.Tensor) -> list[list[int]]:
    return [xr + [yr[-1]] for xr, yr in zip(x.tolist(), y.tolist(), strict=True)]


def windows_by_epoch(loader: TokenWindowLoader, n_epochs: int) -> list[list[list[int]]]:
    """The windows the loader yields in each of its first n_epochs (batch_size 1: one window a call)."""
    assert loader.config.batch_size == 1
    out = [[] for _ in range(n_epochs)]
    while True:
        x, y = next(loader)
        if loader.epoch == n_epochs:
            return out
        out[loader.epoch] += windows_of(x, y)


def unit_streams_in_order(loader: TokenWindowLoader, books: list, epoch: int) -> list[int]:
    streams = reference_unit_streams(books, ROWS_PER_GROUP, BOOKS_PER_SHARD)
    assert len(streams) == len(loader.units)
    return [t for u in loader.units_for_epoch(epoch) for t in streams[loader.units.index(u)]]


# --- packing


def test_pack_paragraphs_puts_bos_separator_eos_at_book_and_paragraph_boundaries():
    book_ids = np.array([7, 7, 9, 9, 9, 11], np.int32)
    paragraphs = [[10, 11], [12], [13], [14, 15], [16], [17]]
    lengths = np.array([len(p) for p in paragraphs])
    tokens = np.array([t for p in paragraphs for t in p], np.int32)
    kw = {"bos_id": BOS, "eos_id": EOS, "separator_ids": SEPARATOR}
    S = SEPARATOR

    # Book 7 started in an earlier row group and book 11 goes on in the next one.
    out, _ = pack_paragraphs(book_ids, lengths, tokens, starts_book=False, ends_book=False, **kw)
    assert out.tolist() == [*S, 10, 11, *S, 12, EOS, BOS, 13, *S, 14, 15, *S, 16, EOS, BOS, 17]

    out, nbytes = pack_paragraphs(
        book_ids,
        lengths,
        tokens,
        starts_book=True,
        ends_book=True,
        n_bytes=np.array([6, 3, 3, 4, 5, 1]),
        **kw,
    )
    assert out.tolist() == [BOS, 10, 11, *S, 12, EOS, BOS, 13, *S, 14, 15, *S, 16, EOS, BOS, 17, EOS]
    assert nbytes.tolist() == [0, 3, 3, 0, 0, 3, 0, 0, 3, 0, 0, 2, 2, 0, 0, 5, 0, 0, 1, 0]


@settings(max_examples=150, deadline=None)
@given(
    books=st.lists(st.integers(1, 4), min_size=1, max_size=8),  # paragraphs per book
    lengths=st.lists(st.integers(0, 5), min_size=32, max_size=32),
    separator=st.lists(st.integers(4, 7), max_size=3),
    starts_book=st.booleans(),
    ends_book=st.booleans(),
)
def test_pack_paragraphs_matches_a_row_by_row_packer(books, lengths, separator, starts_book, ends_book):
    book_ids = np.repeat(np.arange(len(books)), books).astype(np.int32)
    lengths = np.array(lengths[: len(book_ids)])
    tokens = np.arange(100, 100 + lengths.sum(), dtype=np.int32)
    expected, at = [], 0
    for i, (book, n) in enumerate(zip(book_ids.tolist(), lengths.tolist(), strict=True)):
        opens = starts_book if i == 0 else book != book_ids[i - 1]
        closes = ends_book if i == len(book_ids) - 1 else book != book_ids[i + 1]
        expected += ([BOS] if opens else separator) + tokens[at : at + n].tolist() + ([EOS] if closes else [])
        at += n
    out, nbytes = pack_paragraphs(
        book_ids,
        lengths,
        tokens,
        starts_book=starts_book,
        ends_book=ends_book,
        bos_id=BOS,
        eos_id=EOS,
        separator_ids=separator,
        n_bytes=lengths * 3,
    )
    assert out.tolist() == expected
    assert nbytes.sum() == pytest.approx(3 * lengths.sum()) and (nbytes[out < 100] == 0).all()


def test_batches_are_int64_windows_shifted_by_one(corpus):
    root, _ = corpus
    x, y = next(make_loader(root, batch_size=3, shuffle_buffer=4))
    assert x.shape == y.shape == (3, 8) and x.dtype == y.dtype == torch.int64
    assert torch.equal(x[:, 1:], y[:, :-1])
    assert x.data_ptr() != y.data_ptr()


def test_unshuffled_stream_is_the_reference_packing_every_epoch(corpus):
    root, books = corpus
    expected = reference_windows(reference_stream(books), 8)
    # The tail is dropped, and the next epoch starts clean.
    assert windows_by_epoch(make_loader(root, shuffle=False), 2) == [expected, expected]


def test_shuffled_epoch_reads_every_row_group_once_in_a_seeded_order(corpus):
    root, books = corpus
    ref = reference_stream(books)
    loader = make_loader(root, seed=3)
    orders = [loader.units_for_epoch(e) for e in range(3)]
    for epoch, got in enumerate(windows_by_epoch(loader, 2)):
        assert got == reference_windows(unit_streams_in_order(loader, books, epoch), 8)
        # Order-independent: every token of the split is a target once, but for the dropped tail.
        targets = Counter(t for w in got for t in w[1:])
        assert not targets - Counter(ref) and 0 < len(ref) - sum(targets.values()) <= 8
    assert sorted(orders[0]) == sorted(orders[1]) == loader.units and orders[0] != orders[1]
    assert make_loader(root, seed=3).units_for_epoch(1) == orders[1]
    assert make_loader(root, seed=4).units_for_epoch(1) != orders[1]


def test_shuffle_buffer_permutes_the_windows_of_each_epoch(corpus):
    root, _ = corpus
    plain, mixed = (
        windows_by_epoch(make_loader(root), 2),
        windows_by_epoch(make_loader(root, shuffle_buffer=7), 2),
    )
    for a, b in zip(plain, mixed, strict=True):
        assert sorted(a) == sorted(b) and a != b


@pytest.mark.parametrize("world_size", [2, 3])
def test_ranks_read_disjoint_row_groups_that_cover_the_split(corpus, world_size):
    root, books = corpus
    loaders = [make_loader(root, rank=r, world_size=world_size) for r in range(world_size)]
    for epoch in range(2):
        shares = [set(lo.units_for_epoch(epoch)) for lo in loaders]
        assert sum(len(s) for s in shares) == len(set().union(*shares)) == len(loaders[0].units)
    for r, lo in enumerate(loaders):
        plain = windows_by_epoch(lo, 2)
        mixed = windows_by_epoch(make_loader(root, rank=r, world_size=world_size, shuffle_buffer=5), 2)
        for epoch in range(2):
            assert plain[epoch] == reference_windows(unit_streams_in_order(lo, books, epoch), 8)
            assert sorted(mixed[epoch]) == sorted(plain[epoch])


def test_ranks_with_unequal_shares_never_run_dry(corpus):
    root, _ = corpus
    loaders = [make_loader(root, rank=r, world_size=3, batch_size=4) for r in range(3)]
    counts = {len(lo.units_for_epoch(0)) for lo in loaders}
    assert len(counts) == 2  # the row groups do not divide evenly over 3 ranks
    for _ in range(150):  # several epochs of the largest share: every rank answers every call
        for lo in loaders:
            x, _ = next(lo)
            assert x.shape == (4, 8)
    assert all(lo.epoch >= 2 for lo in loaders)


# --- exact resume


def roundtrip(state: dict) -> dict:
    """Through what a checkpoint holds: JSON for the scalars, safetensors for the arrays."""
    arrays = {k: v for k, v in state.items() if isinstance(v, np.ndarray)}
    meta = json.loads(json.dumps({k: v for k, v in state.items() if k not in arrays}))
    return {**meta, **st_load(st_save(arrays))}


@pytest.mark.parametrize("where", ["mid-epoch", "before-epoch-end", "in-next-epoch"])
@pytest.mark.parametrize("through_checkpoint", [False, True])
def test_resume_yields_exactly_the_uninterrupted_batches(corpus, where, through_checkpoint):
    root, _ = corpus
    kw = {"batch_size": 3, "shuffle_buffer": 6, "rank": 1, "world_size": 2, "seed": 11}
    probe = make_loader(root, **kw)
    epoch_len = next(
        i for i in range(1, 1000) if next(probe) and probe.epoch == 1
    )  # batches to enter epoch 1
    n = {"mid-epoch": epoch_len // 2, "before-epoch-end": epoch_len - 2, "in-next-epoch": epoch_len + 3}[
        where
    ]
    m = epoch_len + 5  # long enough to cross into the next epoch from every starting point

    straight = make_loader(root, **kw)
    expected = [next(straight) for _ in range(n + m)][n:]
    first = make_loader(root, **kw)
    for _ in range(n):
        next(first)
    state = first.state_dict()
    resumed = make_loader(root, **kw)
    resumed.load_state_dict(roundtrip(state) if through_checkpoint else state)
    got = [next(resumed) for _ in range(m)]
    assert all(
        torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) for a, b in zip(got, expected, strict=True)
    )
    assert resumed.epoch == straight.epoch


def test_resume_with_another_batch_size_continues_the_same_windows(corpus):
    root, _ = corpus
    straight = make_loader(root, batch_size=2, shuffle_buffer=5)
    expected = [w for _ in range(12) for w in windows_of(*next(straight))][8:]
    first = make_loader(root, batch_size=2, shuffle_buffer=5)
    for _ in range(4):
        next(first)
    resumed = make_loader(root, batch_size=4, shuffle_buffer=5)
    resumed.load_state_dict(first.state_dict())
    assert [w for _ in range(4) for w in windows_of(*next(resumed))] == expected


def test_resume_refuses_a_state_from_another_setup(corpus):
    root, _ = corpus
    state = make_loader(root, shuffle_buffer=4).state_dict()
    with pytest.raises(ValueError, match="block_size=8/16"):
        make_loader(root, block_size=16, shuffle_buffer=4).load_state_dict(state)
    with pytest.raises(ValueError, match="world_size=1/2"):
        make_loader(root, shuffle_buffer=4, world_size=2).load_state_dict(state)
    manifest = json.loads((root / "manifest.json").read_text())
    manifest["splits"]["train"]["shards"][0]["sha256"] = "0" * 64  # the same layout, other data
    (root / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ValueError, match="corpus="):
        make_loader(root, shuffle_buffer=4).load_state_dict(state)


# --- bad corpora


def test_missing_manifest_and_wrong_schema_version_are_clear_errors(tmp_path, corpus):
    with pytest.raises(CorpusError, match="manifest.json is written last"):
        CorpusInfo.from_dir(tmp_path / "nowhere")
    root = write_corpus(tmp_path / "v2", {"train": random_books(0, 2)}, schema_version=2)
    with pytest.raises(CorpusError, match="schema_version 2; this trainer reads schema_version 1"):
        make_loader(root)


def test_tokenizer_mismatch_is_a_clear_error(corpus):
    root, _ = corpus
    info = CorpusInfo.from_dir(root)
    check_tokenizer(root, info.tokenizer_sha256)
    TokenWindowLoader(root, LoaderConfig(block_size=8, batch_size=1), tokenizer_sha256=info.tokenizer_sha256)
    with pytest.raises(CorpusError, match="tokenizer mismatch.*model is configured for f{64}"):
        TokenWindowLoader(root, LoaderConfig(block_size=8, batch_size=1), tokenizer_sha256="f" * 64)
    (root / "tokenizer.model").write_bytes(b"another model")
    with pytest.raises(CorpusError, match="does not match the sha256 in its manifest"):
        check_tokenizer(root, info.tokenizer_sha256)


def test_bad_token_ids_missing_columns_and_missing_shards_are_errors(tmp_path):
    root = write_corpus(tmp_path / "c", {"train": random_books(0, 3, vocab_size=80)}, vocab_size=64)
    with pytest.raises(CorpusError, match=r"token ids outside \[0, 64\)"):
        next(make_loader(root))
    shard = root / "train" / "part-00000.parquet"
    pq.write_table(pq.read_table(shard).drop_columns(["tokens"]), shard, row_group_size=ROWS_PER_GROUP)
    with pytest.raises(CorpusError, match="part-00000.parquet: column 'tokens' is missing, the loader needs"):
        next(make_loader(root))
    with pytest.raises(CorpusError, match="has 1 row groups but the manifest says"):
        pq.write_table(pq.read_table(shard), shard)
        make_loader(root)
    (root / "train" / "part-00000.parquet").unlink()
    with pytest.raises(CorpusError, match="part-00000.parquet listed in the manifest is missing"):
        make_loader(root)


# --- memory


def test_loader_reads_one_row_group_at_a_time_and_only_what_it_needs(tmp_path, monkeypatch):
    books = random_books(5, 40, max_paragraphs=6)
    root = write_corpus(tmp_path / "c", {"train": books}, rows_per_group=2, books_per_shard=10)
    n_units = len(CorpusInfo.from_dir(root).split_units("train"))
    assert n_units > 40
    calls = []
    real = pq.ParquetFile.read_row_group

    def spy(self, i, columns=None, **kw):
        assert isinstance(i, int) and columns is not None
        calls.append((i, tuple(columns)))
        return real(self, i, columns=columns, **kw)

    monkeypatch.setattr(pq.ParquetFile, "read_row_group", spy)
    for whole in ("read", "read_row_groups", "iter_batches"):
        monkeypatch.setattr(pq.ParquetFile, whole, lambda *a, **k: pytest.fail("read more than a row group"))
    monkeypatch.setattr(pq, "read_table", lambda *a, **k: pytest.fail("read a whole table"))

    loader = make_loader(root, batch_size=2, shuffle_buffer=4)
    next(loader)
    token_reads = [c for c in calls if "tokens" in c[1]]
    assert 1 <= len(token_reads) <= 6 < n_units  # only enough row groups to fill the buffer and a batch
    assert {c[1] for c in calls} <= {("book_id", "tokens"), ("book_id",)}  # never title/text

    largest = max(len(s) for s in reference_unit_streams(books, 2, 10))
    while loader.epoch == 0:
        next(loader)
        assert loader._unit_windows is None or loader._unit_windows.size <= 9 * (largest + 8)
    # Each row group once an epoch, plus the few of epoch 1 that refilled the buffer.
    assert n_units <= loader.reader.row_groups_read <= n_units + 6


# --- evaluation windows


@pytest.mark.parametrize("world_size", [1, 3])
def test_eval_windows_cover_every_token_once_with_its_bytes(corpus, world_size):
    root, _ = corpus
    val = random_books(1, 4, first_id=900)
    streams = reference_unit_streams(val, ROWS_PER_GROUP, BOOKS_PER_SHARD)
    units = CorpusInfo.from_dir(root).split_units("validation")
    total_bytes = 0.0
    for rank in range(world_size):
        targets, inputs = [], []
        for x, y, n_bytes in iter_eval_windows(root, "validation", 8, 3, rank=rank, world_size=world_size):
            assert x.shape == y.shape and x.shape[1] == 8 and 1 <= len(x) <= 3
            pad = y == IGNORE_INDEX
            assert (x[:, 1:][pad[:, :-1]] == PAD).all()
            targets += y[~pad].tolist()
            inputs += x[~pad].tolist()
            total_bytes += n_bytes
        mine = [t for u in units[rank::world_size] for t in streams[units.index(u)]]
        assert targets == mine[1:] and inputs == mine[:-1]
    assert total_bytes == pytest.approx(sum(len(paragraph_text(p).encode()) for _, ps in val for p in ps))
    assert total_bytes == pytest.approx(CorpusInfo.from_dir(root).split("validation")["bytes"])


# --- prefetch


def test_prefetcher_yields_the_loader_batches_and_a_resumable_state(corpus):
    root, _ = corpus
    kw = {"batch_size": 2, "shuffle_buffer": 5}
    straight = make_loader(root, **kw)
    expected = [next(straight) for _ in range(10)]
    prefetcher = DevicePrefetcher(make_loader(root, **kw), "cpu", depth=3)
    try:
        got = [next(prefetcher) for _ in range(6)]
        deadline = time.monotonic() + 10
        while len(prefetcher._ahead) < 3 and time.monotonic() < deadline:
            time.sleep(0.01)  # let the thread fill its queue of 3 batches
        state = prefetcher.state_dict()  # after 6 batches, though the thread has read further
    finally:
        prefetcher.close()
    assert len(state["pending"]) > 0  # the batches read ahead travel in the state
    assert all(
        torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) for a, b in zip(got, expected, strict=False)
    )
    resumed = make_loader(root, **kw)
    resumed.load_state_dict(roundtrip(state))
    assert all(torch.equal(next(resumed)[0], e[0]) for e in expected[6:])


def test_prefetcher_raises_the_loader_error_in_the_consumer(corpus, monkeypatch):
    root, _ = corpus
    loader = make_loader(root)
    monkeypatch.setattr(loader, "_next_windows", lambda n: (_ for _ in ()).throw(OSError("disk gone")))
    prefetcher = DevicePrefetcher(loader)
    with pytest.raises(RuntimeError, match="prefetch thread") as e:
        next(prefetcher)
    assert isinstance(e.value.__cause__, OSError)
