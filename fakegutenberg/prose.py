"""A seeded generator of Portuguese prose for the fake Gutenberg books: narration, dialogue, chapters.

Templates and a small vocabulary written for this project; agreement is kept simple (gender and
number of the subject drive verbs and adjectives). Same seed, same text. It knows nothing about
Gutenberg: fakegutenberg/books.py wraps its paragraphs in headers, licenses and charsets.
"""

from __future__ import annotations

import random

# fmt: off
SUBJECTS = [  # (phrase, gender, number)
    ("o moleiro", "m", "s"), ("a lavadeira", "f", "s"), ("o velho pescador", "m", "s"),
    ("a viúva do escrivão", "f", "s"), ("o padre da freguesia", "m", "s"),
    ("a filha do ferreiro", "f", "s"), ("os rapazes da aldeia", "m", "p"),
    ("as mulheres do mercado", "f", "p"), ("o capitão do navio", "m", "s"),
    ("a D.ª Gertrudes", "f", "s"), ("o Sr. Alfredo", "m", "s"), ("os dois irmãos", "m", "p"),
    ("as velhas da rua", "f", "p"), ("o boticário", "m", "s"), ("a professora", "f", "s"),
    ("o almocreve", "m", "s"), ("os pastores da serra", "m", "p"), ("a criada da casa", "f", "s"),
    ("o regedor", "m", "s"), ("as raparigas da fonte", "f", "p"), ("o tio Joaquim", "m", "s"),
    ("a menina Aurora", "f", "s"), ("o estudante de Coimbra", "m", "s"),
    ("os soldados do quartel", "m", "p"), ("a dona da estalagem", "f", "s"),
]
INTRANSITIVE = {  # tense -> [(3rd singular, 3rd plural)]
    "perfeito": [("chegou", "chegaram"), ("partiu", "partiram"), ("voltou", "voltaram"),
                 ("saiu", "saíram"), ("parou", "pararam"), ("adormeceu", "adormeceram"),
                 ("ficou", "ficaram"), ("apareceu", "apareceram"), ("entrou", "entraram")],
    "imperfeito": [("caminhava", "caminhavam"), ("trabalhava", "trabalhavam"), ("vivia", "viviam"),
                   ("passeava", "passeavam"), ("esperava", "esperavam"), ("cantava", "cantavam"),
                   ("rezava", "rezavam"), ("descansava", "descansavam")],
    "presente": [("mora", "moram"), ("trabalha", "trabalham"), ("passa", "passam"),
                 ("espera", "esperam"), ("descansa", "descansam")],
    "futuro": [("voltará", "voltarão"), ("chegará", "chegarão"), ("ficará", "ficarão"),
               ("partirá", "partirão")],
}
TRANSITIVE = {
    "perfeito": [("comprou", "compraram"), ("trouxe", "trouxeram"), ("vendeu", "venderam"),
                 ("encontrou", "encontraram"), ("escreveu", "escreveram"), ("perdeu", "perderam"),
                 ("guardou", "guardaram"), ("recebeu", "receberam")],
    "imperfeito": [("guardava", "guardavam"), ("levava", "levavam"), ("vendia", "vendiam"),
                   ("procurava", "procuravam"), ("trazia", "traziam")],
    "futuro": [("trará", "trarão"), ("venderá", "venderão"), ("levará", "levarão")],
}
OBJECTS = [
    "um cesto de castanhas", "uma carta da cidade", "o pão da semana", "três alqueires de milho",
    "um xaile de lã", "a chave da igreja", "um relógio de prata", "duas galinhas pedreses",
    "o jornal de Lisboa", "uma saca de farinha", "um ramo de alecrim", "a velha espingarda",
    "um livro de orações", "meia dúzia de ovos", "uma bilha de azeite", "o retrato do avô",
    "um lenço bordado", "as contas do mês", "uma caixa de rapé", "um cordão de ouro",
]
PLACES = [
    "junto ao rio", "na praça da vila", "à porta da igreja", "pela estrada de Coimbra",
    "no alto da serra", "na taberna do Zé da Ponte", "debaixo da figueira", "no largo do pelourinho",
    "à beira do mar", "na feira de Barcelos", "ao pé da fonte", "na botica", "no adro",
    "pelos campos de centeio", "junto ao moinho", "na estação do caminho de ferro",
    "no cais do Tejo", "na quinta do morgado", "à sombra dos castanheiros", "no mercado do Bolhão",
]
TIMES = [
    "Ao cair da tarde", "Na manhã seguinte", "No 1º de maio", "Em 1874", "Pelo São Martinho",
    "Às sete horas em ponto", "Naquele inverno", "Quando a chuva parou", "Ao domingo",
    "Dias depois", "Na véspera de Natal", "Pela madrugada", "Em agosto de 1891", "Ao fim de três semanas",
    "Na noite de São João", "Logo de manhãzinha",
]
ADJECTIVES = [  # masculine singular; regular -o/-e, or explicit (m s, f s, m p, f p)
    "calado", "cansado", "contente", "pobre", "alegre", "honrado", "desconfiado", "triste",
    "teimoso", "generoso", "valente", "humilde", "preocupado", "orgulhoso",
    ("feliz", "feliz", "felizes", "felizes"), ("trabalhador", "trabalhadora", "trabalhadores",
                                               "trabalhadoras"),
]
COMMENTS = [
    "como toda a gente daquela terra", "e isso via-se-lhe no rosto", "o que não admirava ninguém",
    "desde que o mundo é mundo", "segundo diziam os vizinhos", "apesar de tudo o que se passara",
    "e não havia quem o negasse",
]
SAYINGS = [
    "Dá-me esse cesto, que eu levo-o até casa", "Amanhã há de chover, bem to digo",
    "Não sei, nem quero saber", "Vai-te embora antes que o teu pai chegue",
    "Isto não se faz a ninguém", "Deixa-me pensar até amanhã", "Ainda há de vir o dia em que me dês razão",
    "Mais vale tarde do que nunca", "Faz-me o favor de fechar a porta", "Quem te disse isso mentiu-te",
]
QUESTIONS = [
    "Ainda te lembras do inverno de 1889", "Conta-me tudo desde o princípio, queres",
    "Onde é que puseste a chave do celeiro", "Quanto pedes por esse burro",
    "Já soubeste o que aconteceu ao moleiro", "Então não me dizes nada",
    "Vens à feira no sábado", "Quem foi que te mandou cá",
]
SPEECH_VERBS = ["disse-lhe", "respondeu-lhe", "atalhou", "murmurou", "gritou-lhe", "explicou"]
ASK_VERBS = ["perguntou-lhe", "quis saber", "perguntou"]
PROVERBS = [  # common Portuguese sayings (folk wisdom, no author)
    "quem espera sempre alcança", "devagar se vai ao longe", "mais vale um pássaro na mão do que dois a voar",
    "em casa de ferreiro, espeto de pau", "quem não arrisca não petisca", "a pressa é inimiga da perfeição",
]
FIRST_NAMES = ["Joaquim", "Manuel", "Rita", "Teresa", "António", "Luísa", "Francisco", "Amélia",
               "José", "Gertrudes", "Henrique", "Inês", "Custódio", "Aurora", "Bernardo", "Leonor"]
