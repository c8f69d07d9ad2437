"""A generator of plausible Portuguese-like web documents, for `--extra` throughput benchmarks and tests.

    .venv/bin/python bench/gen_source.py OUT.jsonl [--mb 92] [--seed 0] [--junk 0.1]

Sentences are drawn from slot lists (subject, verb, object, place, time, connective) so that
documents pass the web-text filters of corpus/doc_filters.py as real Portuguese would (function
words, word lengths, no repeated n-grams) and two documents are never near duplicates. A share
`--junk` of the documents is the kind of text the filters exist for: English, menus, link lists,
repeated lines, tables of figures. Output: JSON lines {"id", "text"}, written as generated (flat memory).
"""

from __future__ import annotations

import argparse
import json
import random
from collections.abc import Iterator
from pathlib import Path

# fmt: off
SUBJECTS = [
    "o governo", "a prefeitura", "o ministro", "a professora", "o médico", "a associação de moradores",
    "o tribunal", "a empresa", "o sindicato", "a universidade", "o agricultor", "a escritora", "o clube",
    "a câmara municipal", "o instituto", "a cooperativa", "o hospital", "a biblioteca", "o museu", "a escola",
    "o pescador", "a enfermeira", "o engenheiro", "a jornalista", "o comerciante", "a fundação", "o bairro",
    "a comissão", "o conselho", "a orquestra", "o teatro", "a editora", "o laboratório", "a igreja",
]
VERBS = [
    "anunciou", "apresentou", "defendeu", "criticou", "aprovou", "inaugurou", "discutiu", "recebeu",
    "organizou", "publicou", "financiou", "rejeitou", "propôs", "concluiu", "iniciou", "adiou", "explicou",
    "comemorou", "investigou", "reformou", "ampliou", "lançou", "visitou", "analisou", "confirmou",
]
OBJECTS = [
    "um novo plano de obras", "a reforma da praça central", "um programa de bolsas", "o relatório anual",
    "uma exposição de fotografia", "a construção de uma ponte", "o orçamento do próximo ano",
    "uma campanha de vacinação", "o projeto de lei", "um festival de música", "a recuperação do rio",
    "uma feira de livros", "o acordo com os vizinhos", "a compra de equipamentos", "um curso gratuito",
    "a mudança de horário", "o concurso público", "uma pesquisa sobre a seca", "o calendário das aulas",
    "a abertura de vagas", "um estudo sobre o trânsito", "a restauração do edifício", "o novo regulamento",
]
PLACES = [
    "no centro da cidade", "em Lisboa", "no Porto", "em Belo Horizonte", "em Salvador", "no interior",
    "na zona rural", "em Coimbra", "no litoral", "em Manaus", "em Recife", "na serra", "em Braga",
    "no bairro antigo", "em Curitiba", "em Fortaleza", "na margem do rio", "em Évora", "em Porto Alegre",
]
TIMES = [
    "nesta segunda-feira", "na semana passada", "durante a manhã", "depois de muitos meses",
    "no fim do ano", "ontem à noite", "há poucos dias", "no início do mês", "ao longo do verão",
    "antes das eleições", "na última reunião", "desde janeiro", "em plena temporada de chuvas",
]
REASONS = [
    "porque a população pedia mudanças", "para atender às famílias mais pobres",
    "apesar das críticas da oposição", "com o apoio de vários parceiros", "sem consultar os moradores",
    "depois de um longo debate", "para reduzir os custos", "com recursos do orçamento estadual",
    "mesmo com a falta de verbas", "como tinha prometido na campanha", "após pedidos dos estudantes",
]
OPENERS = ["", "", "", "Além disso, ", "Segundo a imprensa, ", "De acordo com os números, ", "Por outro lado, ",
           "No entanto, ", "Ainda assim, ", "Na prática, ", "Para muitos, ", "Em resumo, "]
