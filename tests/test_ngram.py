"""The Kneser-Ney baseline (training/ngram.py): exact values worked out by hand, normalisation over the
whole vocabulary for any context, the vectorised scorer against the full distribution, the model's
bits-per-byte accounting, and the cache next to the corpus."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from corpus.build import CorpusConfig, build_corpus
from corpus.split import SplitConfig
from corpus.tokenizer import TokenizerConfig
from training import ngram as ng
from training.data import iter_eval_windows

# 0 1 2 0 1 3 0 1 2 over a vocabulary of 5 (token 4 never occurs)
HAND = np.array([0, 1, 2, 0, 1, 3, 0, 1, 2])


def test_bigram_values_worked_out_by_hand() -> None:
    """Discount 0.75. Bigrams: 01 x3, 12 x2, 20, 13, 30. Continuation counts of the unigrams (distinct
    bigrams ending in w): 0: 2, 1: 1, 2: 1, 3: 1, 4: 0; total 5, so gamma = 0.75 * 4 / 5 and
    p1(w) = (max(N(.w) - 0.75, 0) + 3 * 1/5) / 5: p1(0) = 0.37, p1(1..3) = 0.17, p1(4) = 0.12.
    After 1 (count 3: 12 x2, 13 x1, gamma 1.5 / 3): p(2|1) = (1.25 + 1.5 * 0.17) / 3."""
    model = ng.kneser_ney(ng.count_ngrams(HAND, 5, 2), 2, discount=0.75)
    np.testing.assert_allclose(model.distribution([4]), [0.37, 0.17, 0.17, 0.17, 0.12], rtol=1e-6)
    expected = np.array([1.5 * 0.37, 1.5 * 0.17, 1.25 + 1.5 * 0.17, 0.25 + 1.5 * 0.17, 1.5 * 0.12]) / 3
    np.testing.assert_allclose(model.distribution([1]), expected, rtol=1e-6)
    assert model.distribution([1])[2] == pytest.approx(0.501666667, rel=1e-6)


def test_trigram_values_worked_out_by_hand() -> None:
    """Trigrams 012 x2, 120, 201, 013, 130. After 0 1 (count 3, gamma 1.5 / 3) the bigram level uses
    continuation counts: every bigram after 1 (12, 13) has one distinct left neighbour, so
    p2(2|1) = (1 - 0.75 + 1.5 * 0.17) / 2 = 0.2525 and p3(2|0 1) = (2 - 0.75 + 1.5 * 0.2525) / 3."""
    model = ng.kneser_ney(ng.count_ngrams(HAND, 5, 3), 3, discount=0.75)
    assert model.distribution([0, 1])[2] == pytest.approx((1.25 + 1.5 * 0.2525) / 3, rel=1e-6)
    assert model.distribution([4, 1])[2] == pytest.approx(0.2525, rel=1e-6)  # 4 1 unseen: the bigram level
    # the scorer gives the same: p(0) with no context, p(1|0) from the trigram model's bigram level, p(2|0 1)
    p = np.exp(model.log_probs(np.array([0, 1, 2])))
    assert p[2] == pytest.approx((1.25 + 1.5 * 0.2525) / 3, rel=1e-6)
    assert p[0] == pytest.approx(0.37, rel=1e-6)


def test_modified_discounts_follow_chen_and_goodman() -> None:
    counts = np.array([1] * 10 + [2] * 5 + [3] * 3 + [4] * 2 + [9])
    y = 10 / (10 + 2 * 5)
    expected = [1 - 2 * y * 5 / 10, 2 - 3 * y * 3 / 5, 3 - 4 * y * 2 / 3]
    np.testing.assert_allclose(ng.estimate_discounts(counts), expected)


def zipf_tokens(n: int, vocab: int, seed: int = 0) -> np.ndarray:
    """A stream with structure: a Zipf draw, and every 7 tokens one that repeats the token 2 back."""
    rng = np.random.default_rng(seed)
    tokens = np.minimum(rng.zipf(1.3, n), vocab - 2) - 1  # the last id of the vocabulary never occurs
    tokens[7::7] = tokens[5:-2:7][: len(tokens[7::7])]
    return tokens


@pytest.mark.parametrize("order", [2, 3, 4, 5])
@pytest.mark.parametrize("discount", [None, 0.75])
def test_every_context_gives_a_distribution_over_the_whole_vocabulary(order: int, discount) -> None:
    vocab = 60
    tokens = zipf_tokens(20_000, vocab)
    model = ng.kneser_ney(ng.count_ngrams(tokens, vocab, order), order, discount)
    rng = np.random.default_rng(1)
    seen = [list(tokens[i - order + 1 : i]) for i in rng.integers(order, len(tokens), 20)]
    unseen = [
        [vocab - 1] * (order - 1),
        [vocab - 1, 0, 1, 2][: order - 1],
        list(rng.integers(0, vocab, order - 1)),
    ]
    for context in seen + unseen + [[]]:
        p = model.distribution(context)
        assert p.shape == (vocab,) and p.min() > 0, context
        assert p.sum() == pytest.approx(1.0, abs=1e-9), context


def test_vectorised_scores_match_the_full_distribution() -> None:
    vocab, order = 40, 4
    train, held_out = zipf_tokens(30_000, vocab, seed=2), zipf_tokens(400, vocab, seed=3)
    model = ng.kneser_ney(ng.count_ngrams(train, vocab, order), order)
    context_len = np.random.default_rng(4).integers(0, 6, len(held_out))
    logp = model.log_probs(held_out, context_len)
    for i in range(len(held_out)):
        k = min(int(context_len[i]), i, order - 1)
        expected = np.log(model.distribution(list(held_out[i - k : i]))[held_out[i]])
        assert logp[i] == pytest.approx(expected, abs=1e-6), i
    # scoring in chunks changes nothing
    old = ng.SCORE_CHUNK
    try:
        ng.SCORE_CHUNK = 37
        np.testing.assert_allclose(model.log_probs(held_out, context_len), logp, atol=1e-12)
    finally:
        ng.SCORE_CHUNK = old
    # and the model learns: held-out text from the same source costs far less than uniform
    assert -model.log_probs(held_out).mean() < 0.8 * math.log(vocab)


def test_greedy_follows_the_counts() -> None:
    model = ng.kneser_ney(ng.count_ngrams(np.tile([3, 1, 4, 1, 5], 50), 8, 3), 3)
    assert model.greedy([3, 1], 4) == [4, 1, 5, 3]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    from fakegutenberg.books import sample_books

    root = tmp_path_factory.mktemp("ngram")
    raw = root / "raw"
    raw.mkdir()
    for book in sample_books(extra=6, extra_kb=8):
        (raw / f"{book.id}.txt").write_bytes(book.raw_bytes())
    config = CorpusConfig(split=SplitConfig(0.2, 0.3), tokenizer=TokenizerConfig(vocab_size=400))
    build_corpus(raw, root / "corpus", config, workers=1, progress=False)
    return root / "corpus"


def test_bpb_uses_the_model_windows_and_bytes(corpus: Path) -> None:
    """The n-gram's nats, targets and bytes are those of the model's evaluation windows: each window
    scored on its own (a target sees only the tokens of its window before it)."""
    model = ng.corpus_model(corpus, order=3)
    block = 16
    nats = targets = n_bytes = 0.0
    for x, y, b in iter_eval_windows(corpus, "validation", block, batch_size=4):
        for row_x, row_y in zip(x.numpy(), y.numpy(), strict=True):
            keep = row_y >= 0
            seq = np.concatenate([row_x[:1], row_y[keep]])
            nats -= model.log_probs(seq)[1:].sum()
            targets += keep.sum()
        n_bytes += b
    figures = ng.split_bpb(model, corpus, "validation", block)
    assert (figures["tokens"], figures["bytes"]) == (targets, round(n_bytes))
    assert figures["bpb"] == pytest.approx(nats / (math.log(2) * n_bytes), rel=1e-9)
    # and only the first targets, as evaluate(max_batches=...) scores
    assert ng.split_bpb(model, corpus, "validation", block, max_targets=64)["tokens"] == 64


def test_fit_is_cached_next_to_the_corpus_and_refits_a_rebuilt_one(corpus: Path, monkeypatch) -> None:
    first = ng.train_counts(corpus, 3)
    cached = sorted((corpus / ng.CACHE_DIR).glob("ngram-*.npz"))
    assert cached, "the fit was not cached"

    def no_fit(*args, **kwargs):
        raise AssertionError("refitted although the cache was there")

    monkeypatch.setattr(ng, "count_ngrams", no_fit)
    again = ng.train_counts(corpus, 3)
    for a, b in zip(first.keys + first.raw, again.keys + again.raw, strict=True):
        np.testing.assert_array_equal(a, b)
    monkeypatch.undo()

    # a rebuilt corpus has other training shards: its key changes, it refits and drops the stale fit
    manifest_path = corpus / "manifest.json"
    original = manifest_path.read_text()
    manifest = json.loads(original)
    old_key = ng.corpus_key(corpus)
    manifest["splits"]["train"]["shards"][0]["sha256"] = "0" * 64
    try:
        manifest_path.write_text(json.dumps(manifest))
        assert ng.corpus_key(corpus) != old_key
        ng.train_counts(corpus, 3)
        names = {p.name for p in (corpus / ng.CACHE_DIR).glob("ngram-3-*.npz")}
        assert names == {f"ngram-3-{ng.corpus_key(corpus)}.npz"}
    finally:
        manifest_path.write_text(original)


def test_default_order_is_the_best_on_validation(corpus: Path) -> None:
    model = ng.corpus_model(corpus)
    scores = {k: ng.cached_split_bpb(corpus, k, "validation", 256) for k in ng.ORDERS}
    assert model.order == min(scores, key=scores.get)
    assert all(math.isfinite(v) and v > 0 for v in scores.values())


def test_baseline_figures_for_the_trainer(corpus: Path) -> None:
    from training.eval_tasks import baseline_figures, unigram_bpb

    figures = baseline_figures(corpus, block_size=64)
    assert {"ngram_order", "ngram_val_bpb", "ngram_test_bpb", "overlap_choice_acc"} <= set(figures)
    assert all(isinstance(v, float) for v in figures.values())
    assert figures["ngram_test_bpb"] < unigram_bpb(corpus, "test")
    assert baseline_figures(corpus, block_size=64) == figures
