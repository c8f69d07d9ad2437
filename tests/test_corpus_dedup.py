"""Stage 6: near-duplicate books (MinHash over spelling skeletons) and exact duplicate paragraphs."""

from __future__ import annotations

import random

import pytest

from corpus.dedup import (
    DedupConfig,
    FingerprintSet,
    book_signature,
    dedup_paragraphs,
    find_near_duplicate_books,
    minhash,
    signature_similarity,
    skeleton_words,
)

WORDS_TEXT = (
    "o a os as de do da dos das em no na um uma que se por para com não mais como mas ao ele ela "
    "mar terra rei reino gente armas barões naus vento fortuna glória memória engenho arte canto "
    "peito ilustre fama vitória guerra perigo força humana remota novo nunca antes ainda além "
    "casa rua cidade noite dia sol lua céu rio monte campo flor amor dor tempo vida morte alma"
)
WORDS = WORDS_TEXT.split()


def make_book(seed: int, n_paragraphs: int = 60, words_per_paragraph: int = 40) -> list[str]:
    rng = random.Random(seed)
    return [
        " ".join(rng.choice(WORDS) for _ in range(words_per_paragraph)).capitalize() + "."
        for _ in range(n_paragraphs)
    ]


def old_spelling(text: str) -> str:
    """A crude 16th-century rendering: long s, ampersand, u for v, y for i, doubled consonants."""
    out = text.replace(" e ", " & ").replace("ss", "ſs").replace("v", "u").replace("ai", "ay")
    return out.replace("s", "ſ").replace("ão", "am").replace("l", "ll")


def test_skeleton_folds_old_and_modern_spelling_together() -> None:
    old = "As armas, & os barões aſsinalados,\nQue da Occidental praya Luſi-\ntana"
    new = "As armas e os barões assinalados, Que da ocidental praia Lusitana"
    assert skeleton_words(old) == skeleton_words(new)
    assert skeleton_words("Navegação") != skeleton_words("Revolução")


@pytest.mark.parametrize("jaccard", [0.1, 0.5, 0.9])
def test_minhash_estimates_jaccard(jaccard: float) -> None:
    # Two sets of 5000 items sharing `common`: |A & B| / |A | B| == jaccard.
    n = 5000
    common = round(2 * n * jaccard / (1 + jaccard))
    a = [f"shared {i}".encode() for i in range(common)] + [f"a {i}".encode() for i in range(n - common)]
    b = [f"shared {i}".encode() for i in range(common)] + [f"b {i}".encode() for i in range(n - common)]
    estimates = [signature_similarity(minhash(a, 256, seed), minhash(b, 256, seed)) for seed in range(4)]
    assert abs(sum(estimates) / 4 - jaccard) < 0.05  # std of the mean ~0.016 at J=0.5


def test_signature_similarity_tracks_overlap() -> None:
    book = make_book(1)
    same = signature_similarity(book_signature(book), book_signature(list(book)))
    edited = [p if i % 10 else p.replace("mar", "monte") for i, p in enumerate(book)]
    close = signature_similarity(book_signature(book), book_signature(edited))
    other = signature_similarity(book_signature(book), book_signature(make_book(2)))
    assert same == 1.0
    assert close > 0.7
    assert other < 0.1


def test_editions_grouped_and_series_volumes_kept_apart() -> None:
    preface = ["Obra publicada pela Academia Real das Ciências de Lisboa em memória do autor."] * 3
    work = make_book(10)
    sigs = {
        "100": book_signature(work),
        # Another edition: old spelling, a different preface, a few lost paragraphs.
        "205": book_signature(["Edição fac-similar."] + [old_spelling(p) for p in work[:-4]]),
        # Volumes of a series: same front matter, different text.
        "301": book_signature(preface + make_book(11)),
        "302": book_signature(preface + make_book(12)),
        "303": book_signature(preface + make_book(13)),
    }
    groups = find_near_duplicate_books(sigs, sizes={"100": 100, "205": 90, "301": 1, "302": 1, "303": 1})
    assert [(g.kept, g.dropped) for g in groups] == [("100", ["205"])]
    assert 0.4 <= groups[0].similarity <= 1.0


def test_kept_edition_is_the_largest_then_the_lowest_number() -> None:
    book = make_book(3)
    sigs = {"3333": book_signature(book), "999": book_signature(book), "3333.alt": book_signature(book)}
    bigger_alt = find_near_duplicate_books(sigs, sizes={"3333": 5, "999": 5, "3333.alt": 6})
    assert [(g.kept, sorted(g.dropped)) for g in bigger_alt] == [("3333.alt", ["3333", "999"])]
    tie = find_near_duplicate_books(sigs, sizes={"3333": 5, "999": 5, "3333.alt": 5})
    assert tie[0].kept == "999"  # numeric order, not string order ("3333" < "999")


def test_transitive_editions_form_one_group() -> None:
    base = make_book(4, n_paragraphs=100)
    # a ~ b and b ~ c share most paragraphs, a and c share about half.
    a, b, c = base[:70], base[15:85], base[30:100]
    sigs = {
        "1": book_signature(a),
        "2": book_signature(b),
        "3": book_signature(c),
        "4": book_signature(make_book(5)),
    }
    groups = find_near_duplicate_books(sigs, DedupConfig(book_threshold=0.5))
    assert len(groups) == 1 and sorted([groups[0].kept, *groups[0].dropped]) == ["1", "2", "3"]


def test_signature_of_wrong_length_is_rejected() -> None:
    with pytest.raises(ValueError, match="expected 128"):
        find_near_duplicate_books({"1": [1, 2, 3], "2": [1, 2, 3]})


