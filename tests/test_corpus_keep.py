"""The filters keep Portuguese typography, plays, verse and short documents, and still drop junk (issue 22)."""

from __future__ import annotations

import pytest

from corpus.doc_filters import DocFilterConfig, DocumentRejected, clean_document, is_bullet_line
from corpus.filters import FilterConfig, filter_paragraphs, group_short_paragraphs
from corpus.normalize import normalize_text, split_paragraphs

DIALOGUE = [
    "Sim, senhor, respondeu o velho, sem levantar os olhos da rede que remendava.",
    "Então não vem cá a sua filha esta noite, como prometeu ao padre?",
    "Não vem, que está doente e a mãe não a deixa sair com este frio.",
    "Pois diga-lhe que eu passo por lá amanhã, depois da missa, para a ver.",
    "Diga o senhor o que quiser, mas ela não há-de querer falar com ninguém.",
    "Veremos isso, tornou ele, e foi-se pela rua abaixo a assobiar baixinho.",
]


def kept(text: str, config: DocFilterConfig | None = None) -> str | None:
    """None when the document is kept, else its drop reason."""
    try:
        clean_document(text, config)
    except DocumentRejected as e:
        return e.reason
    return None


@pytest.mark.parametrize("dash", ["— ", "—", "- ", "-- ", "– "])
def test_dialogue_page_is_kept_whatever_the_dash(dash):
    assert kept("\n".join(dash + line for line in DIALOGUE)) is None


def test_guillemet_quotation_and_continued_quotes_are_kept():
    text = (
        "«Meu filho, disse a mãe, não te fies nos homens da cidade, que falam bonito e pagam mal.\n"
        "» Quando lá chegares, procura o teu tio, que é homem de bem e te há-de dar trabalho.\n"
        "» E escreve-nos todos os meses, que o teu pai não dorme enquanto não sabe de ti.»"
    )
    assert kept(text) is None


def test_bulleted_list_is_still_dropped():
    items = [
        "Arroz branco de boa qualidade",
        "Feijão preto da terra",
        "Azeite de oliva extra virgem",
        "Sal grosso para o churrasco",
        "Pão de forma integral",
        "Leite gordo em caixa",
    ]
    for bullet in ("• ", "- ", "* "):
        text = "Lista de compras da semana para a casa de campo\n" + "\n".join(bullet + i for i in items * 2)
        assert kept(text) == "bullet_lines", bullet
    assert is_bullet_line("- Arroz") and not is_bullet_line("- Não quero, senhor.")
    assert not is_bullet_line("*BEMAVENTURADO*—O que sente a sege.")


def test_paragraph_sized_document_is_kept_and_a_caption_is_not():
    paragraph = "A chuva caiu toda a noite sobre a aldeia, e de manhã o rio tinha levado a ponte velha."
    assert kept(paragraph) is None  # 18 words: under Gopher's 50, a paragraph all the same
    assert kept("Foto: a ponte velha da aldeia.") == "too_short"
    assert kept(paragraph, DocFilterConfig(min_words=50)) == "too_short"  # a source may ask for more


def test_verse_with_trailing_ellipses_and_a_refrain_is_kept():
    stanza = (
        "Fugiu de mim a vã melancolia!...\nElla é franca e alegre como a vinha...\n"
        "E em quanto o padre está na sachristia\nEu devoro-lhe as aves na cosinha.\n"
        "Da terra onde eu era livre,\nDa terra onde eu era rei!"
    )
    assert kept(stanza) is None


def test_play_scene_in_a_document_is_not_shouting_or_repetition():
    scene = "\n".join(
        ["ANTÓNIO.", "Que fazes tu aqui a estas horas, mulher, com a candeia apagada?"]
        + ["D. BRANCA —", "Espero o meu marido, que ainda não voltou do mar desde ontem."]
        + ["ANTÓNIO.", "Pois não esperes mais, que o barco dele foi visto ao largo da barra."]
        + ["D. BRANCA —", "Então Deus seja louvado, que o trouxe são e salvo para casa."]
    )
    assert kept(scene) is None


@pytest.mark.parametrize(
    "text, reason",
    [
        (
            " ".join(["comprar barato frete grátis promoção oferta desconto loja online"] * 6),
            "few_stop_words",
        ),
        ("Aproveite a nossa promoção: compre agora e ganhe frete grátis em todas as compras!", "spam_words"),
        (
            "\n".join(["Trabalhe em casa com o nosso método, é fácil e seguro!"] * 8),
            "duplicate_lines",
        ),
        (" ".join(["COMPRE JÁ O SEU CELULAR NOVO COM O MELHOR PREÇO DA CIDADE"] * 3), "uppercase"),
    ],
)
def test_spam_is_still_dropped(text, reason):
    assert kept(text) == reason


def test_spam_words_leave_prose_about_shops_and_short_news_alone():
    prose = "O pai foi à loja comprar papel e tinta, e voltou tarde, porque a loja estava cheia de gente."
    assert kept(prose) is None
    assert kept("O site do ministério ficou fora do ar durante toda a manhã de ontem.") is None


def test_foreign_paragraph_is_still_dropped_when_short():
    english = "The old man walked slowly down the road, and the children followed him to the river."
    assert kept(english) == "not_portuguese"


