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
grouping and the paragraph pass are global and run once over all books.
"""

from __future__ import annotations

import functools
import hashlib
import re
import unicodedata
import zlib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from datasketch import MinHash, MinHashLSH


@dataclass(frozen=True)
class DedupConfig:
    num_perm: int = 128  # MinHash permutations: the Jaccard estimate has std ~ sqrt(J(1-J)/num_perm)
    shingle_words: int = 3  # word n-grams of the skeleton text; 3 separates editions from series best
    book_threshold: float = 0.4  # estimated Jaccard at or above which two books are editions of one work
    min_paragraph_chars: int = 64  # shorter paragraphs are never dropped as duplicates
    seed: int = 1


# ---------------------------------------------------------------------------------------------
# Near-duplicate books

MINHASH_SCHEME = "affine32"  # for datasketch objects rebuilt from our values (only LSH uses them)
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
# ints, so they cache as JSON and feed datasketch's LSH (scheme "affine32") unchanged.
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


def find_near_duplicate_books(
    signatures: Mapping[str, Sequence[int]],
    config: DedupConfig = DedupConfig(),
    sizes: Mapping[str, int] | None = None,
) -> list[DuplicateGroup]:
    """Group books whose signatures are at least `config.book_threshold` similar.

    LSH proposes candidate pairs, every pair is then checked on the full signature, and groups are
    the connected components. The kept book of a group is the largest one (by `sizes`, e.g. kept
    characters: the fullest edition), ties broken by the smallest key in numeric order, so the choice is
    deterministic. Keys are any strings (e.g. raw file stems, `55752` and `55752.alt-2017`).
    """
    # An empty book's signature is all "empty" values: it must not match other empty books.
    keys = sorted(k for k in signatures if any(int(v) != _EMPTY for v in signatures[k]))
    if len(keys) < 2:
        return []
    # LSH tuned below the threshold so that pairs just above it are rarely missed; it only proposes.
    lsh = MinHashLSH(threshold=max(0.1, 0.75 * config.book_threshold), num_perm=config.num_perm)
    hashes = {}
    for key in keys:
        hv = np.asarray(signatures[key], dtype=np.uint64)
        if hv.shape != (config.num_perm,):
            raise ValueError(f"signature of {key!r} has {hv.shape[0]} values, expected {config.num_perm}")
        hashes[key] = hv
        lsh.insert(
            key, MinHash(num_perm=config.num_perm, seed=config.seed, scheme=MINHASH_SCHEME, hashvalues=hv)
        )

    parent = {k: k for k in keys}

    def find(k: str) -> str:
        while parent[k] != k:
            parent[k] = parent[parent[k]]
            k = parent[k]
        return k

    edges: list[tuple[str, str, float]] = []
    for key in keys:
        query = MinHash(
            num_perm=config.num_perm, seed=config.seed, scheme=MINHASH_SCHEME, hashvalues=hashes[key]
        )
        for other in sorted(lsh.query(query)):
            if other <= key:
                continue
            sim = float(np.mean(hashes[key] == hashes[other]))
            if sim >= config.book_threshold:  # LSH is a sieve; the full signature decides
                edges.append((key, other, sim))
                ra, rb = find(key), find(other)
                if ra != rb:
                    parent[max(ra, rb)] = min(ra, rb)

    members: dict[str, list[str]] = {}
    for key in keys:
        members.setdefault(find(key), []).append(key)
    groups = []
    for root, group in sorted(members.items()):
        if len(group) < 2:
            continue
        kept = min(group, key=lambda k: (-(sizes or {}).get(k, 0), _natural(k)))
        sim = min(s for a, _, s in edges if find(a) == root)
        groups.append(DuplicateGroup(kept, [k for k in group if k != kept], sim))
    return groups


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


def dedup_paragraphs(
    paragraphs: Sequence[str], seen: FingerprintSet, config: DedupConfig = DedupConfig()
) -> list[int]:
    """Indices of the paragraphs to keep; `seen` carries fingerprints across calls (and books).

    Call it on books in a fixed order: the first occurrence of a paragraph wins.
    """
    long = [i for i, text in enumerate(paragraphs) if len(text) >= config.min_paragraph_chars]
    fps = [paragraph_fingerprint(paragraphs[i]) for i in long]
    known = dict(zip(long, zip(fps, seen.contains_many(fps), strict=True), strict=True))
    keep, new = [], set()
    for i in range(len(paragraphs)):
        if i in known:
            fp, was_seen = known[i]
            if was_seen or fp in new:
                continue
            new.add(fp)
        keep.append(i)
    seen.update(new)
    return keep
