"""Stages 3-4: one text convention, prose unwrapped, verse kept, Portuguese hyphens kept, paragraphs."""

from __future__ import annotations

import textwrap
import unicodedata

from corpus.normalize import (
    UnwrapConfig,
    estimate_wrap_width,
    is_prose_block,
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
