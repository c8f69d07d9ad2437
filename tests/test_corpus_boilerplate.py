"""Stage 2: header / body / footer in every Gutenberg layout, metadata, credits, notes, placeholders."""

from __future__ import annotations

import textwrap

import pytest
from hypothesis import given
from hypothesis import strategies as st

from corpus.boilerplate import (
    GUTENBERG_MENTION_RE,
    BookRejected,
    find_residue,
    mentions_gutenberg,
    parse_metadata,
    strip_gutenberg_boilerplate,
)
from corpus.decode import decode_gutenberg
from corpus.normalize import normalize_text, split_paragraphs

PROSE = (
    "Era uma vez um faroleiro que vivia sozinho no cabo, com um cão e uma cabra, e que todas as noites "
    "acendia a luz antes de se deitar. "
) * 6


def book(head: str, body: str, tail: str) -> str:
    return f"{head}\n{body}\n{tail}\n"


def test_golden_sample_books(samples):
    """Every layout of the project's fake collection gives back exactly its known body."""
    assert len({b.variant for b in samples}) >= 10
    for b in samples:
        text = decode_gutenberg(b.raw_bytes()).text
        if not b.cleanable:
            with pytest.raises(BookRejected) as e:
                strip_gutenberg_boilerplate(text)
            assert e.value.reason == "no_start_marker"
            continue
        stripped = strip_gutenberg_boilerplate(text)
        got = split_paragraphs(normalize_text(stripped.body))
        assert got == split_paragraphs(normalize_text(b.body)), (b.id, b.variant, b.features)
        assert find_residue(stripped.body) is None, (b.id, b.variant)


def test_sample_metadata(samples):
    by_variant = {b.variant: b for b in samples}
    b = by_variant["ebook-of-EBook/START-THIS"]
    meta = strip_gutenberg_boilerplate(decode_gutenberg(b.raw_bytes()).text).metadata
    assert meta.title == b.title and meta.author == b.author_display
    assert meta.language == "Portuguese" and meta.encoding == b.declared_charset
    assert meta.release_date and "#" not in meta.release_date


def test_2005_header_metadata_with_continuation_lines():
    header = (
        "The Project Gutenberg eBook, Tratado das Cores, by Diogo de Carvalho\n\n"
        "Title: Tratado das Cores\n       Que consta de tres partes\n\n"
        "Author: Diogo de Carvalho e Sampaio\n\n"
        "Release Date: February 5, 2010  [eBook #31190]\n\n"
        "Language: Portuguese\n\nCharacter set encoding: ISO-8859-1\n\n"
        "***START OF THE PROJECT GUTENBERG EBOOK TRATADO DAS CORES***\n"
    )
    meta = parse_metadata(header)
    assert meta.title == "Tratado das Cores Que consta de tres partes"
    assert meta.author == "Diogo de Carvalho e Sampaio"
    assert meta.release_date == "February 5, 2010"
    assert (meta.language, meta.encoding) == ("Portuguese", "ISO-8859-1")


def test_first_line_and_marker_fallbacks():
    assert parse_metadata("Project Gutenberg's Amor de Perdição, by Camillo Castello Branco\n").author == (
        "Camillo Castello Branco"
    )
    meta = parse_metadata("*** START OF THE PROJECT GUTENBERG EBOOK DOM CASMURRO ***\n")
    assert meta.title == "DOM CASMURRO" and meta.author is None
    assert parse_metadata("*** START OF THE PROJECT GUTENBERG EBOOK 11299 ***\n").title is None


def test_start_marker_title_wrapping_onto_next_line():
    text = book(
        "*** START OF THIS PROJECT GUTENBERG EBOOK OS FIDALGOS DA CASA MOURISCA\n(VOL. I) ***\n",
        PROSE,
        "*** END OF THIS PROJECT GUTENBERG EBOOK OS FIDALGOS ***\nlicense text",
    )
    s = strip_gutenberg_boilerplate(text)
    assert s.body.startswith("Era uma vez") and "(VOL. I)" in s.header
    assert s.footer.startswith("*** END OF THIS") and "license" in s.footer