def test_no_groups_for_fewer_than_two_books() -> None:
    assert find_near_duplicate_books({}) == []
    assert find_near_duplicate_books({"1": book_signature(make_book(1))}) == []
    # Books without text do not all match each other.
    assert find_near_duplicate_books({"1": book_signature([]), "2": book_signature([""])}) == []


def test_dedup_paragraphs_first_occurrence_wins_across_books() -> None:
    config = DedupConfig(min_paragraph_chars=20)
    long_a = "Este prefácio aparece em todos os volumes da coleção."
    long_b = "Nota do transcritor: a ortografia original foi mantida."
    seen = FingerprintSet()
    book1 = ["I", long_a, "Texto próprio do primeiro volume, único.", long_a, "FIM"]
    book2 = ["I", long_a, long_b, "Texto do segundo volume, também único.", "FIM", long_b]
    assert dedup_paragraphs(book1, seen, config) == [0, 1, 2, 4]  # repeat inside the book dropped
    assert dedup_paragraphs(book2, seen, config) == [0, 2, 3, 4]  # short "I"/"FIM" kept everywhere
    # A fresh `seen` starts over.
    assert dedup_paragraphs(book2, FingerprintSet(), config) == [0, 1, 2, 3, 4]


def test_dedup_paragraphs_is_exact() -> None:
    seen = FingerprintSet()
    p = "Uma frase comprida o bastante para ser considerada na deduplicação exata."
    assert dedup_paragraphs([p, p + " ", p.upper()], seen, DedupConfig(min_paragraph_chars=10)) == [0, 1, 2]


@pytest.mark.realbooks
def test_real_editions_found_and_opusculos_volumes_kept(shared_books) -> None:
    from corpus.clean import clean_book

    books = shared_books / "books"
    keys = ["3333", "27236", "55752", "55752.alt-2017", "16111", "16922", "17036", "17177", "30566"]
    sigs, sizes = {}, {}
    for key in keys:
        book = clean_book((books / f"{key}.txt").read_bytes(), int(key.split(".")[0]))
        sigs[key] = book_signature(book.paragraphs)
        sizes[key] = book.kept_chars
    groups = {(g.kept, *sorted(g.dropped)) for g in find_near_duplicate_books(sigs, sizes=sizes)}
    assert {frozenset(g) for g in groups} == {
        frozenset({"3333", "27236"}),
        frozenset({"55752", "55752.alt-2017"}),
    }


def test_fingerprint_set_is_a_set_across_merges() -> None:
    """Membership, length and repeats agree with a Python set, over many merges of the buffer and
    values above 2**63 (the top bit set, where a signed conversion would go wrong)."""
    rng = random.Random(0)
    values = [rng.getrandbits(64) for _ in range(3000)] + [2**64 - 1, 2**63, 0, 1]
    fps, ref = FingerprintSet(buffer_size=64), set()
    for i, v in enumerate(values):
        assert (v in fps) == (v in ref)
        fps.add(v)
        ref.add(v)
        if i % 7 == 0:  # repeats are not stored twice
            fps.add(values[i // 2])
            ref.add(values[i // 2])
    assert len(fps) == len(ref)
    assert all(v in fps for v in ref)
    absent = [rng.getrandbits(64) for _ in range(2000)]
    assert [v in fps for v in absent] == [v in ref for v in absent]
    assert dedup_paragraphs(["x" * 80, "y" * 80, "x" * 80], FingerprintSet(), DedupConfig()) == [0, 1]


def test_book_groups_and_similarities_match_every_pair_compared() -> None:
    """The books' search goes through the one LSH (`near_duplicates`, bands chosen by `lsh_bands`):
    its groups and each group's lowest similarity are those of comparing every pair of books."""
    import numpy as np

    from corpus.dedup import lsh_bands

    assert lsh_bands(0.3, 128) == (37, 3)  # pairs just above 0.4 are rarely missed
    rng = np.random.default_rng(7)
    originals = rng.integers(0, 2**32 - 1, size=(12, 128), dtype=np.uint64)
    sigs: dict[str, list[int]] = {}
    for i in range(36):
        sig = originals[i % 12].copy()
        changed = rng.random(128) < [0.0, 0.3, 0.55][i // 12]  # copies ~70% and ~45% equal
        sig[changed] = rng.integers(0, 2**32 - 1, size=int(changed.sum()), dtype=np.uint64)
        sigs[str(1000 + i)] = [int(v) for v in sig]
    config = DedupConfig()
    keys = sorted(sigs)
    parent = {k: k for k in keys}

    def find(k: str) -> str:
        while parent[k] != k:
            k = parent[k]
        return k

    edges = []
    for i, a in enumerate(keys):
        for b in keys[i + 1 :]:
            sim = signature_similarity(sigs[a], sigs[b])
            if sim >= config.book_threshold:
                edges.append((a, sim))
                ra, rb = find(a), find(b)
                parent[max(ra, rb)] = min(ra, rb)
    expected = {}
    for k in keys:
        expected.setdefault(find(k), set()).add(k)
    expected = {r: g for r, g in expected.items() if len(g) > 1}
    lowest = {r: min(s for a, s in edges if find(a) == r) for r in expected}
    groups = find_near_duplicate_books(sigs, config)
    assert len(expected) == 12  # every original with both its copies
    assert {frozenset([g.kept, *g.dropped]) for g in groups} == {frozenset(g) for g in expected.values()}
    assert {min([g.kept, *g.dropped]): round(g.similarity, 4) for g in groups} == {
        r: round(s, 4) for r, s in lowest.items()
    }