SURNAMES = ["Vasconcelos", "Teixeira", "Albuquerque", "Pereira", "Rebelo", "Morais", "Cunha",
            "Lopes", "Guimarães", "Fonseca", "Nogueira", "Sousa", "Carvalho", "Magalhães", "Pinto",
            "Azevedo", "Barros", "Coutinho"]
TITLE_PATTERNS = ["Histórias {place}", "Serões {place}", "Contos {place}", "Memórias de {name}",
                  "A família de {name}", "Crónicas {place}", "O segredo de {name}"]
TITLE_PLACES = ["da aldeia", "do Minho", "da beira-mar", "da serra", "de Lisboa antiga",
                "do Alentejo", "da vila", "do Douro", "de uma estalagem"]
ROMAN = ["I", "II", "III", "IV", "V", "VI", "VII", "VIII", "IX", "X", "XI", "XII", "XIII", "XIV",
         "XV", "XVI", "XVII", "XVIII", "XIX", "XX"]
# fmt: on


def _agree(adj: str | tuple[str, str, str, str], gender: str, number: str) -> str:
    if isinstance(adj, tuple):
        return adj[{"ms": 0, "fs": 1, "mp": 2, "fp": 3}[gender + number]]
    if adj.endswith("o"):
        adj = adj[:-1] + ("a" if gender == "f" else "o")
    return adj + ("s" if number == "p" else "")


