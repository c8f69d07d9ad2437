"""An interpolated Kneser-Ney n-gram model of a corpus's training token ids: the baseline a model must beat.

A neural model that cannot beat counting has learnt nothing worth its compute, so every evaluation puts
this model's figures beside the model's. It is fitted on the same token ids the model trains on (the
packed stream of training/data.py, BOS/separator/EOS included) and scored on exactly the targets and
bytes the model's bits per byte uses (`split_bpb`).

Modified Kneser-Ney (Chen & Goodman 1998), interpolated down to a uniform distribution over the vocabulary:

    p_k(w | h) = (max(a(h w) - D_k(a), 0) + gamma_k(h) * p_{k-1}(w | h')) / A(h),   A(h) = sum_w a(h w)

where h' is h without its first token, a is the raw count at the highest order and the continuation count
(the number of distinct tokens seen before h w) below it, D_k(a) is D1, D2 or D3+ by the count (estimated
from the count-of-counts of each order, or one fixed absolute discount), gamma_k(h) = sum_w D_k(a(h w)) and
p_0 = 1/V. A context never seen (A = 0) falls back to p_{k-1} unchanged. Every p_k sums to 1 over the vocab.

Storage: per order k, the distinct k-grams as sorted int64 keys `id(first k-1 tokens) * V + last token`,
where id is the position of that (k-1)-gram in the order k-1 table (order 1: the token id itself), with
one count each; per (k-1)-gram context its total A and gamma. A lookup is one searchsorted per order, so
20M training tokens take a few hundred MB and scoring is vectorised over a whole split.
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from training.data import CorpusInfo, RowGroupReader

ORDERS = (2, 3, 4, 5)
MAX_ORDER = 5
CACHE_DIR = "cache"  # <corpus>/cache/ngram-*.npz: derived from the corpus, safe to delete
CACHE_VERSION = 1
SCORE_CHUNK = 1 << 20  # tokens scored at once (bounds the memory of scoring a large split)


@dataclass
class NGramCounts:
    """Every k-gram (k = 1..max_order) of a token stream with its raw and its continuation count."""

    vocab_size: int
    max_order: int
    keys: list[np.ndarray]  # keys[k-1]: sorted int64 keys of the distinct k-grams (order 1: arange(V))
    raw: list[np.ndarray]  # raw[k-1]: occurrences of each k-gram
    continuation: list[np.ndarray]  # continuation[k-1]: distinct tokens seen before it (k < max_order)


@dataclass
class KneserNey:
    """A fitted model of one order; see the module docstring for the formula."""

    vocab_size: int
    order: int
    discounts: np.ndarray  # (order, 3) float64: D1, D2, D3+ of orders 1..order
    keys: list[np.ndarray]  # per order, as in NGramCounts
    counts: list[np.ndarray]  # per order: the a of the formula (raw at the top order, continuation below)
    totals: list[np.ndarray]  # per order, per context id (order 1: one context): A(h), int32
    backoff: list[np.ndarray]  # per order, per context id: gamma(h), float64

    @property
    def nbytes(self) -> int:
        return sum(a.nbytes for arrays in (self.keys, self.counts, self.totals, self.backoff) for a in arrays)

    def _discount(self, k: int, a: np.ndarray) -> np.ndarray:
        """D_k(a): 0 for an unseen k-gram, else D1, D2 or D3+ by its count."""
        d = self.discounts[k - 1]
        return np.where(a <= 0, 0.0, np.where(a == 1, d[0], np.where(a == 2, d[1], d[2])))

    def _lookup(self, k: int, key: np.ndarray) -> np.ndarray:
        """Index of each key in the order-k table, or -1 where the k-gram was never seen."""
        keys = self.keys[k - 1]
        idx = np.searchsorted(keys, key)
        idx = np.minimum(idx, len(keys) - 1)
        return np.where((key >= 0) & (keys[idx] == key), idx, -1) if len(keys) else np.full(len(key), -1)

    def log_probs(self, tokens: np.ndarray, context_len: np.ndarray | None = None) -> np.ndarray:
        """Natural log p(tokens[i] | the context_len[i] tokens before it, at most order - 1), for every i.

        context_len (default: all there are) is what lets the n-gram see what a windowed model sees.
        Scored in chunks of SCORE_CHUNK tokens, each with the order - 1 tokens before it.
        """
        tokens = np.asarray(tokens, dtype=np.int64)
        n = len(tokens)
        context_len = np.arange(n) if context_len is None else np.minimum(context_len, np.arange(n))
        out = np.empty(n, dtype=np.float64)
        lead = self.order - 1
        for start in range(0, n, SCORE_CHUNK):
            a = max(start - lead, 0)
            end = min(start + SCORE_CHUNK, n)
            lp = self._log_probs(tokens[a:end], np.minimum(context_len[a:end], np.arange(end - a)))
            out[start:end] = lp[start - a :]
        return out

    def _log_probs(self, tokens: np.ndarray, context_len: np.ndarray) -> np.ndarray:
        V = self.vocab_size
        p = np.full(len(tokens), 1.0 / V)
        gram = tokens.copy()  # id of the k-gram ending at each position (-1: unseen), k = 1 first
        for k in range(1, self.order + 1):
            if k == 1:
                ctx = np.zeros(len(tokens), dtype=np.int64)
                idx = tokens
            else:
                ctx = np.full(len(tokens), -1, dtype=np.int64)  # the (k-1)-gram ending just before
                ctx[1:] = gram[:-1]
                idx = self._lookup(k, np.where(ctx >= 0, ctx * V + tokens, -1))
                gram = idx
            usable = (ctx >= 0) & (context_len >= k - 1)
            safe_ctx = np.where(usable, ctx, 0)
            total = np.where(usable, self.totals[k - 1][safe_ctx], 0).astype(np.float64)
            active = total > 0
            a = np.where(idx >= 0, self.counts[k - 1][np.maximum(idx, 0)], 0)
            mass = np.maximum(a - self._discount(k, a), 0.0)
            gamma = self.backoff[k - 1][safe_ctx]
            p = np.where(active, (mass + gamma * p) / np.where(active, total, 1.0), p)
        return np.log(p)

    def _context_id(self, k: int, context: list[int]) -> int:
        """Id of the (k-1)-gram that ends the context (k >= 2), or -1 if it was never seen."""
        tail = context[len(context) - (k - 1) :]
        gram = int(tail[0])
        for j, token in enumerate(tail[1:], start=2):
            gram = int(self._lookup(j, np.array([gram * self.vocab_size + int(token)]))[0])
            if gram < 0:
                return -1
        return gram

    def distribution(self, context: list[int]) -> np.ndarray:
        """p(w | context) for every token w of the vocabulary (the last order - 1 tokens count)."""
        V = self.vocab_size
        p = np.full(V, 1.0 / V)
        for k in range(1, min(self.order, len(context) + 1) + 1):
            if k == 1:
                c, lo, hi = 0, 0, V
            else:
                c = self._context_id(k, context)
                if c < 0:
                    break  # no longer context was seen either
                lo, hi = np.searchsorted(self.keys[k - 1], [c * V, (c + 1) * V])
            total = float(self.totals[k - 1][c])
            if total <= 0:
                continue
            words = self.keys[k - 1][lo:hi] % V
            a = self.counts[k - 1][lo:hi]
            new = float(self.backoff[k - 1][c]) * p
            new[words] += np.maximum(a - self._discount(k, a), 0.0)
            p = new / total
        return p

    def greedy(self, context: list[int], n: int) -> list[int]:
        """The n most probable next tokens, one at a time (the n-gram's greedy continuation)."""
        ids = list(context)
        for _ in range(n):
            ids.append(int(np.argmax(self.distribution(ids))))
        return ids[len(context) :]

    def sequence_logprob(self, context: list[int], continuation: list[int]) -> float:
        """Sum of log p(continuation | context), each token seeing what came before it."""
        seq = np.array(list(context) + list(continuation), dtype=np.int64)
        return float(self.log_probs(seq)[len(context) :].sum())


# -----------------------------------------------------------------------------
# Fitting


def count_ngrams(tokens: np.ndarray, vocab_size: int, max_order: int) -> NGramCounts:
    """Raw and continuation counts of every k-gram, k = 1..max_order, with sorts and no Python loop.

    ids[i] is the id of the k-gram starting at position i; the (k+1)-gram starting at i is that id times
    V plus token i + k, so each order is one np.unique over the previous order's ids.
    """
    if not 1 <= max_order <= MAX_ORDER:
        raise ValueError(f"n-gram order must be 1..{MAX_ORDER}, got {max_order}")
    tokens = np.asarray(tokens, dtype=np.int64)
    V = int(vocab_size)
    if len(tokens) and (tokens.min() < 0 or tokens.max() >= V):
        raise ValueError(f"token ids outside [0, {V})")
    keys, raw, continuation = [np.arange(V, dtype=np.int64)], [np.bincount(tokens, minlength=V)], []
    ids = tokens
    for k in range(2, max_order + 1):
        if len(ids) < 2:
            keys.append(np.empty(0, np.int64))
            raw.append(np.empty(0, np.int64))
            continuation.append(np.zeros(len(keys[-2]), np.int64))
            ids = np.empty(0, np.int64)
            continue
        key = ids[:-1] * V + tokens[k - 1 :]
        uniq, inverse, count = np.unique(key, return_inverse=True, return_counts=True)
        inverse = inverse.reshape(-1)
        suffix = np.empty(len(uniq), dtype=np.int64)  # the (k-1)-gram that ends each k-gram
        suffix[inverse] = ids[1:]
        continuation.append(np.bincount(suffix, minlength=len(keys[-1])))
        keys.append(uniq)
        raw.append(count)
        ids = inverse.astype(np.int64)
        del key, suffix
    continuation.append(np.zeros(0, np.int64))  # the top order has none
    return NGramCounts(V, max_order, keys, [r.astype(np.int32) for r in raw], continuation)


def estimate_discounts(counts: np.ndarray) -> np.ndarray:
    """Modified Kneser-Ney's D1, D2, D3+ from the count-of-counts n1..n4 (Chen & Goodman's estimate),
    each clipped into [0.05, its count]; a single Y = n1 / (n1 + 2 n2) where n2..n4 are too few."""
    n = [int(np.sum(counts == i)) for i in range(1, 5)]
    if n[0] == 0 or n[1] == 0:
        return np.full(3, 0.75)
    y = n[0] / (n[0] + 2 * n[1])
    if n[2] == 0 or n[3] == 0:
        return np.full(3, min(max(y, 0.05), 1.0))
    d = np.array([1 - 2 * y * n[1] / n[0], 2 - 3 * y * n[2] / n[1], 3 - 4 * y * n[3] / n[2]])
    return np.clip(d, 0.05, [1.0, 2.0, 3.0])


def kneser_ney(counts: NGramCounts, order: int, discount: float | None = None) -> KneserNey:
    """The order-`order` model from counts of at least that order. discount: None for modified KN's
    estimated discounts, or one absolute discount in (0, 1] for every count (plain interpolated KN)."""
    if not 1 <= order <= counts.max_order:
        raise ValueError(f"order {order} needs counts of order >= {order} (have {counts.max_order})")
    if discount is not None and not 0 < discount <= 1:
        raise ValueError(f"discount must be in (0, 1], got {discount}")
    V = counts.vocab_size
    discounts, keys, a_list, totals, backoff = [], [], [], [], []
    for k in range(1, order + 1):
        a = (counts.raw if k == order else counts.continuation)[k - 1].astype(np.int64)
        d = np.full(3, float(discount)) if discount is not None else estimate_discounts(a)
        n_ctx = 1 if k == 1 else len(counts.keys[k - 2])
        ctx = np.zeros(len(a), np.int64) if k == 1 else counts.keys[k - 1] // V
        total = np.bincount(ctx, weights=a, minlength=n_ctx)
        dk = np.where(a <= 0, 0.0, np.where(a == 1, d[0], np.where(a == 2, d[1], d[2])))
        gamma_mass = np.bincount(ctx, weights=dk, minlength=n_ctx)
        if k == 1 and total[0] <= 0:  # an empty stream: the uniform distribution
            total, gamma_mass = np.ones(1), np.ones(1)
        discounts.append(d)
        keys.append(counts.keys[k - 1])
        a_list.append(a.astype(np.int32))
        totals.append(np.rint(total).astype(np.int32))  # sums of integer counts, < 2**31
        backoff.append(gamma_mass)  # float64: with float32 a distribution would sum to 1 +- 1e-8
    return KneserNey(V, order, np.array(discounts), keys, a_list, totals, backoff)


# -----------------------------------------------------------------------------
# A corpus: its token stream, a cached fit, bits per byte


def split_stream(corpus_dir: str | Path, split: str) -> tuple[np.ndarray, np.ndarray]:
    """A split's packed token stream in file order and the bytes each token stands for, exactly the stream
    `iter_eval_windows` cuts into windows (boundary tokens count 0 bytes)."""
    info = CorpusInfo.from_dir(corpus_dir)
    reader = RowGroupReader(info, split)
    parts = [reader.read(shard, group, with_bytes=True) for shard, group in info.split_units(split)]
    if not parts:
        return np.empty(0, np.int32), np.empty(0, np.float64)
    return np.concatenate([t for t, _ in parts]), np.concatenate([b for _, b in parts])


def corpus_key(corpus_dir: str | Path) -> str:
    """A short hash of what the fit depends on: the training shards and the tokenizer (a rebuilt corpus
    has new shard checksums, so it refits)."""
    info = CorpusInfo.from_dir(corpus_dir)
    blob = json.dumps([CACHE_VERSION, info.tokenizer_sha256, info.split("train")["shards"]], sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _cache_dir(corpus_dir: str | Path) -> Path:
    return Path(corpus_dir) / CACHE_DIR


def _save_counts(path: Path, counts: NGramCounts) -> None:
    from common.files import atomic_write

    arrays = {"meta": np.array([counts.vocab_size, counts.max_order])}
    for k in range(counts.max_order):
        arrays[f"keys{k}"], arrays[f"raw{k}"] = counts.keys[k], counts.raw[k]
        arrays[f"cont{k}"] = counts.continuation[k]

    def write(tmp: str) -> None:
        with open(tmp, "wb") as f:
            np.savez(f, **arrays)

    atomic_write(path, write)


def _load_counts(path: Path) -> NGramCounts:
    with np.load(path) as z:
        vocab_size, max_order = (int(v) for v in z["meta"])
        return NGramCounts(
            vocab_size,
            max_order,
            [z[f"keys{k}"] for k in range(max_order)],
            [z[f"raw{k}"] for k in range(max_order)],
            [z[f"cont{k}"] for k in range(max_order)],
        )


def cached_fit(corpus_dir: str | Path) -> Path | None:
    """The cached fit of this corpus (any order), if there is one: tells a caller whether to warn of a fit."""
    return next(iter(sorted(_cache_dir(corpus_dir).glob(f"ngram-*-{corpus_key(corpus_dir)}.npz"))), None)


def train_counts(
    corpus_dir: str | Path, max_order: int = MAX_ORDER, notify: Callable[[str], None] | None = None
) -> NGramCounts:
    """The training split's counts up to max_order, from <corpus>/cache/ngram-<order>-<key>.npz when a fit of
    this corpus of that order or higher is there; else fitted and cached (atomically; stale fits of this
    order are removed; a read-only corpus is fitted in memory only)."""
    cache, key = _cache_dir(corpus_dir), corpus_key(corpus_dir)
    for order in range(max_order, MAX_ORDER + 1):
        path = cache / f"ngram-{order}-{key}.npz"
        if path.is_file():
            try:
                return _load_counts(path)
            except (OSError, ValueError, KeyError):
                pass  # a damaged cache file: refit below and replace it
    info = CorpusInfo.from_dir(corpus_dir)
    start = time.perf_counter()
    tokens, _ = split_stream(corpus_dir, "train")
    counts = count_ngrams(tokens, info.vocab_size, max_order)
    if notify is not None:
        seconds = time.perf_counter() - start
        notify(f"fitted a {max_order}-gram on {len(tokens):,} training tokens in {seconds:.0f} s")
    try:
        cache.mkdir(exist_ok=True)
        for stale in cache.glob(f"ngram-{max_order}-*.npz"):
            stale.unlink()
        _save_counts(cache / f"ngram-{max_order}-{key}.npz", counts)
    except OSError:
        pass  # a read-only corpus: the fit is only not cached
    return counts


def split_bpb(
    model: KneserNey, corpus_dir: str | Path, split: str, block_size: int, max_targets: int | None = None
) -> dict:
    """Bits per byte of the n-gram on a split, with the model's accounting (training/evaluate.py): every
    token after the first of the stream is a target; a target in a window sees only the window's tokens
    before it (windows of block_size + 1 at stride block_size); bytes as iter_eval_windows counts them.
    max_targets: only the first that many targets (what `evaluate(max_batches=...)` scores)."""
    tokens, token_bytes = split_stream(corpus_dir, split)
    n = len(tokens) if max_targets is None else min(len(tokens), max_targets + 1)
    if n < 2:
        raise ValueError(f"split {split!r} of {corpus_dir} has no target tokens to evaluate")
    position = np.arange(n)
    context_len = np.where(position > 0, (position - 1) % block_size + 1, 0)
    nats = -float(model.log_probs(tokens[:n], context_len)[1:].sum())
    n_bytes = float(token_bytes[1:n].sum())
    return {
        "bpb": nats / (math.log(2) * n_bytes) if n_bytes else float("nan"),
        "loss": nats / (n - 1),
        "tokens": n - 1,
        "bytes": round(n_bytes),
    }


def _figures_path(corpus_dir: str | Path) -> Path:
    return _cache_dir(corpus_dir) / f"ngram-figures-{corpus_key(corpus_dir)}.json"


def cached_split_bpb(
    corpus_dir: str | Path,
    order: int,
    split: str,
    block_size: int,
    max_targets: int | None = None,
    model: KneserNey | None = None,
) -> float:
    """split_bpb of the order-`order` model (modified KN; `model` if it is already built), remembered in
    <corpus>/cache next to the fit."""
    from common.files import write_json_atomic

    path = _figures_path(corpus_dir)
    name = f"{order}/{split}/{block_size}/{max_targets}"
    try:
        figures = json.loads(path.read_text()) if path.is_file() else {}
    except (OSError, ValueError):
        figures = {}
    if name not in figures:
        if model is None or model.order != order:
            model = kneser_ney(train_counts(corpus_dir, order), order)
        figures[name] = split_bpb(model, corpus_dir, split, block_size, max_targets)["bpb"]
        try:
            path.parent.mkdir(exist_ok=True)
            write_json_atomic(path, figures)
        except OSError:
            pass
    return float(figures[name])


def best_order(corpus_dir: str | Path, block_size: int = 256) -> int:
    """The order of 2..5 with the lowest validation bits per byte (the training split's, if a corpus has no
    validation split: then simply the highest order that does not overfit its own data is not knowable)."""
    info = CorpusInfo.from_dir(corpus_dir)
    if not info.manifest["splits"].get("validation", {}).get("shards"):
        return 3
    train_counts(corpus_dir, max(ORDERS))  # one fit serves every order
    scores = {k: cached_split_bpb(corpus_dir, k, "validation", block_size) for k in ORDERS}
    return min(scores, key=scores.get)


def corpus_model(corpus_dir: str | Path, order: int | None = None, block_size: int = 256) -> KneserNey:
    """The corpus's n-gram model: of `order`, or (None) of the order best on validation."""
    order = best_order(corpus_dir, block_size) if order is None else order
    if order not in ORDERS:
        raise ValueError(f"n-gram order must be one of {ORDERS}, got {order}")
    return kneser_ney(train_counts(corpus_dir, order), order)
