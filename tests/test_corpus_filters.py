"""Stage 5: every paragraph drop has a reason code; Portuguese (and its Galician-looking cousins) stays."""

from __future__ import annotations

import pytest

from corpus.filters import (
    FilterConfig,
    detect_language,
    detect_languages,
    drop_reason,
    filter_paragraphs,
    is_sentence,
    is_table,
    prepare_heads,
    quick_is_portuguese,
    toc_like,
)

PT = (
    "O velho faroleiro desceu a escada devagar, porque a noite estava escura e o mar batia com força nas "
    "pedras; lembrou-se então do pai, que lhe contava histórias de naufrágios."
)
EN = (
    "The rubber trade of the Amazon valley is carried on by a number of firms which have their houses in "
    "Manaos and Pará, and the greater part of the produce is shipped to Liverpool and New York."
)
FR = "Le doux Printemps revient, et ranime à la fois les oiseaux, les zéphirs, et les fleurs, et ma voix."
LABELLED_TABLE = (
    "Concelhos | Freguezias | Fogos | Almas\nAgueda | 18 | 4:656 | 17:330\nAnadia | 12 | 3:914 | 13:475\n"
    "Aveiro | 9 | 4:707 | 17:988\nSomma | 39 | 13:277 | 48:793"
)
OLD_PT_GL = (
    "E disse el-rei que nom queria mais guerra com Castella, e que os fidalgos se tornassem pera suas "
    "terras, e assi foi feito como elle mandava."
)


@pytest.mark.parametrize(
    "paragraph, reason",
    [
        ("CAPITULO XVII", "too_short"),
        ("D. MENDO", "too_short"),
        ("—Sim.", None),
        ("Ninguem.", None),
        ("." * 70, "symbols"),
        ("+----------+------------+ | | Original | Correcção | +-----+", "symbols"),
        ("No continente 22.300:000$000 Nas ilhas 2.750:000$000 total 25.050:000$000", "digits"),
        ("Capitulo I ....................... 5\nCapitulo II ...................... 17", "toc_index"),
        ("Abrantes, 12, 45, 78.\nAlcobaça, 3, 19.\nAveiro, 88.", "toc_index"),
        (PT, None),
        ("§§§ ### @@@ ~~~ ^^^ ¤¤¤ *** ### §§§ @@@", "symbols"),  # a line of junk
        (LABELLED_TABLE, None),  # rows labelled with words: text, figures and all
        ("Idades | Pêso\n10 | 26\n11 | 33\n12 | 34\n13 | 38,5", "digits"),  # a grid of figures
        ("Sinal | Valor\n@@ | ##\n¤¤ | ©©\n~~ | ^^\n<< | >>", "symbols"),  # a table of junk
    ],
)
def test_drop_reasons(paragraph, reason):
    assert drop_reason(paragraph, FilterConfig()) == reason


def test_tables_are_normalized_tables_only():
    assert is_table(LABELLED_TABLE)
    assert not is_table("Concelhos | Fogos | Almas")  # one row
    assert not is_table("Agueda | 4:656\nAnadia | 3:914\nAveiro\nFeira\nOvar")  # mostly not rows
    # two columns of text: bars at the edges (empty cells), lines interleaving two texts
    two_columns = "O Reino de Portugal e o | Observaçoens (de Brant\nImperio do Brazil com os | e Gameiro).\n"
    assert not is_table(two_columns + "limites, que tinhão em Abril |\n|")


def test_sentence_and_toc_helpers():
    assert is_sentence("—Não...") and is_sentence("«Vamos!»") and is_sentence("Ou ainda:")
    assert not is_sentence("MOTE.") and not is_sentence("12.") and not is_sentence("O delirio")
    assert not toc_like("Lisboa, 1877.")  # a lone imprint line is not a contents line
    assert toc_like("Introducção .......... 12")


def test_quick_gate():
    assert quick_is_portuguese(PT)
    assert not quick_is_portuguese(EN)
    assert not quick_is_portuguese(FR)
    assert not quick_is_portuguese("Quizera-o alli sempre")  # too little evidence: asks the model


def test_language_model_calls():
    cfg = FilterConfig()
    assert detect_language(EN, cfg)[0] == "en" and detect_language(EN, cfg)[1] < 0.05
    assert detect_language(PT, cfg)[1] > 0.9
    assert detect_language(OLD_PT_GL, cfg)[1] >= cfg.min_accept_probability  # pt or gl: both accepted