def test_play_keeps_its_speaker_labels_with_their_speeches():
    paragraphs = [
        "ACTO PRIMEIRO",
        "SCENA I",
        "ANTÓNIO.",
        "Que fazes tu aqui a estas horas, mulher, com a candeia apagada?",
        "D. BRANCA —",
        "Espero o meu marido.",
        "* * *",
        "D. PEDRO E D. HENRIQUE.",
        "Bem vindos sejais a esta casa, que é vossa.",
    ]
    result = filter_paragraphs(paragraphs)
    assert result.kept == [
        "ACTO PRIMEIRO\nSCENA I\nANTÓNIO.\nQue fazes tu aqui a estas horas, mulher, com a candeia apagada?",
        "D. BRANCA —\nEspero o meu marido.",
        "D. PEDRO E D. HENRIQUE.\nBem vindos sejais a esta casa, que é vossa.",
    ]
    assert dict(result.drops) == {"too_short": 1}  # only the "* * *" separator
    # the same paragraphs one by one, as before: every label lost
    alone = filter_paragraphs(paragraphs, FilterConfig(group_short=False))
    assert "ANTÓNIO." not in alone.kept and alone.drops["too_short"] >= 4


def test_title_page_stays_whole_and_a_lone_heading_at_the_end_is_dropped():
    grouped = group_short_paragraphs(
        ["O MANDARIM", "POR", "EÇA DE QUEIROZ", "LISBOA", "1880", "Era uma vez."]
    )
    assert grouped == ["O MANDARIM\nPOR\nEÇA DE QUEIROZ\nLISBOA\n1880", "Era uma vez."]
    assert filter_paragraphs(["Era uma vez um mandarim muito rico.", "FIM"]).drops == {"too_short": 1}
    # a bare page number is not a label: it is not glued to the prose after it
    assert group_short_paragraphs(["12", "Era uma vez."]) == ["12", "Era uma vez."]


def test_stanza_with_rows_of_omission_dots_and_a_primer_with_syllable_bars_are_kept():
    stanza = ". . . . . . . . . . . . . . . . . . . .\nNa lucta, sim! Na lucta! Ella ha-de ser perigosa,\n"
    stanza += "Tem força o estrangeiro e nós desamparados,\n. . . . . . . . . . . . . . . . . . . ."
    primer = "—Pa|ra a ti|a Car|lo|ta ver a gra|vu|ra do ca|ça|dor."
    # bars at the edges: a table as drawn, not as normalize writes it (test below), judged by the old rules
    table = "| Concelhos | Fogos | Almas |\n| Braga | 12 | 40 |\n| Porto | 30 | 95 |\n| Viseu | 8 | 27 |"
    result = filter_paragraphs([stanza, primer, table])
    assert result.kept == [
        "Na lucta, sim! Na lucta! Ella ha-de ser perigosa,\nTem força o estrangeiro e nós desamparados,",
        primer,
    ]
    assert result.drops["symbols"] + result.drops["digits"] == 1  # the table still goes


def test_ascii_table_and_bold_heading_of_a_book_are_kept_and_a_junk_line_is_not():
    """Issue 22: books 31656 and 39086 lost their tables (rows of place names and figures, a table of
    the ages of childhood) to the symbol rule, and "+bold+" headings went the same way."""
    body = """+MAPPA DOS CONCELHOS+

+------------------+------------+--------+---------------+
|                  |            |        |  Rendimento   |
|    Concelhos     | Freguezias | Fogos  |  collectavel  |
+------------------+------------+--------+---------------+
|Agueda            |     18     |  4:656 |   44:621$949  |
|Albergaria a Velha|      8     |  3:224 |   22:014$110  |
|Anadia            |     12     |  3:914 |   69:262$325  |
+------------------+------------+--------+---------------+
|Somma             |     38     | 11:794 |  135:898$384  |
+==================+============+========+===============+

+======================+================================================+
|  _Recêm-nascença_    | _Vida vegetativa_, e puro _automatismo_ nas    |
|                      | relações do _indivíduo_ com o _meio_.          |
+----------------------+------------------------------------------------+
|     _Infância_       | _Vida afectiva simples_: prazer e dôr física.  |
+======================+================================================+

+--------+--------+--------+
|   10   |    9   |   26   |
|   11   |    5   |   33   |
|   12   |    7   |   34   |
+--------+--------+--------+

§§§ ### @@@ ~~~ ^^^ ¤¤¤ *** ### §§§ @@@ ~~~"""
    result = filter_paragraphs(split_paragraphs(normalize_text(body)))
    assert result.kept == [
        "MAPPA DOS CONCELHOS\n"
        "Rendimento\n"
        "Concelhos | Freguezias | Fogos | collectavel\n"
        "Agueda | 18 | 4:656 | 44:621$949\n"
        "Albergaria a Velha | 8 | 3:224 | 22:014$110\n"
        "Anadia | 12 | 3:914 | 69:262$325\n"
        "Somma | 38 | 11:794 | 135:898$384",
        "Recêm-nascença | Vida vegetativa, e puro automatismo nas\n"
        "relações do indivíduo com o meio.\n"
        "Infância | Vida afectiva simples: prazer e dôr física.",
    ]
    assert dict(result.drops) == {"digits": 1, "symbols": 1}  # the grid of bare figures, the junk line
