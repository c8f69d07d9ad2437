"""Stages 3-4: one text convention, prose unwrapped, verse kept, Portuguese hyphens kept, paragraphs."""

from __future__ import annotations

import re
import textwrap
import unicodedata
from collections import Counter

from hypothesis import given
from hypothesis import strategies as st

from corpus.normalize import (
    UnwrapConfig,
    _collapse_spaces,
    _is_nfc,
    estimate_wrap_width,
    is_prose_block,
    is_table_block,
    join_prose_lines,
    normalize_text,
    split_paragraphs,
)

PROSE = (
    "Quando o velho faroleiro desceu a escada, o mar batia com tanta força nas pedras que a torre inteira "
    "parecia tremer, e ele lembrou-se das noites de inverno em que o pai lhe contava histórias de naufrágios "
    "e de marinheiros perdidos no nevoeiro da costa."
)
STANZA = (
    "As armas e os barões assinalados,\n"
    "Que da ocidental praia Lusitana,\n"
    "Por mares nunca de antes navegados,\n"
    "Passaram ainda além da Taprobana,"
)


def test_prose_is_unwrapped_and_verse_keeps_its_lines():
    body = (
        "\n".join(textwrap.wrap(PROSE, 70)) + "\n\n" + STANZA + "\n\n" + "\n".join(textwrap.wrap(PROSE, 70))
    )
    assert split_paragraphs(normalize_text(body)) == [PROSE, STANZA, PROSE]


def test_indented_verse_and_a_pure_verse_book():
    indented = "\n".join("    " + line for line in STANZA.split("\n"))
    assert normalize_text(indented + "\n\n" + indented) == STANZA + "\n\n" + STANZA


def test_wrap_width_estimate_ignores_unwrapped_lines_and_has_a_floor():
    wrapped = "\n".join(textwrap.wrap(PROSE * 3, 66))
    assert 60 <= estimate_wrap_width(wrapped + "\n\n" + PROSE * 4) <= 66
    assert estimate_wrap_width(STANZA) == UnwrapConfig().min_wrap_width


def test_forced_break_test():
    lines = textwrap.wrap(PROSE, 70)
    assert is_prose_block(lines, 70)
    assert not is_prose_block(STANZA.split("\n"), 70)


def test_line_end_hyphen_is_kept_and_joined():
    assert join_prose_lines(["e o velho disse-", "lhe que o guarda-", "chuva era dele"]) == (
        "e o velho disse-lhe que o guarda-chuva era dele"
    )
    assert join_prose_lines(["no fim --", "disse ele"]) == "no fim -- disse ele"


def test_hyphenated_words_survive_whole_normalization():
    text = "\n".join(textwrap.wrap(PROSE.replace("lembrou-se", "disse-lhe"), 70, break_on_hyphens=True))
    assert "disse-lhe" in normalize_text(text)


def test_dashes_quotes_and_invisible_characters():
    text = "--Sim, disse elle--vamos.\n\n– Não quero.\n\n―Nunca.\n\n“Olá” e ‘adeus’ d’elle «sempre»"
    assert split_paragraphs(normalize_text(text)) == [
        "—Sim, disse elle—vamos.",
        "— Não quero.",
        "—Nunca.",
        "\"Olá\" e 'adeus' d'elle «sempre»",
    ]
    assert normalize_text("co\u00adra\u200bção\u00a0e\tpão  ali") == "coração e pão ali"
    assert normalize_text("1850–1860 e ----") == "1850–1860 e ----"  # en dash in ranges, rules kept


def test_nfc_and_italics():
    decomposed = unicodedata.normalize("NFD", "Constituição _muito_ nova e snake_case")
    out = normalize_text(decomposed)
    assert out == "Constituição muito nova e snake_case"
    assert unicodedata.is_normalized("NFC", out)


def test_bold_pluses_are_removed_like_italics_underscores():
    """Gutenberg's plain-text bold ("+ATENÇÃO+") made headings fail the symbol rule and put "+" in prose."""
    text = "+ATENÇÃO+\n\nchamar-se +Ortografia Portuguesa+. Dos seus _+menus+_ (+I PARTE+).\n\n+O DOIDO\nE A MORTE+"
    assert split_paragraphs(normalize_text(text)) == [
        "ATENÇÃO",
        "chamar-se Ortografia Portuguesa. Dos seus menus (I PARTE).",
        "O DOIDO\nE A MORTE",
    ]
    for not_bold in ("2 +3+ 4", "a+b+c", "+ 3 47 18 +", "+----+----+", "P^{5}+A^{3}+"):
        assert normalize_text(not_bold) == not_bold