@pytest.mark.parametrize(
    "end_line",
    [
        "End of the Project Gutenberg EBook of Dom Casmurro, by Machado de Assis",
        "End of Project Gutenberg's Amor de Perdição, by Camillo Castello Branco",
        "***END OF THE PROJECT GUTENBERG EBOOK DOM CASMURRO***",
        "*** END OF THE PROJECT GUTENBERG EBOOK 55752 ***",
        "End of the Project Gutenberg Etext of Os Lusíadas",
    ],
)
def test_every_end_line_cuts_the_body(end_line):
    text = book("***START OF THE PROJECT GUTENBERG EBOOK X***", PROSE, end_line + "\n\nmore license")
    s = strip_gutenberg_boilerplate(text)
    assert s.body.strip() == PROSE.strip()
    assert s.footer.startswith(end_line)


def test_small_print_1990s_header():
    head = "**The Project Gutenberg Etext of Cantos**\n*END*THE SMALL PRINT! FOR PUBLIC DOMAIN ETEXTS*Ver.04.29.93*END*"
    s = strip_gutenberg_boilerplate(book(head, PROSE, "End of the Project Gutenberg Etext of Cantos"))
    assert s.body.strip() == PROSE.strip()


def test_rejections_are_loud():
    with pytest.raises(BookRejected) as e:
        strip_gutenberg_boilerplate("The Project Gutenberg EBook of X\n\n" + PROSE)
    assert e.value.reason == "no_start_marker"
    with pytest.raises(BookRejected) as e:
        strip_gutenberg_boilerplate("*** START OF THE PROJECT GUTENBERG EBOOK X ***\n" + PROSE)
    assert e.value.reason == "no_end_marker"
    with pytest.raises(BookRejected) as e:
        strip_gutenberg_boilerplate(
            "*** START OF THE PROJECT GUTENBERG EBOOK X ***\n\nProduced by Ana\n\nFIM\n\n"
            "*** END OF THE PROJECT GUTENBERG EBOOK X ***\n"
        )
    assert e.value.reason == "too_little_text"


def test_credits_html_note_and_transcriber_notes_removed():
    body = "\n\n".join(
        [
            "Produced by Rita Farinha and the Online Distributed\nProofreading Team at http://www.pgdp.net",
            "Note: Project Gutenberg also has an HTML version of this\n      file which includes the original illustrations.",
            "Nota do transcritor:",
            "    Foram corrigidos diversos erros tipográficos menores, sem que seja\n    feita qualquer menção.",
            "  Pág.  Original        Corrigido\n  20    abnadonam       abandonam",
            PROSE,
            "[**Transcriber's note: In the original book there is a gap between pages\n235, 236 and 237.]",
            PROSE,
        ]
    )
    s = strip_gutenberg_boilerplate(
        book(
            "*** START OF THE PROJECT GUTENBERG EBOOK X ***",
            body,
            "*** END OF THE PROJECT GUTENBERG EBOOK X ***",
        )
    )
    assert split_paragraphs(normalize_text(s.body)) == [PROSE.strip()] * 2
    assert s.removed_blocks >= 5


def test_list_of_corrected_misprints_is_a_transcribers_note():
    """PGDP Portugal's "Lista de erros corrigidos": a heading, a sentence and a table of the misprints
    the transcriber fixed; the misspelt words ("pefil") must not reach the corpus."""
    errata = (
        "  +---------+--------------------+--------------------+\n"
        "  |         |      Original      |      Correcção     |\n"
        "  +---------+--------------------+--------------------+\n"
        "  |#pág.  53| pefil              | perfil             |\n"
        "  |#pág.  56| Fredrico           | Frederico          |\n"
        "  +---------+--------------------+--------------------+"
    )
    body = "\n\n".join(
        [
            PROSE,
            "Lista de erros corrigidos",
            "Aqui encontram-se listados todos os erros encontrados e corrigidos:",
            errata,
        ]
    )
    s = strip_gutenberg_boilerplate(
        book(
            "*** START OF THE PROJECT GUTENBERG EBOOK X ***",
            body,
            "*** END OF THE PROJECT GUTENBERG EBOOK X ***",
        )
    )
    assert split_paragraphs(normalize_text(s.body)) == [PROSE.strip()]
    assert s.removed_blocks >= 3