COMMENTS = [
    "Os moradores disseram que esperam resultados já nos próximos meses.",
    "A decisão foi recebida com entusiasmo por quem acompanha o tema há anos.",
    "Nem todos concordam, e a discussão deve continuar nas próximas semanas.",
    "Os detalhes serão divulgados em breve, segundo a assessoria.",
    "Quem passou pelo local ficou surpreendido com a mudança.",
    "O custo total ainda não foi revelado, mas deve ser alto.",
]
ADJECTIVES = [
    "novo", "antigo", "regional", "municipal", "ambicioso", "polémico", "modesto", "urgente", "provisório",
    "inédito", "esperado", "discreto", "caro", "barato", "moderno", "tradicional", "simples", "completo",
]
NAMES = [
    "Ana", "João", "Maria", "Pedro", "Luísa", "Carlos", "Beatriz", "Rui", "Helena", "Tiago", "Inês", "Paulo",
    "Sofia", "Miguel", "Clara", "Rafael", "Marta", "Jorge", "Teresa", "Vasco", "Lúcia", "André",
]
SURNAMES = [
    "Silva", "Santos", "Ferreira", "Pereira", "Oliveira", "Costa", "Rodrigues", "Martins", "Sousa",
    "Fernandes", "Gonçalves", "Gomes", "Lopes", "Marques", "Almeida", "Ribeiro", "Carvalho", "Teixeira",
]
UNITS = ["pessoas", "famílias", "alunos", "trabalhadores", "visitantes", "moradores", "reais", "euros"]
# fmt: on
ENGLISH = (
    "The city council approved a new budget for the coming year after a long debate. Residents said "
    "they hoped the changes would bring better roads and more parks to their neighbourhoods. "
)
MENU = (
    "Início\nNotícias\nClique aqui para assinar a newsletter\nPolítica de privacidade\nwww.exemplo.com.br\n"
)


def sentence(rng: random.Random) -> str:
    """One sentence from random slots; about one in three slots is left out, so sentences vary."""
    obj = rng.choice(OBJECTS)
    if rng.random() < 0.5:
        obj += f" {rng.choice(ADJECTIVES)}"
    parts = [f"{rng.choice(OPENERS)}{rng.choice(SUBJECTS)} {rng.choice(VERBS)} {obj}"]
    for slot in (PLACES, TIMES):
        if rng.random() < 0.6:
            parts.append(rng.choice(slot))
    s = " ".join(parts)
    extra = rng.random()
    if extra < 0.3:
        s += f", {rng.choice(REASONS)}"
    elif extra < 0.6:
        s += f", segundo {rng.choice(NAMES)} {rng.choice(SURNAMES)}"
    elif extra < 0.8:
        s += f", com cerca de {rng.randint(2, 5000)} {rng.choice(UNITS)}"
    s += "."
    s = s[0].upper() + s[1:]
    if rng.random() < 0.2:
        s += " " + rng.choice(COMMENTS)
    return s


def portuguese_document(rng: random.Random, min_paragraphs: int = 2, max_paragraphs: int = 4) -> str:
    """A news-like document: paragraphs of 2-3 generated sentences, one per line."""
    paragraphs = []
    for _ in range(rng.randint(min_paragraphs, max_paragraphs)):
        paragraphs.append(" ".join(sentence(rng) for _ in range(rng.randint(2, 3))))
    return "\n".join(paragraphs)


def junk_document(rng: random.Random) -> str:
    kind = rng.randrange(4)
    if kind == 0:
        return ENGLISH * rng.randint(2, 6)
    if kind == 1:
        return MENU * rng.randint(2, 5)
    if kind == 2:
        return "\n".join([sentence(rng)] * rng.randint(10, 30))
    return "\n".join(" ".join(str(rng.randint(0, 99999)) for _ in range(12)) for _ in range(20))


def documents(seed: int = 0, junk: float = 0.1) -> Iterator[dict]:
    """An endless stream of {"id", "text"} documents; ids `gen-<seed>-<n>`."""
    rng = random.Random(seed)
    n = 0
    while True:
        text = junk_document(rng) if rng.random() < junk else portuguese_document(rng)
        yield {"id": f"gen-{seed}-{n}", "text": text}
        n += 1


def write_source(path: str | Path, megabytes: float, seed: int = 0, junk: float = 0.1) -> int:
    """Write documents to a JSONL file until it holds `megabytes` MB of text; returns the count."""
    limit, size, count = megabytes * 1e6, 0, 0
    with open(path, "w", encoding="utf-8") as f:
        for doc in documents(seed, junk):
            f.write(json.dumps(doc, ensure_ascii=False) + "\n")
            size += len(doc["text"].encode("utf-8"))
            count += 1
            if size >= limit:
                break
    return count


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("out", type=Path)
    ap.add_argument("--mb", type=float, default=92.0, help="MB of text (the shared books are 92 MB)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--junk", type=float, default=0.1, help="share of junk documents")
    args = ap.parse_args()
    n = write_source(args.out, args.mb, args.seed, args.junk)
    print(f"wrote {n:,} documents ({args.mb:g} MB of text) to {args.out}")


if __name__ == "__main__":
    main()
