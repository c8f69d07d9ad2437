"""Stage 6: deduplication.

Two kinds of duplicate matter in Gutenberg:

* **Near-duplicate books.** The catalogue often holds several editions of one work (a 1572
  facsimile of Os Lusíadas next to a modern-spelling edition; two releases of Dom Casmurro). We
  MinHash each book's word 3-gram shingles and group books whose estimated Jaccard similarity
  passes a threshold; one book per group is kept. Shingles are taken over an orthographic
  *skeleton* of the text (accents stripped, `ſ`->`s`, `&`->`e`, `u/v`, `i/j/y`, `ph/f` merged,
  doubled letters collapsed, silent `h` dropped...), because old and modern spellings of the same
  verse otherwise share few shingles (on the two Lusíadas: Jaccard 0.13 over raw word 5-grams,
  0.55 over skeleton 3-grams; over all 487 real files the next-closest pair scores 0.21, a poet's
  collected poems against one of its parts, and the nine volumes of Herculano's Opúsculos stay
  below 0.04).
* **Exact duplicate paragraphs**, across the whole corpus (prefaces repeated in every volume of a
  series, transcriber notes, repeated refrains). The first occurrence, in book order, is kept.
  Paragraphs shorter than `min_paragraph_chars` are never dropped: chapter numbers, `FIM` or `* * *`
  repeat legitimately and carry the structure of a book.

Signatures are computed per book (in the cleaning worker, cached with the cleaned book); the
grouping and the paragraph pass are global and run once over all books. The documents of extra
sources go through the same two searches: `near_duplicates` (one banded LSH, for books and
documents alike) and `ParagraphDedup` (one fingerprint set, continued from the books'), which also
knows *loose* duplicates (same words after folding case, accents, spelling and punctuation).
"""

from __future__ import annotations

import functools
import hashlib
import os
import re
import unicodedata
import zlib
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np


@dataclass(frozen=True)
class DedupConfig:
    num_perm: int = 128  # MinHash permutations: the Jaccard estimate has std ~ sqrt(J(1-J)/num_perm)
    shingle_words: int = 3  # word n-grams of the skeleton text; 3 separates editions from series best
    book_threshold: float = 0.4  # estimated Jaccard at or above which two books are editions of one work
    min_paragraph_chars: int = 64  # shorter paragraphs are never dropped as duplicates
    seed: int = 1


# ---------------------------------------------------------------------------------------------
# Near-duplicate books

# Letter -> letter. Applied with str.replace, one letter at a time: 20x faster on book-sized text than
# str.translate, which takes a per-character path on strings with any non-ASCII character. No
# replacement is another's source letter, so the order does not matter.
_SPELLING_FOLD = (
    ("u", "v"), ("y", "i"), ("j", "i"), ("w", "v"), ("k", "c"), ("q", "c"), ("z", "s"), ("x", "s"), ("ç", "s"),
    ("&", "e"),
)  # fmt: skip
_COMBINING = re.compile(r"[\u0300-\u036f]")
_DIGRAPHS = re.compile(r"ph|th|ch|h")
_DIGRAPH_SOUND = {"ph": "f", "th": "t", "ch": "s", "h": ""}
_REPEATS = re.compile(r"([a-z0-9])\1+")
_NASAL_END = re.compile(r"[mn]+(?![a-z0-9&])")  # nasal endings vary between spellings (forão/foram)
_WORD = re.compile(r"[a-z0-9&]+")
_WORD_BYTES = re.compile(rb"[a-z0-9&]+")


def skeleton_words(text: str) -> list[str]:
    """Lower-case words with spelling variation folded away (see the module docstring).

    Lossy on purpose: it only has to make two editions of one text look alike, never be read.
    Works on the whole text at once (regexes and `str.replace`), not word by word: it runs on
    every book.
    """
    return _WORD.findall(_skeleton_text(text))


def _skeleton_text(text: str) -> str:
    text = text.replace("-\n", "").replace("ſ", "s")  # words hyphenated across facsimile lines
    text = _COMBINING.sub("", unicodedata.normalize("NFKD", text.lower()))
    for letter, folded in _SPELLING_FOLD:
        text = text.replace(letter, folded)
    text = _DIGRAPHS.sub(lambda m: _DIGRAPH_SOUND[m.group()], text)
    return _NASAL_END.sub("", _REPEATS.sub(r"\1", text))