def test_placeholders_and_page_markers():
    lines = textwrap.wrap(PROSE, 70)
    wrapped = "\n".join(lines[:3] + ["[Pag. 19.]"] + lines[3:])  # a page break inside a wrapped paragraph
    body = "\n\n".join(
        [
            PROSE,
            "[Ilustração]",
            "[Illustration: Vista da vila, tirada do alto do monte, segundo\num desenho original da época]",
            "[Illustração: Fig. 60\n\n      Fig. 61\n\n      TUMULO DE EGUILAZ[103].]",
            wrapped,
            "{12}",
            "MORRA O DANTAS! [Nota do Transcritor: Aqui surge um ícone.] Viva!",
            "[Nota de rodapé 1: Copeiro.]",  # a footnote is the author's text: kept
        ]
    )
    s = strip_gutenberg_boilerplate(
        book(
            "*** START OF THE PROJECT GUTENBERG EBOOK X ***",
            body,
            "*** END OF THE PROJECT GUTENBERG EBOOK X ***",
        )
    )
    paras = split_paragraphs(normalize_text(s.body))
    assert paras == [
        PROSE.strip(),
        PROSE.strip(),
        "MORRA O DANTAS! Viva!",
        "[Nota de rodapé 1: Copeiro.]",
    ]


def test_residue_regex_flags_boilerplate_not_prose():
    assert find_residue("Era uma vez.\nProduced by Pedro Saborano\nFim.") == "Produced by Pedro Saborano"
    assert find_residue("more information at www.gutenberg.org/license") is not None
    assert find_residue("*** END OF THE PROJECT GUTENBERG EBOOK X ***") is not None
    assert find_residue("[Ilustração: Vista]") is not None
    assert find_residue("O conde de *** chegou; Gutenberg inventou a imprensa.") is None
    assert find_residue("and when rubber is\nproduced by the lands") is None  # prose, not a credit


def test_gutenberg_in_prose_does_not_end_the_body():
    """find_end looks at every line naming (G|g)utenberg or GUTENBERG; only a real END line cuts."""
    prose = PROSE + "\n\nO livro fala de Gutenberg e da imprensa; gutenberg e GUTENBERG também.\n"
    text = book(
        "*** START OF THE PROJECT GUTENBERG EBOOK X ***",
        prose,
        "*** END OF THE PROJECT GUTENBERG EBOOK X ***",
    )
    s = strip_gutenberg_boilerplate(text)
    assert "imprensa" in s.body and s.footer.startswith("*** END OF THE PROJECT GUTENBERG")
    lower = text.replace("*** END OF THE PROJECT GUTENBERG EBOOK X ***", "End of the Project gutenberg EBook")
    assert strip_gutenberg_boilerplate(lower).footer.startswith("End of the Project gutenberg")


def test_page_number_lines_only_when_alone_on_their_line():
    body = "\n".join(
        [
            "Primeira linha de uma página qualquer do livro,",
            "  {12}  ",
            "{13}",
            "segunda linha da mesma frase {14} que continua.",
            "{12345}",
            "x {15}",
            "{16} y",
            "{}",
            "última linha.",
        ]
    )
    text = book(
        "*** START OF THE PROJECT GUTENBERG EBOOK X ***", body, "*** END OF THE PROJECT GUTENBERG EBOOK X ***"
    )
    s = strip_gutenberg_boilerplate(text, min_body_chars=10)
    assert s.removed_placeholders == 2
    assert s.body.split("\n") == [
        "Primeira linha de uma página qualquer do livro,",
        "segunda linha da mesma frase {14} que continua.",
        "{12345}",
        "x {15}",
        "{16} y",
        "{}",
        "última linha.",
    ]


MENTION_FRAGMENTS = [
    "Project Gutenberg", "Projecto  Gutenberg", "www.gutenberg.org", "gutenberg.net", "pgdp.net", "pgdp",
    "Distributed\nProofreaders", "DISTRIBUTED PROOFREAD", "Dıstributed Proofread", "produced from scanned images",
    "produced from images", "Biblioteca Nacional Digital", "bnd.bn.pt", "abnd.bn.pt", "Pro\u017fe", "Ku",
    "GUTENBERG", "Guten berg", "Era uma vez", "\u0130MAGES", "—", "",
]  # fmt: skip


@given(st.lists(st.sampled_from(MENTION_FRAGMENTS), max_size=6), st.booleans())
def test_gutenberg_mention_prefilter_equals_the_regex(fragments, swap):
    block = " ".join(fragments)
    block = block.swapcase() if swap else block
    assert mentions_gutenberg(block) == bool(GUTENBERG_MENTION_RE.search(block))