def _cap(s: str) -> str:
    return s[:1].upper() + s[1:]


def _sentence(rng: random.Random) -> str:
    subj, gender, number = rng.choice(SUBJECTS)
    n = 0 if number == "s" else 1
    kind = rng.randrange(7)
    if kind == 0:
        verb = rng.choice(INTRANSITIVE["perfeito"])[n]
        return f"{rng.choice(TIMES)}, {subj} {verb} {rng.choice(PLACES)}."
    if kind == 1:
        subj2, _, number2 = rng.choice(SUBJECTS)
        v1 = rng.choice(INTRANSITIVE["imperfeito"])[n]
        v2 = rng.choice(TRANSITIVE["imperfeito"])[0 if number2 == "s" else 1]
        return f"{_cap(subj)} {v1} {rng.choice(PLACES)}, e {subj2} {v2} {rng.choice(OBJECTS)}."
    if kind == 2:
        a1, a2 = rng.sample(ADJECTIVES, 2)
        era = "era" if number == "s" else "eram"
        return (
            f"{_cap(subj)} {era} {_agree(a1, gender, number)} e {_agree(a2, gender, number)}, "
            f"{rng.choice(COMMENTS)}."
        )
    if kind == 3:
        v = rng.choice(TRANSITIVE["perfeito"])[n]
        v2 = rng.choice(INTRANSITIVE["perfeito"])[n]
        return f"{rng.choice(TIMES)}, {subj} {v} {rng.choice(OBJECTS)} e {v2} {rng.choice(PLACES)}."
    if kind == 4:
        v = rng.choice(TRANSITIVE["imperfeito"])[n]
        return f"Dizia-se que {subj} {v} {rng.choice(OBJECTS)} {rng.choice(PLACES)}."
    if kind == 5:
        tense = rng.choice(["presente", "futuro"])
        v = rng.choice(INTRANSITIVE[tense])[n]
        return f"Ainda hoje se conta que {subj} {v} {rng.choice(PLACES)}, e que ninguém sabe porquê."
    sabia = "sabia" if number == "s" else "sabiam"
    return f"Como diz o povo, «{rng.choice(PROVERBS)}», e {subj} {sabia}-o melhor do que ninguém."


def _dialogue(rng: random.Random) -> list[str]:
    lines = []
    for turn in range(rng.randint(2, 4)):
        subj = rng.choice(SUBJECTS)[0]
        if turn % 2 == 0:
            lines.append(f"— {rng.choice(QUESTIONS)}? — {rng.choice(ASK_VERBS)} {subj}.")
        elif rng.random() < 0.5:
            lines.append(f"— {rng.choice(SAYINGS)} — {rng.choice(SPEECH_VERBS)} {subj}.")
        else:
            lines.append(f"— {rng.choice(SAYINGS)}…")
    return lines


def portuguese_paragraphs(rng: random.Random, n_bytes: int, chapters: bool = True) -> list[str]:
    """Generated Portuguese paragraphs (narration, dialogue, chapter headings) of about n_bytes UTF-8."""
    paragraphs: list[str] = []
    size, chapter, since_heading = 0, 0, 99
    while size < n_bytes:
        if chapters and since_heading >= rng.randint(10, 16):
            para = [f"CAPÍTULO {ROMAN[chapter % len(ROMAN)]}"]
            chapter, since_heading = chapter + 1, 0
        elif rng.random() < 0.2 and paragraphs:
            para = _dialogue(rng)
        else:
            para = [" ".join(_sentence(rng) for _ in range(rng.randint(3, 6)))]
        paragraphs += para
        since_heading += len(para)
        size += sum(len(p.encode()) + 2 for p in para)
    return paragraphs


def generated_body(seed: int, kb: float) -> str:
    """A deterministic generated body of about `kb` KB."""
    return "\n\n".join(portuguese_paragraphs(random.Random(seed), int(kb * 1024)))
