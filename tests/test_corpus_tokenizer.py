"""Stage 8: SentencePiece training from an iterator, lossless round trip, long paragraphs."""

from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from corpus.tokenizer import (
    BOS_ID,
    EOS_ID,
    PAD_ID,
    UNK_ID,
    TokenizerConfig,
    encode_batch,
    load_tokenizer,
    separator_ids,
    split_long_text,
    train_tokenizer,
)

WORDS_TEXT = (
    "o a os de da do em um uma que se não mais como mas ao ele ela mar terra rei gente armas "
    "barões navegação coração ação canção mãe irmã avô pôr já até também 1.º 2.ª Sr.ª nº"
)
WORDS = WORDS_TEXT.split()


def paragraphs(n: int, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    out = []
    for i in range(n):
        words = [rng.choice(WORDS) for _ in range(rng.randint(5, 40))]
        text = " ".join(words).capitalize() + "."
        if i % 5 == 0:  # verse: line breaks and indentation
            text = text.replace(" mar ", "\n  mar ").replace(" rei ", "\nrei ")
        out.append(text)
    return out


@pytest.fixture(scope="module")
def small_model(tmp_path_factory):
    prefix = tmp_path_factory.mktemp("tok") / "spm"
    path = train_tokenizer(iter(paragraphs(1500)), prefix, TokenizerConfig(vocab_size=400, num_threads=2))
    return path, load_tokenizer(path)


def test_reserved_ids_and_vocab(small_model) -> None:
    path, sp = small_model
    assert path.name == "spm.model" and path.exists()
    assert not list(path.parent.glob("*.tmp"))
    assert (
        (sp.unk_id(), sp.bos_id(), sp.eos_id(), sp.pad_id())
        == (UNK_ID, BOS_ID, EOS_ID, PAD_ID)
        == (0, 1, 2, 3)
    )
    assert sp.get_piece_size() == 400


@pytest.mark.parametrize(
    "text",
    [
        "  E então,\n    indentado\n\tcom tab",  # verse indentation and line breaks
        "O 1.º e a 2.ª vez; nº 3 — «aspas» “curvas”",  # º/ª survive (NFKC would make them o/a)
        "espaços  duplos   e no fim   ",
        "Ñandú 😀 Ωμέγα 漢字",  # unseen characters go through byte fallback
        "\n começa com quebra",
    ],
)
def test_round_trip_is_exact(small_model, text: str) -> None:
    _, sp = small_model
    ids = sp.encode(text)
    assert UNK_ID not in ids
    assert sp.decode(ids) == text


def test_separator_is_a_paragraph_break(small_model) -> None:
    _, sp = small_model
    sep = separator_ids(sp)
    assert sep and sp.decode(sep) == "\n\n"
    assert all(sp.id_to_piece(i) != "▁" for i in sep)


def test_batch_encoding_matches_one_by_one(small_model) -> None:
    _, sp = small_model
    texts = paragraphs(200, seed=3)
    assert encode_batch(sp, texts, num_threads=2) == [sp.encode(t) for t in texts]


def test_training_is_deterministic(tmp_path) -> None:
    config = TokenizerConfig(vocab_size=400, num_threads=2)
    a = train_tokenizer(iter(paragraphs(1500)), tmp_path / "a", config).read_bytes()
    b = train_tokenizer(iter(paragraphs(1500)), tmp_path / "b", config).read_bytes()
    assert a == b


def test_long_paragraphs_are_cut_for_training_not_skipped(tmp_path) -> None:
    # "ornitorrinco" appears only inside one paragraph far longer than the trainer's limit.
    long_paragraph = " ".join(["ornitorrinco"] * 1500)  # ~19 KB
    config = TokenizerConfig(vocab_size=400, max_sentence_length=2048, num_threads=2)
    sp = load_tokenizer(train_tokenizer(iter(paragraphs(300) + [long_paragraph]), tmp_path / "m", config))
    assert sp.piece_to_id("▁ornitorrinco") != UNK_ID
    # Encoding has no length limit.
    assert sp.decode(sp.encode(long_paragraph)) == long_paragraph


@settings(max_examples=60, deadline=None)
@given(st.text(min_size=0, max_size=400), st.integers(min_value=4, max_value=64))
def test_split_long_text_pieces_fit_and_join_back(text: str, max_bytes: int) -> None:
    pieces = split_long_text(text, max_bytes)
    assert "".join(pieces) == text
    assert all(len(p.encode("utf-8")) <= max_bytes for p in pieces)


def test_split_long_text_prefers_line_then_sentence_breaks() -> None:
    verse = "Primeiro verso longo\nSegundo verso longo\nTerceiro verso"
    assert split_long_text(verse, 25) == ["Primeiro verso longo\n", "Segundo verso longo\n", "Terceiro verso"]
    prose = "Uma frase. Outra frase. Mais uma."
    assert split_long_text(prose, 13) == ["Uma frase. ", "Outra frase. ", "Mais uma."]


def test_vocab_too_large_for_the_text_fails_clearly(tmp_path) -> None:
    with pytest.raises(RuntimeError, match="vocab_size"):
        train_tokenizer(iter(["abc abd", "abe"]), tmp_path / "x", TokenizerConfig(vocab_size=5000))


def test_bad_model_type_rejected() -> None:
    with pytest.raises(ValueError, match="model_type"):
        TokenizerConfig(model_type="wordpiece")


@pytest.mark.realbooks
def test_round_trip_on_real_paragraphs(shared_books, tmp_path) -> None:
    from corpus.clean import clean_book

    real = []
    for key in ("3333", "55752"):  # verse (Os Lusíadas) and prose (Dom Casmurro)
        real += clean_book((shared_books / "books" / f"{key}.txt").read_bytes(), int(key)).paragraphs
    sp = load_tokenizer(train_tokenizer(iter(real), tmp_path / "real", TokenizerConfig(vocab_size=1000)))
    assert any("\n" in p for p in real)
    ids = encode_batch(sp, real, num_threads=2)
    assert [sp.decode(x) for x in ids] == real
    assert sum(x.count(UNK_ID) for x in ids) == 0