def test_filter_counts_reasons_and_keeps_order():
    paragraphs = [
        "A MORGADINHA",
        PT,
        EN,
        "A MORGADINHA",
        FR,
        "—Não.",
        "A MORGADINHA",
        "—Não.",
        "—Não.",
        OLD_PT_GL,
    ]
    # the repeated rule alone: without grouping, as a web document's lines are filtered
    result = filter_paragraphs(paragraphs, FilterConfig(min_chars=5, group_short=False))
    assert result.kept == ["A MORGADINHA", PT, "—Não.", "—Não.", "—Não.", OLD_PT_GL]
    assert result.drops == {"repeated": 2, "not_portuguese": 2}
    assert result.dropped_chars["not_portuguese"] == len(EN) + len(FR)
    assert 0.4 < result.foreign_fraction < 0.7
    kept, drops = result  # unpacks as (kept, drops)
    assert kept == result.kept and drops == dict(result.drops)


def test_language_filter_can_be_switched_off_and_gate_agrees_with_model():
    paragraphs = [PT, EN]
    assert filter_paragraphs(paragraphs, FilterConfig(language_filter=False)).kept == [PT, EN]
    with_gate = filter_paragraphs(paragraphs, FilterConfig())
    without_gate = filter_paragraphs(paragraphs, FilterConfig(quick_gate=False))
    assert with_gate.kept == without_gate.kept == [PT]
    assert with_gate.langid_calls == 1 and without_gate.langid_calls == 2


def test_fast_path_gives_the_same_reasons_as_the_regex_path():
    """filter_paragraphs skips the symbol/digit regex for letter-only heads; the verdicts must not change."""
    cfg = FilterConfig()
    paragraphs = [
        PT,
        EN,
        FR,
        "—Sim.",
        "." * 70,
        "a . . . . . . . . b",
        "x_y_z " * 10,
        "Preço: 20$000 réis, 1881.",
    ]
    paragraphs += [
        "Capitulo I ....... 5",
        "| a | b | c | d | e | f | g |",
        LABELLED_TABLE,
        "Olá, «amigo» d'elle (disse) — já!",
    ]
    gate, plain = prepare_heads([p[: cfg.ratio_head_chars] for p in paragraphs])
    assert len(gate) == len(plain) == len(paragraphs)
    for p, head in zip(paragraphs, plain, strict=True):
        assert drop_reason(p, cfg, head) == drop_reason(p, cfg), p


def test_batched_language_id_is_identical_to_py3langid():
    """detect_languages walks py3langid's automaton for many paragraphs at once in numpy; every result
    must equal the one-paragraph-at-a-time library call exactly (same float, not just the same verdict)."""
    cfg = FilterConfig()
    paragraphs = [PT, EN, FR, OLD_PT_GL, PT.upper(), "", "x", "12345 67890", "ÇÃO ÕES ÂNCORA", EN + " " + PT]
    paragraphs += ["Que bello dia! " * 3, "Il était une fois, dans un pays lointain, un roi.", "🙂 " * 20]
    paragraphs += [PT[i:] for i in range(0, 60, 7)]  # shifted windows: automaton states across offsets
    batched = detect_languages(paragraphs, cfg)
    assert batched == [detect_language(p, cfg) for p in paragraphs]
    assert detect_languages([], cfg) == []
    assert detect_languages([EN], cfg) == [detect_language(EN, cfg)]  # a batch of one: no cross-talk


def test_filter_verdicts_equal_the_one_by_one_reference():
    """filter_paragraphs decides common prose inline and batches language id; on a mixed book the
    verdicts must be those of drop_reason + quick gate + detect_language applied paragraph by paragraph."""
    cfg = FilterConfig(group_short=False)  # the rules on the paragraphs as given (grouping is tested apart)
    paragraphs = [PT, EN, "CAPITULO I", FR, "Introducção .......... 12", OLD_PT_GL, "—Sim.", "Lisboa, 1877."]
    paragraphs += ["Quizera-o alli sempre, e mais nada se ouvia na casa.", "x_y_z " * 10, "A" * 30 + " 9"]
    result = filter_paragraphs(paragraphs, cfg)
    expected = []
    for p in paragraphs:
        reason = drop_reason(p, cfg)
        tested = reason is None and len(p) >= cfg.langid_min_chars and not quick_is_portuguese(p[:200])
        if tested and detect_language(p, cfg)[1] < cfg.min_accept_probability:
            reason = "not_portuguese"
        expected.append(reason)
    assert result.kept == [p for p, r in zip(paragraphs, expected, strict=True) if r is None]
    assert sum(result.drops.values()) == sum(r is not None for r in expected)


def test_empty_book_and_nul_characters_keep_paragraphs_aligned():
    """prepare_heads joins heads with NUL: a NUL inside a paragraph must not shift the views by one."""
    assert filter_paragraphs([]).kept == [] and prepare_heads([]) == ([], [])
    nul = "abc\x00def " * 10
    gate, plain = prepare_heads([nul, PT])
    assert len(gate) == len(plain) == 2 and plain[1].isalpha()
    result = filter_paragraphs([nul, PT, EN])
    assert result.kept == [PT] and result.drops == {"symbols": 1, "not_portuguese": 1}