TABLE = """\
+------------------+------------+--------+---------------+
|                  |            |        |  Rendimento   |
|    _Concelhos_   | Freguezias | Fogos  |  collectavel  |
+------------------+------------+--------+---------------+
|Agueda            |     18     |  4:656 |   44:621$949  |
|Albergaria a Velha|      8     |  3:224 |   22:014$110  |
|1854{             |            |   --   |               |
+==================+============+========+===============+"""


def test_ascii_table_becomes_one_row_a_line_with_its_cells_joined_by_bars():
    """Rules, empty cells and alignment go; the rows, as wide as the page, are not unwrapped as prose."""
    prose = PROSE + " " + PROSE
    body = "\n".join(textwrap.wrap(prose, 57)) + "\n\n" + TABLE
    assert is_prose_block(TABLE.split("\n"), estimate_wrap_width(body))  # what used to happen to it
    assert split_paragraphs(normalize_text(body)) == [
        prose,
        "Rendimento\n"
        "Concelhos | Freguezias | Fogos | collectavel\n"
        "Agueda | 18 | 4:656 | 44:621$949\n"
        "Albergaria a Velha | 8 | 3:224 | 22:014$110\n"
        "1854 | —",
    ]


def test_what_is_not_a_table():
    primer = ["Pa|ssa|ro, dú|vi|da, nú|me|ro,", "mé|di|co, pol|vo|ra, la|gri|ma."]  # syllable bars
    two_columns = [
        "O Reino de Portugal e o    | Observaçoens (de Brant",
        "Imperio do Brazil com os   | e Gameiro).",
    ]
    heading = ["RESULTADOS", "----------"]
    for lines in (primer, two_columns, heading):
        assert not is_table_block(lines), lines
    assert is_table_block(["+---+---+", "| a | b |", "| c | d |"])


def test_split_paragraphs_indices_are_positions():
    text = normalize_text("Um.\n\n\n\n   \n\nDois.\n\nTrês.")
    assert split_paragraphs(text) == ["Um.", "Dois.", "Três."]


def test_prose_wrapped_a_little_narrower_than_the_book_is_still_unwrapped():
    """Real files are not perfectly greedy: a paragraph re-wrapped at 66 in a book wrapped at 72."""
    body = "\n".join(textwrap.wrap(PROSE * 3, 72)) + "\n\n" + "\n".join(textwrap.wrap(PROSE, 66))
    assert split_paragraphs(normalize_text(body))[1] == PROSE
    assert not is_prose_block(textwrap.wrap(PROSE, 66), 72, slack=0)  # the strict test alone misses it


def test_long_line_verse_book_keeps_its_lines():
    alexandrines = (
        "Elle era bom; talvez um pouco rude e duro!\n"
        "Mas é que a vida é triste e o seu trabalho escuro\n"
        "Á chuva, ao frio, aos soes, e entre o luar gelado\n"
        "Faziam-o cruel; e ás noutes embriagado"
    )
    assert normalize_text(alexandrines + "\n\n" + alexandrines) == alexandrines + "\n\n" + alexandrines


@given(st.text(alphabet=" a-\n—", max_size=60))
def test_space_collapsing_equals_the_regex(text):
    assert _collapse_spaces(text) == re.sub(r"  +", " ", text)


def test_runs_of_spaces_and_hyphens_in_a_body():
    body = "Disse  elle   --   e ficou.\n\n----------\n\nFim -- de --- tudo."
    assert normalize_text(body) == "Disse elle — e ficou.\n\n----------\n\nFim — de --- tudo."


def _reference_wrap_width(text: str, config: UnwrapConfig) -> int:
    """The definition, spelled out with a Counter over text.split("\\n")."""
    histogram = Counter(n for n in map(len, text.split("\n")) if 0 < n <= config.max_wrap_width)
    total, seen, width = sum(histogram.values()), 0, 0
    for width in sorted(histogram):
        seen += histogram[width]
        if seen > config.wrap_width_percentile * total:
            break
    return max(width, config.min_wrap_width)


@given(st.lists(st.text(alphabet="ab \u00e9\u2014\U0001f642", max_size=120), max_size=30), st.floats(0, 1))
def test_wrap_width_equals_its_definition(lines, percentile):
    config = UnwrapConfig(wrap_width_percentile=percentile, min_wrap_width=3, max_wrap_width=100)
    text = "\n".join(lines)
    assert estimate_wrap_width(text, config) == _reference_wrap_width(text, config)


@given(st.text(alphabet="aeAE\u00e7\u00e3\u00c3\u0301\u0303\u0327\u2014\u212b\u00c5", max_size=12))
def test_nfc_check_equals_unicodedata(text):
    assert _is_nfc(text) == unicodedata.is_normalized("NFC", text)