# MinHash with multiply-add-shift hashing: h_i(x) = ((a_i * crc32(x) + b_i) mod 2^64) >> 32, a strongly
# universal family for 32-bit keys (Dietzfelbinger), computed with numpy's wrapping uint64 arithmetic.
# (An affine hash mod a prime with small multipliers does not wrap, so every permutation would pick
# the same smallest key: the permutations must be this well mixed.) Done in blocks with numpy rather
# than with datasketch's MinHash, which was several times slower per book; the values are 32-bit
# ints, so they cache as JSON and fit the uint32 rows of a `SignatureFile`.
_EMPTY = np.uint64(2**32 - 1)  # the signature value of a book without shingles
_BLOCK = 4096


@functools.lru_cache(maxsize=8)
def _hash_params(num_perm: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.RandomState(seed)
    a = rng.randint(0, 2**64 - 1, size=num_perm, dtype=np.uint64) | np.uint64(1)
    b = rng.randint(0, 2**64 - 1, size=num_perm, dtype=np.uint64)
    return a[:, None], b[:, None]


def minhash(shingles: Iterable[bytes], num_perm: int = 128, seed: int = 1) -> np.ndarray:
    """MinHash signature (one 32-bit value per hash function, as uint64) of a set of byte strings."""
    items = list(shingles)
    keys = np.fromiter((zlib.crc32(x) for x in items), dtype=np.uint64, count=len(items))
    a, b = _hash_params(num_perm, seed)
    sig = np.full(num_perm, _EMPTY, dtype=np.uint64)
    shift = np.uint64(32)
    for start in range(0, len(keys), _BLOCK):
        block = keys[None, start : start + _BLOCK]
        np.minimum(sig, ((a * block + b) >> shift).min(axis=1), out=sig)
    return sig


def book_signature(paragraphs: Iterable[str], config: DedupConfig = DedupConfig()) -> list[int]:
    """MinHash of a book's skeleton word shingles, as plain ints (JSON-cacheable)."""
    # Skeleton words are ASCII ([a-z0-9&]), so the text is encoded once and the shingles are sliced
    # as bytes: the same shingles as joining `skeleton_words`, without an encode per shingle.
    words = _WORD_BYTES.findall(_skeleton_text("\n\n".join(paragraphs)).encode())
    k = config.shingle_words
    shingles = set(map(b" ".join, zip(*(words[i:] for i in range(k)), strict=False)))
    if words and not shingles:  # fewer words than a shingle
        shingles = {b" ".join(words)}
    return [int(h) for h in minhash(shingles, config.num_perm, config.seed)]


def signature_similarity(a: Sequence[int], b: Sequence[int]) -> float:
    """Estimated Jaccard similarity: the share of equal MinHash values."""
    return float(np.mean(np.asarray(a, dtype=np.uint64) == np.asarray(b, dtype=np.uint64)))


@dataclass
class DuplicateGroup:
    kept: str
    dropped: list[str]
    similarity: float  # the lowest pairwise estimate that joined the group

    def to_dict(self) -> dict:
        return {"kept": self.kept, "dropped": self.dropped, "similarity": round(self.similarity, 4)}


def _natural(key: str) -> tuple[int, str]:
    """Order "999" before "3333" before "3333.alt": by the leading ebook number, then the key."""
    digits = re.match(r"\d+", key)
    return (int(digits.group()) if digits else 2**63, key)


@functools.lru_cache(maxsize=16)
def lsh_bands(threshold: float, num_perm: int) -> tuple[int, int]:
    """(bands, rows per band) that best separate pairs below and above `threshold`: the least mean of
    the false-positive and false-negative areas under the S-curve 1 - (1 - s^rows)^bands."""
    below, above = np.linspace(0, threshold, 1001), np.linspace(threshold, 1, 1001)
    best = (np.inf, 1, 1)
    for bands in range(1, num_perm + 1):
        for rows in range(1, num_perm // bands + 1):
            fp = np.trapezoid(1 - (1 - below**rows) ** bands, below)
            fn = np.trapezoid((1 - above**rows) ** bands, above)
            best = min(best, (0.5 * fp + 0.5 * fn, bands, rows))
    return best[1], best[2]


def find_near_duplicate_books(
    signatures: Mapping[str, Sequence[int]],
    config: DedupConfig = DedupConfig(),
    sizes: Mapping[str, int] | None = None,
) -> list[DuplicateGroup]:
    """Group books whose signatures are at least `config.book_threshold` similar.

    `near_duplicates` proposes and checks the pairs (its bands tuned below the threshold, so that
    pairs just above it are rarely missed), and groups are the connected components. The kept book
    of a group is the largest one (by `sizes`, e.g. kept characters: the fullest edition), ties broken
    by the smallest key in numeric order, so the choice is deterministic. Keys are any strings (e.g.
    raw file stems, `55752` and `55752.alt-2017`).
    """
    # An empty book's signature is all "empty" values: it must not match other empty books.
    keys = sorted(k for k in signatures if any(int(v) != _EMPTY for v in signatures[k]))
    if len(keys) < 2:
        return []
    for key in keys:
        if len(signatures[key]) != config.num_perm:
            raise ValueError(
                f"signature of {key!r} has {len(signatures[key])} values, expected {config.num_perm}"
            )
    rows = np.asarray([signatures[k] for k in keys], dtype="<u4")
    bands, per_band = lsh_bands(max(0.1, 0.75 * config.book_threshold), config.num_perm)
    edges: list[tuple[int, int, float]] = []
    roots = near_duplicates(rows, config.book_threshold, per_band, bands=bands, edges=edges)
    members: dict[int, list[str]] = {}
    for i, root in enumerate(roots):
        members.setdefault(i if root < 0 else int(root), []).append(keys[i])
    groups = []
    for root, group in sorted(members.items()):
        if len(group) < 2:
            continue
        kept = min(group, key=lambda k: (-(sizes or {}).get(k, 0), _natural(k)))
        sim = min(s for a, _, s in edges if a == root or roots[a] == root)
        groups.append(DuplicateGroup(kept, [k for k in group if k != kept], sim))
    return groups


class SignatureFile:
    """MinHash signatures (uint32 rows) appended to a file in document order and read back a window
    at a time, so that near-duplicate detection keeps ~30 bytes per document in memory, not 512."""

    def __init__(self, path: str | Path, num_perm: int, window_rows: int = 1 << 14):
        self.path, self.num_perm, self.window_rows = Path(path), num_perm, window_rows
        self.rows = 0
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.path.write_bytes(b"")

    def __len__(self) -> int:
        return self.rows

    def append(self, signatures: np.ndarray) -> None:
        signatures = np.ascontiguousarray(signatures, dtype="<u4").reshape(-1, self.num_perm)
        with open(self.path, "ab") as f:
            f.write(signatures.tobytes())
        self.rows += len(signatures)

    def windows(self) -> Iterator[tuple[int, np.ndarray]]:
        """(first row, rows) for consecutive windows of the file."""
        row_bytes = 4 * self.num_perm
        for start in range(0, self.rows, self.window_rows):
            n = min(self.window_rows, self.rows - start)
            block = np.fromfile(self.path, dtype="<u4", count=n * self.num_perm, offset=start * row_bytes)
            yield start, block.reshape(n, self.num_perm)

    def take(self, rows: np.ndarray) -> np.ndarray:
        """The signatures of the given rows, read one by one (no mapping: RSS stays as it is)."""
        row_bytes = 4 * self.num_perm
        out = np.empty((len(rows), self.num_perm), dtype="<u4")
        with open(self.path, "rb") as f:
            for i, row in enumerate(rows):
                out[i] = np.frombuffer(os.pread(f.fileno(), row_bytes, int(row) * row_bytes), dtype="<u4")
        return out


@dataclass
class _SignatureArray:
    """Signatures already in memory (the books'), read like a `SignatureFile`."""

    rows: np.ndarray

    def __len__(self) -> int:
        return len(self.rows)

    @property
    def num_perm(self) -> int:
        return self.rows.shape[1]

    def windows(self) -> Iterator[tuple[int, np.ndarray]]:
        yield 0, self.rows

    def take(self, rows: np.ndarray) -> np.ndarray:
        return self.rows[rows]


def _band_groups(
    signatures: SignatureFile | _SignatureArray, band: int, rows: int, empty: np.ndarray, mult: np.ndarray
) -> Iterator[np.ndarray]:
    """The rows that share one band's key (its `rows` values hashed together), group by group; rows
    without shingles (`empty`) get keys of their own. 8 bytes a row, from one pass over the rows."""
    keys = np.empty(len(signatures), dtype=np.uint64)
    for start, block in signatures.windows():
        cols = block[:, band * rows : (band + 1) * rows].astype(np.uint64)
        keys[start : start + len(block)] = (cols * mult).sum(axis=1)
    keys[empty] = np.arange(int(empty.sum()), dtype=np.uint64) * np.uint64(2654435761) + np.uint64(7)
    order = np.argsort(keys, kind="stable")
    sorted_keys = keys[order]
    starts = np.flatnonzero(np.r_[True, sorted_keys[1:] != sorted_keys[:-1]])
    ends = np.r_[starts[1:], len(keys)]
    for g in np.flatnonzero(ends - starts > 1):
        yield order[starts[g] : ends[g]]


def near_duplicates(
    signatures: SignatureFile | np.ndarray,
    threshold: float,
    rows: int,
    seed: int = 1,
    bands: int | None = None,
    edges: list[tuple[int, int, float]] | None = None,
) -> np.ndarray:
    """For each row, the row it duplicates (the lowest index in its group), or -1 if it is kept.

    Candidates share one LSH band (rows x 32-bit values hashed together; `bands` of them, default as
    many as fit); a candidate pair counts only if the full signatures agree on at least `threshold`
    of their values. Groups are connected components; the earliest row of a group (a Gutenberg book,
    when the books come first) is kept. Each band's keys (8 bytes a document) are computed from one
    pass over the signatures. Without `edges`, pairs already in one group are not checked again (web
    scale); with it, every candidate pair is checked and each one at or above the threshold is
    appended as (row, row, similarity).
    """
    if isinstance(signatures, np.ndarray):
        signatures = _SignatureArray(np.ascontiguousarray(signatures, dtype="<u4"))
    n, num_perm = len(signatures), signatures.num_perm
    if n < 2:
        return np.full(n, -1)
    parent = np.arange(n)
    empty = np.zeros(n, dtype=bool)  # no shingles: matches nothing
    for start, block in signatures.windows():
        empty[start : start + len(block)] = (block == _EMPTY).all(axis=1)
    mult = np.random.RandomState(seed).randint(1, 2**63 - 1, size=rows, dtype=np.int64).astype(np.uint64)
    checked: set[tuple[int, int]] = set()

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    def check(pairs: list[tuple[int, int]]) -> None:
        sims = signatures.take(np.array([a for a, _ in pairs])) == signatures.take(
            np.array([b for _, b in pairs])
        )
        for (a, b), sim in zip(pairs, sims.mean(axis=1), strict=True):
            if sim < threshold:
                continue
            if edges is not None:
                edges.append((a, b, float(sim)))
            ra, rb = find(a), find(b)
            if ra != rb:
                parent[max(ra, rb)] = min(ra, rb)

    def candidates(members: np.ndarray) -> Iterator[tuple[int, int]]:
        if edges is None:  # one pair per member is enough to join a group
            first = int(members[0])
            yield from ((first, int(m)) for m in members[1:] if find(first) != find(int(m)))
            return
        for i, a in enumerate(sorted(map(int, members))):
            for b in sorted(map(int, members[i + 1 :])):
                pair = (min(a, b), max(a, b))
                if pair not in checked:
                    checked.add(pair)
                    yield pair

    for band in range(bands if bands is not None else num_perm // rows):
        pairs: list[tuple[int, int]] = []
        for members in _band_groups(signatures, band, rows, empty, mult):
            pairs.extend(candidates(members))
            if len(pairs) >= 4096:
                check(pairs)
                pairs = []
        if pairs:
            check(pairs)
    roots, jumped = parent, parent[parent]  # pointer jumping, in numpy: until each row points at its root
    while not np.array_equal(jumped, roots):
        roots, jumped = jumped, jumped[jumped]
    return np.where(roots == np.arange(n), -1, roots)


# ---------------------------------------------------------------------------------------------
# Exact duplicate paragraphs


def paragraph_fingerprint(text: str) -> int:
    """A 64-bit digest of the paragraph: the expected number of colliding pairs among a billion
    paragraphs is 0.03."""
    return int.from_bytes(hashlib.blake2b(text.encode("utf-8"), digest_size=8).digest(), "little")


class FingerprintSet:
    """A set of 64-bit fingerprints at 8 bytes each, where a Python set of ints takes ~60.

    Deduplicating web-sized sources keeps one fingerprint per kept paragraph (two with loose
    duplicates), so this is what the main process's memory grows with: a sorted numpy array plus a
    small Python set of recent additions, merged into the array (in linear time) when it fills up.
    Look fingerprints up a document at a time (`contains_many`: one binary search for all of them).
    """

    def __init__(self, fingerprints: Iterable[int] = (), buffer_size: int = 1 << 16):
        self._sorted = np.empty(0, dtype=np.uint64)
        self._recent: set[int] = set()
        self._buffer_size = buffer_size
        self.update(fingerprints)

    def __len__(self) -> int:
        self._merge()
        return len(self._sorted)

    def __contains__(self, fp: int) -> bool:
        return bool(self.contains_many([fp])[0])

    def contains_many(self, fps: Sequence[int]) -> np.ndarray:
        """For each fingerprint, whether the set holds it."""
        found = self._in_sorted(np.fromiter(fps, dtype=np.uint64, count=len(fps)))
        if self._recent:
            found |= np.fromiter((fp in self._recent for fp in fps), dtype=bool, count=len(fps))
        return found

    def add(self, fp: int) -> None:
        self._recent.add(fp)
        if len(self._recent) >= self._buffer_size:
            self._merge()

    def update(self, fps: Iterable[int]) -> None:
        for fp in fps:
            self.add(fp)

    def _merge(self) -> None:
        if not self._recent:
            return
        new = np.unique(np.fromiter(self._recent, dtype=np.uint64, count=len(self._recent)))
        self._recent.clear()
        new = new[~self._in_sorted(new)]
        self._sorted = np.insert(self._sorted, np.searchsorted(self._sorted, new), new)

    def _in_sorted(self, keys: np.ndarray) -> np.ndarray:
        if not len(self._sorted):
            return np.zeros(len(keys), dtype=bool)
        at = np.minimum(np.searchsorted(self._sorted, keys), len(self._sorted) - 1)
        return self._sorted[at] == keys


def loose_fingerprint(text: str) -> int:
    """Fingerprint of a paragraph's words with case, accents, spelling and punctuation folded away."""
    return int.from_bytes(
        hashlib.blake2b(" ".join(skeleton_words(text)).encode(), digest_size=8).digest(), "little"
    )


@dataclass
class ParagraphVerdict:
    """Which paragraphs of one book or document to keep, and the fingerprints they would add."""

    keep: list[int]
    reasons: Counter = field(default_factory=Counter)  # reason -> paragraphs dropped
    exact: set[int] = field(default_factory=set)
    loose: set[int] = field(default_factory=set)


class ParagraphDedup:
    """Duplicate paragraphs across the whole corpus, first occurrence kept, in the order of the calls.

    Exact duplicates always; with `loose`, the fingerprints of folded words (`loose_fingerprint`) are
    kept too, so a document's paragraph that only differs from an earlier one in case, accents or
    punctuation can be dropped as well. `check` decides without remembering; `add` commits a verdict
    (a document dropped as a whole must not shadow later copies of its paragraphs).
    """

    def __init__(self, config: DedupConfig = DedupConfig(), loose: bool = False):
        self.config = config
        self.seen = FingerprintSet()
        self.loose = FingerprintSet() if loose else None

    def check(self, paragraphs: Sequence[str], match_loose: bool = False) -> ParagraphVerdict:
        """Paragraphs shorter than `min_paragraph_chars` are always kept; a longer one is dropped when
        its exact (or, with `match_loose`, loose) fingerprint is known or came earlier in the text."""
        long = [i for i, text in enumerate(paragraphs) if len(text) >= self.config.min_paragraph_chars]
        fps = [paragraph_fingerprint(paragraphs[i]) for i in long]
        exact_seen = self.seen.contains_many(fps)
        if self.loose is not None:
            lfps = [loose_fingerprint(paragraphs[i]) for i in long]
            loose_seen = self.loose.contains_many(lfps) if match_loose else np.zeros(len(long), dtype=bool)
        else:
            lfps, loose_seen = [None] * len(long), np.zeros(len(long), dtype=bool)
        known = dict(zip(long, zip(fps, lfps, exact_seen, loose_seen, strict=True), strict=True))
        verdict = ParagraphVerdict(keep=[])
        for i in range(len(paragraphs)):
            if i not in known:
                verdict.keep.append(i)
                continue
            fp, lfp, fp_seen, lfp_seen = known[i]
            if fp_seen or fp in verdict.exact:
                verdict.reasons["duplicate_paragraph"] += 1
            elif match_loose and (lfp_seen or lfp in verdict.loose):
                verdict.reasons["near_duplicate_paragraph"] += 1
            else:
                verdict.keep.append(i)
                verdict.exact.add(fp)
                if lfp is not None:
                    verdict.loose.add(lfp)
        return verdict

    def add(self, verdict: ParagraphVerdict) -> None:
        self.seen.update(verdict.exact)
        if self.loose is not None:
            self.loose.update(verdict.loose)

    def keep(self, paragraphs: Sequence[str]) -> list[int]:
        """`check` and `add` in one: the indices to keep of a book, whose every paragraph counts."""
        verdict = self.check(paragraphs)
        self.add(verdict)
        return verdict.keep


def dedup_paragraphs(
    paragraphs: Sequence[str], seen: FingerprintSet, config: DedupConfig = DedupConfig()
) -> list[int]:
    """Indices of the paragraphs to keep; `seen` carries fingerprints across calls (and books).

    Call it on books in a fixed order: the first occurrence of a paragraph wins.
    """
    dedup = ParagraphDedup(config)
    dedup.seen = seen
    return dedup.keep(paragraphs)
