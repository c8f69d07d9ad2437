"""Stage 5: drop paragraphs that are not Portuguese prose or verse, each drop with a reason code.

Before the rules, `group_short_paragraphs` joins each run of short non-sentence paragraphs (speaker
labels "ANTÓNIO.", "D. BRANCA —", scene headings, the lines of a title page, a one-line stanza) to the
paragraph that follows, with line breaks: a play keeps its labels with their speeches and a title page
stays whole, instead of each line being dropped alone. On the 485 shared books (bench/bench_keep.py) the
books under 0.95 of their Portuguese letters kept went from 17 (plays at 0.885-0.915, title pages) to
the 2 whose losses were ASCII tables, and to none once tables were judged as tables (below; lowest
book 0.968); `too_short` drops went from 36,862 paragraphs to 4,696, nearly all "* * *" separators and
bare page numbers.

Reason codes (checked in this order, the first that applies is counted):
  too_short       fewer than `min_chars` characters and not a sentence, and nothing to join: a lone
                  heading at the end, prices, stray marks ("* * *"). Short sentences ("Ninguem.",
                  "—Sim.") are the text of dialogue and are kept down to `min_sentence_chars`.
  symbols, digits a table (rows of cells joined by " | ", as corpus/normalize.py writes ASCII tables) is
                  judged on its own terms, instead of by the rules below: `symbols` when its cells
                  hold too many symbols (the bars aside), `digits` when fewer than
                  `table_min_word_rows` of its rows hold a word (figures with no row labels). A
                  table with labelled rows ("Aveiro | 65.638 | 254.715") is kept, figures and all.
  toc_index       table-of-contents or index lines ("Capitulo I ..... 5", "Abrantes, 12, 45")
  symbols         too many characters that are neither letters, digits, spaces nor common punctuation
                  (separator lines "* * *", formulas, tables drawn in a way normalize did not
                  recognize), or mostly dots/spaces/hyphens (dotted leader lines)
  digits          too many digits (accounts, dates lists, figures outside a table)
  repeated        a short non-sentence paragraph seen `repeat_min_count` times in the book (running
                  heads, repeated titles); the first occurrence is kept. Repeated dialogue ("—Não.") stays.
  not_portuguese  paragraph-level language id is confident the paragraph is another language

Language id is py3langid (its model ships inside the wheel), restricted to the languages that occur in
Portuguese Gutenberg books, on the first `langid_max_chars` characters of a paragraph of at least
`langid_min_chars`. Rule: keep the paragraph unless P(pt) + P(gl) < `min_accept_probability`. Galician
counts as Portuguese because the detector calls ~1.7% of real Portuguese paragraphs `gl` (old
orthography looks Galician to it) and the Portuguese Gutenberg set holds no Galician book to protect
against; summing the two probabilities also keeps short Portuguese lines the model half-believes are
Italian. py3langid walks its byte automaton in Python (~0.1-0.3 ms a paragraph, the most expensive step
of all cleaning), so a cheap gate goes first: a paragraph holding a word that exists in Portuguese but
not in the other languages, and none of the words that exist only in them, is Portuguese without asking
the model. On the real books the gate settles ~96% of paragraphs, and the model would have dropped
fewer than 1 in 1000 of those (bench/bench_clean.py prints both figures). The remaining model calls of a
book run as one batch (`detect_languages`), with results identical to one call per paragraph.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from dataclasses import dataclass, field
from operator import itemgetter

import numpy as np

# Words frequent in Portuguese (old and new spelling) and absent or rare as words in es/gl/fr/it/en/la.
# fmt: off
PORTUGUESE_WORDS = frozenset({
    "o", "os", "e", "do", "da", "dos", "das", "ao", "aos", "à", "é", "não", "nao", "são", "uma", "um", "em",
    "com", "lhe", "lhes", "pelo", "pela", "pelos", "pelas", "também", "tambem", "muito", "muita", "muitos",
    "muitas", "ele", "elle", "ela", "ella", "eu", "isso", "isto", "seu", "sua", "seus", "suas", "foi", "há",
    "já", "só", "então", "ainda", "assim", "tão", "sem", "nem", "pois", "mais", "na", "nas", "num", "numa",
    "d'elle", "d'ella", "n'um", "n'uma", "d'este", "d'esta", "d'isso", "eram", "estava", "tinha", "onde",
    "quando", "porque", "depois", "sobre", "entre", "minha", "meu", "nosso", "nossa", "você", "vossa",
    "mesmo", "mesma", "até", "ou", "ser", "ter", "fazer", "disse", "outro", "outra", "outros", "outras",
    "todos", "todas", "esta", "está", "este", "aquelle", "aquella", "elles", "ellas", "eles", "elas", "nós",
    "vós", "havia", "tem", "têm", "estão", "sido", "tudo", "nada", "nunca", "agora", "aqui", "ali", "lá",
    "cá", "sim", "emfim", "porém", "comtudo", "d'elles", "n'esta", "n'este", "d'aquelle",
})
# Words frequent in the other languages and never (or almost never) Portuguese words. Careful: "ella",
# "esta", "he" (old "é"), "for", "has", "el" (el rei), "della" are all Portuguese; "la", "los" are safe
# only because hyphenated clitics ("vê-la", "dá-los") stay one token.
FOREIGN_WORDS = frozenset({
    "the", "and", "of", "is", "was", "with", "that", "this", "which", "were", "have", "from", "would", "their",
    "y", "del", "muy", "pero", "hay", "fue", "ellos", "una", "con", "la", "las", "los", "lo", "en", "un", "yo",
    "les", "des", "une", "dans", "pas", "qui", "sur", "il", "avec", "pour", "est", "et", "du", "le",
    "und", "der", "die", "ist", "nicht", "ein", "eine", "mit",
    "gli", "sono", "questo", "che",
    "ut", "quod", "cum", "sunt", "enim", "autem", "sed", "atque", "etiam", "in", "non",
})
# fmt: on
_GATE_PUNCTUATION = ',.;:!?«»"()—…_[]'  # apostrophe and hyphen stay: "d'elle", "vê-la" are one word
# With _GATE_PUNCTUATION, all of the whitespace and punctuation _SYMBOL_OR_DIGIT_RE allows (and "_").
_PLAIN_EXTRA = " \n'-/&%°§"
_PLAIN_EXTRA_ASCII = bytes(c for c in _PLAIN_EXTRA.encode("utf-8") if c < 128)
_PLAIN_EXTRA_MULTIBYTE = [c.encode("utf-8") for c in _PLAIN_EXTRA if ord(c) >= 128]
# "|" between two letters divides syllables (a reading primer's "pa|la|vra"); elsewhere it draws tables.
_SYMBOL_OR_DIGIT_RE = re.compile(r"[^\w\s.,;:!?'\"«»()\[\]\-—…/&%ºª°§|]|\d|(?<![^\W\d_])\||\|(?![^\W\d_])")
# A contents/index line: words then a page number after a dotted leader or spaces, or a list of pages.
_TOC_LINE_RE = re.compile(
    r"^(?=.*[^\W\d_]).{0,100}?(?:(?:\.{2,}|…|\s)\s*\d{1,4}\.?|\d{1,4}(?:\s*[,;–-]\s*\d{1,4}){1,}\.?)$"
)
_SENTENCE_END = frozenset(".!?…:;")
_CLOSERS = "»\"') "  # closing quotes/brackets after the final punctuation
_DOT_ROW_RE = re.compile(r"[.…\s*]*(?:\. \.|\.\.\.\.)[.…\s*]*")
_DOT_LEADER_RE = re.compile(r"\.{4,}|…{2,}|(?:\. ){3,}")
CELL_BAR = " | "  # what corpus/normalize.py joins a table's cells with
_WORD_RE = re.compile(r"[^\W\d_]{2,}")


@dataclass
class FilterConfig:
    """Paragraph filter thresholds. Defaults were tuned by reading what each rule drops on the 485 real
    books (bench/bench_clean.py prints the drop counts per reason)."""

    min_chars: int = 20  # shorter non-sentences are headings, labels, page numbers, stray marks
    min_sentence_chars: int = 2  # "Não." is text: short sentences survive down to this length
    max_symbol_ratio: float = 0.10  # symbols / characters
    max_digit_ratio: float = 0.25  # digits / characters
    max_filler_ratio: float = 0.5  # (dots, spaces, hyphens, underscores) / characters: prose ~0.2, "...." 1
    ratio_head_chars: int = 200  # the three ratios are measured on this many leading characters
    toc_min_line_fraction: float = 0.6  # share of a paragraph's lines that must look like contents lines
    table_min_word_rows: float = 0.5  # share of a table's rows that must hold a word (a row label)
    repeat_min_count: int = 3  # running heads repeat many times; verse refrains twice or so
    repeat_max_chars: int = 100  # only short paragraphs are candidates for "repeated"
    # Language id
    language_filter: bool = True
    langid_min_chars: int = 40  # shorter paragraphs are not tested (too little evidence): kept
    langid_max_chars: int = 200  # gate and model see this prefix only; model cost grows with length
    langid_candidates: tuple[str, ...] = ("pt", "gl", "es", "en", "fr", "it", "la", "de")
    accept_languages: tuple[str, ...] = ("pt", "gl")
    # Drop only confident calls: the model's probability for the accepted languages together must be below
    # this. Short Portuguese lines with Italian-looking words ("Que bello dia!") get pt+gl ~0.3-0.6 with
    # `it` on top; real French/Spanish/Latin passages get < 0.05.
    min_accept_probability: float = 0.25
    quick_gate: bool = True  # skip the model for paragraphs that are obviously Portuguese
    quick_min_portuguese_words: int = 1  # with the veto list, one Portuguese-only word is enough
    # Join runs of short non-sentence paragraphs (labels, headings, title-page lines) to the next one.
    # Books only: in web text a run of short lines is a menu, better dropped than glued to the article.
    group_short: bool = True
    # Book level: a book whose language-tested text is mostly foreign is rejected as a whole.
    max_foreign_fraction: float = 0.5


@dataclass
class FilterResult:
    kept: list[str]
    drops: Counter = field(default_factory=Counter)  # reason -> paragraphs
    dropped_chars: Counter = field(default_factory=Counter)  # reason -> characters
    language_tested_chars: int = 0  # characters of paragraphs that went through language id
    langid_calls: int = 0  # paragraphs the model was asked about (the rest passed the quick gate)

    def __iter__(self):  # `kept, drops = filter_paragraphs(...)`
        return iter((self.kept, dict(self.drops)))

    @property
    def foreign_fraction(self) -> float:
        return (
            self.dropped_chars["not_portuguese"] / self.language_tested_chars
            if self.language_tested_chars
            else 0.0
        )


_IDENTIFIERS: dict[tuple[str, ...], object] = {}


def get_language_identifier(candidates: tuple[str, ...]):
    """py3langid identifier restricted to `candidates`, loaded once per process (1.3 s) and cached."""
    ident = _IDENTIFIERS.get(candidates)
    if ident is None:
        from py3langid.langid import MODEL_FILE, LanguageIdentifier

        ident = LanguageIdentifier.from_model_file(MODEL_FILE, norm_probs=True)
        if candidates:
            ident.set_languages(list(candidates))
        _IDENTIFIERS[candidates] = ident
        _automaton(ident)  # built here too, so that forked workers inherit it
    return ident


def prepare_heads(heads: list[str]) -> tuple[list[str], list[str]]:
    """Two cheap views of a book's paragraph heads, each made with a few C-level str calls over all the
    heads joined together instead of a Python loop per paragraph:
    - gate texts: lowercased, punctuation turned into spaces, ready for `.split()` (the quick gate);
    - plain texts: also without spaces and ordinary punctuation. A plain text made of letters only
      (`isalpha()`) proves its head has no symbol and no digit, so `drop_reason` skips its regex count."""
    if not heads:
        return [], []
    joined = "\x00".join(heads)
    if joined.count("\x00") != len(heads) - 1:  # a head holds NUL itself: give it another symbol character
        joined = "\x00".join(h.replace("\x00", "\x01") for h in heads)
    joined = joined.lower()
    for p in _GATE_PUNCTUATION:
        if p in joined:
            joined = joined.replace(p, " ")
    gate = joined.split("\x00")
    # Deleting millions of spaces is cheaper on UTF-8 bytes (one bytes.translate) than with nine str.replace
    # passes; no ASCII byte occurs inside a UTF-8 multi-byte sequence, so the result is the same text.
    data = joined.encode("utf-8", "surrogatepass").translate(None, _PLAIN_EXTRA_ASCII)
    for p in _PLAIN_EXTRA_MULTIBYTE:
        if p in data:
            data = data.replace(p, b"")
    return gate, data.decode("utf-8", "surrogatepass").split("\x00")


def gate_words(texts: list[str]) -> list[str]:
    """The gate view of `texts` (see `prepare_heads`)."""
    return prepare_heads(texts)[0]


def quick_is_portuguese(text: str, min_portuguese_words: int = 1, prepared: bool = False) -> bool:
    """Cheap gate: at least `min_portuguese_words` distinct Portuguese-only function words and no
    foreign-only one. `prepared` says `text` already went through `gate_words`."""
    words = (text if prepared else gate_words([text])[0]).split()
    if not FOREIGN_WORDS.isdisjoint(words):
        return False
    if min_portuguese_words == 1:
        return not PORTUGUESE_WORDS.isdisjoint(words)
    return len(PORTUGUESE_WORDS.intersection(words)) >= min_portuguese_words


def detect_language(text: str, config: FilterConfig) -> tuple[str, float]:
    """(most likely language, probability of the accepted languages together) for a paragraph, from its
    first `langid_max_chars` characters. The reference path: one py3langid call."""
    ranked = get_language_identifier(tuple(config.langid_candidates)).rank(text[: config.langid_max_chars])
    accepted = sum(p for lang, p in ranked if lang in config.accept_languages)
    return ranked[0][0], accepted


_AUTOMATA: dict[int, tuple[np.ndarray, np.ndarray, np.ndarray, int]] = {}


def _automaton(ident) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
    """numpy views of py3langid's byte automaton (next-state table, row offsets, feature per state) and
    its depth: the longest path from the root to any state, found by breadth-first search (6 bytes here).

    The automaton is Aho-Corasick over the model's byte n-grams, so the state after any byte is the
    state reached from the root by reading only the last `depth` bytes. That makes the walk data-parallel:
    `depth` vectorized steps over every byte of a book's paragraphs instead of a Python loop per byte."""
    cached = _AUTOMATA.get(id(ident))
    if cached is None:
        nextmove = np.asarray(memoryview(ident.tk_nextmove))  # uint32, shared with py3langid (no copy)
        rowbase = np.asarray(ident._rowbase, dtype=np.int64)
        output = np.asarray(ident.tk_output, dtype=np.int64)
        seen = np.zeros(len(rowbase), dtype=bool)
        seen[0] = True
        frontier, depth = np.array([0]), 0
        while len(frontier):
            new = np.zeros(len(rowbase), dtype=bool)
            for chunk in range(0, len(frontier), 4096):  # bounded temporaries: ~8 MB, not ~100 MB
                new[nextmove[(rowbase[frontier[chunk : chunk + 4096], None] + np.arange(256)).ravel()]] = True
            new &= ~seen
            seen |= new
            frontier = np.flatnonzero(new)
            depth += bool(len(frontier))
        cached = _AUTOMATA[id(ident)] = (nextmove, rowbase, output, depth)
    return cached


def detect_languages(texts: list[str], config: FilterConfig) -> list[tuple[str, float]]:
    """`detect_language` for many paragraphs at once (a book's), with the same results to the last bit.

    py3langid walks its automaton one byte at a time in Python (~50 us a paragraph). Here the walk for all
    of a book's paragraphs is `depth` numpy steps (see `_automaton`), and each paragraph is scored with
    the same float32 operations as py3langid's `_sparse_score`/`_decide`/`rank`, its features in the
    order its Counter holds them (first occurrence), so the sums round identically; ~1.5x cheaper in all.
    Uses py3langid 0.4 internals (`_encode`, `_rowbase`, `tk_nextmove`, `tk_output`, `nb_ptc`, `nb_pc`):
    tests/test_corpus_filters.py compares every result with the library's own `rank`."""
    if not texts:
        return []
    ident = get_language_identifier(tuple(config.langid_candidates))
    nextmove, rowbase, output, depth = _automaton(ident)
    encoded = [ident._encode(t[: config.langid_max_chars]) for t in texts]
    lengths = np.fromiter(map(len, encoded), dtype=np.int64, count=len(encoded))
    data = np.frombuffer(b"".join(encoded), dtype=np.uint8).astype(np.int64)
    segment_start = np.repeat(np.cumsum(lengths) - lengths, lengths)
    position = np.arange(len(data))
    state = np.zeros(len(data), dtype=np.int64)
    for k in range(depth):  # byte i's state: a walk from the root over bytes i-depth+1 .. i of its paragraph
        at = position - (depth - 1 - k)
        moved = nextmove[rowbase[state] + data[np.maximum(at, 0)]]
        state = np.where(at >= segment_start, moved, state)
    features = output[state]
    hit = features >= 0
    n_features = len(output)
    keys = np.repeat(np.arange(len(texts)), lengths)[hit] * n_features + features[hit]
    # Distinct (paragraph, feature) pairs in order of first occurrence: py3langid's Counter order.
    unique, first_at, counts = np.unique(keys, return_index=True, return_counts=True)
    order = np.argsort(first_at, kind="stable")
    unique, counts = unique[order], counts[order]
    bounds = np.searchsorted(unique // n_features, np.arange(len(texts) + 1)).tolist()
    feature_ids = unique % n_features
    log_counts = np.log1p(counts.astype(np.float32))
    table, prior = ident.nb_ptc, ident.nb_pc
    accept = config.accept_languages
    results = []
    for i, text in enumerate(encoded):
        a, b = bounds[i], bounds[i + 1]
        if a < b:  # py3langid's _sparse_score on this paragraph's counts
            scores = log_counts[a:b] @ table[feature_ids[a:b]] + prior
        else:  # no feature at all: py3langid's uniform fallback (norm_probs=True, see get_language_identifier)
            scores = np.zeros(len(ident.nb_classes), dtype=np.float32)
        # The rest of py3langid's _decide (norm_probs=True) and rank, step for step.
        scores *= 1.0 / math.sqrt(len(text) or 1)
        np.exp(scores - scores.max(), out=scores)
        scores /= scores.sum()
        for x, y in ident._alias_pairs:
            scores[x] += scores[y]
            scores[y] = 0.0
        merged: dict[str, float] = {}
        for lang, score in zip(ident.nb_classes, scores.tolist(), strict=True):
            merged.setdefault(lang, score)
        ranked = sorted(merged.items(), key=itemgetter(1), reverse=True)
        results.append((ranked[0][0], sum(p for lang, p in ranked if lang in accept)))
    return results


def is_sentence(paragraph: str) -> bool:
    """Dialogue, or ends like a sentence and is not all capitals ("MOTE." is a label, "Ninguem." is text)."""
    if paragraph.startswith("—"):
        return True
    has_lowercase = paragraph != paragraph.upper()  # rules out "MOTE.", "12.", "IV."
    return has_lowercase and paragraph.rstrip(_CLOSERS)[-1:] in _SENTENCE_END


def toc_like(paragraph: str, min_line_fraction: float = 0.6) -> bool:
    """Contents/index: most lines end in page numbers. A lone line also needs a dotted leader."""
    if "\n" not in paragraph:  # fast path for prose, most paragraphs
        return (
            paragraph.rstrip(".")[-1:].isdigit()
            and len(paragraph) <= 110
            and bool(_DOT_LEADER_RE.search(paragraph))
            and bool(_TOC_LINE_RE.match(paragraph))
        )
    lines = paragraph.split("\n")
    # Cheap test first: a contents/index line ends in a digit (optionally followed by a period).
    hits = sum(
        1 for ln in lines if ln.rstrip(".")[-1:].isdigit() and len(ln) <= 110 and _TOC_LINE_RE.match(ln)
    )
    return hits >= min_line_fraction * len(lines)


def is_table(paragraph: str) -> bool:
    """A table as corpus/normalize.py writes one: two or more rows of cells joined by `CELL_BAR`, at least
    half of the lines (the others are header cells or labels alone on their line), and no line opening
    or closing on a bar. A bar at a line's edge is an empty cell, which normalize drops: such a
    paragraph is text set in two columns ("O Reino de Portugal e o | Observaçoens (de Brant"), whose
    lines interleave two texts, or a table normalize did not recognize; both stay with the rules below."""
    if "\n" not in paragraph or CELL_BAR not in paragraph:
        return False
    lines = paragraph.split("\n")
    rows = sum(CELL_BAR in ln for ln in lines)
    return rows >= 2 and 2 * rows >= len(lines) and not any(ln[:1] == "|" or ln[-1:] == "|" for ln in lines)


def table_reason(paragraph: str, config: FilterConfig) -> str | None:
    """Why a table is dropped, or None. Its bars are structure, not symbols, and figures are what tables
    hold, so the digit and contents-line tests (rows ending in numbers) would drop every statistical
    table; what tells text from a grid of figures is whether its rows are labelled with words."""
    head = paragraph[: config.ratio_head_chars].replace(CELL_BAR, " ")
    symbols = sum(1 for c in _SYMBOL_OR_DIGIT_RE.findall(head) if not c.isdigit())
    if symbols > config.max_symbol_ratio * len(head):
        return "symbols"
    rows = paragraph.split("\n")
    if sum(1 for row in rows if _WORD_RE.search(row)) < config.table_min_word_rows * len(rows):
        return "digits"
    return None


def drop_reason(paragraph: str, config: FilterConfig, plain_head: str | None = None) -> str | None:
    """The reason code of the first content rule `paragraph` fails (language and repeats aside), or None.
    `plain_head` is the plain view of the paragraph's head (`prepare_heads`), when the caller has it."""
    n = len(paragraph)
    if n < config.min_chars and not (n >= config.min_sentence_chars and is_sentence(paragraph)):
        return "too_short"
    if is_table(paragraph):
        return table_reason(paragraph, config)
    if toc_like(paragraph, config.toc_min_line_fraction):  # before the ratios: dotted leaders are "filler"
        return "toc_index"
    # Character ratios are measured on a bounded head: tables and dotted lines are uniform, and scanning
    # whole 5000-character paragraphs with Python regexes was a third of the cleaning time.
    head = paragraph[: config.ratio_head_chars]
    h = len(head)
    if (
        plain_head is not None
        and plain_head.isalpha()
        and len(plain_head) >= (1 - config.max_filler_ratio) * h
    ):
        return None  # letters only once spaces and punctuation are gone: no symbol, digit or filler excess
    odd = _SYMBOL_OR_DIGIT_RE.findall(head)  # one scan for both ratios
    if odd:
        digits = sum(1 for c in odd if c.isdigit())
        if len(odd) - digits > config.max_symbol_ratio * h:
            return "symbols"
        if digits > config.max_digit_ratio * h:
            return "digits"
    filler = head.count(".") + head.count(" ") + head.count("-") + head.count("_") + head.count("…")
    if filler > config.max_filler_ratio * h:
        return "symbols"
    return None


def _is_label(paragraph: str, min_chars: int) -> bool:
    """A heading or speaker label: not a sentence, holds a letter (a bare number is a page number, not
    to be glued to the text), and is short (under `min_chars`, or an upper-case line like
    "D. PEDRO E D. HENRIQUE." up to 60 characters)."""
    n = len(paragraph)
    if n >= 60 or not any(c.isalpha() for c in paragraph) or is_sentence(paragraph):
        return False
    return n < min_chars or ("\n" not in paragraph and paragraph.isupper())


def group_short_paragraphs(paragraphs: list[str], min_chars: int = 20) -> list[str]:
    """Each run of labels/headings joined, with line breaks, to the paragraph after it (or, at the end
    of the book, to one another): "SCENA II", "SEBASTIANA", "Ah, que calor!" become one paragraph.
    Separators with no letter or digit ("* * *") are left alone in between, to be dropped, and rows of
    dots marking omitted verses (". . . . .") are taken out of a stanza, which would otherwise fail the
    filler ratio whole."""
    out: list[str] = []
    run: list[str] = []
    for p in paragraphs:
        if "\n" in p and (". . ." in p or "...." in p):
            lines = [ln for ln in p.split("\n") if not _DOT_ROW_RE.fullmatch(ln)]
            p = "\n".join(lines) if lines else p
        if _is_label(p, min_chars):
            run.append(p)
        elif run and (len(p) >= min_chars or any(c.isalnum() for c in p)):
            run.append(p)
            out.append("\n".join(run))
            run = []
        else:
            out.append(p)
    if run:
        out.append("\n".join(run))
    return out


def filter_paragraphs(paragraphs: list[str], config: FilterConfig | None = None) -> FilterResult:
    """Apply every rule to a book's paragraphs; returns the kept ones in order and counts per reason."""
    config = config or FilterConfig()
    if config.group_short:
        paragraphs = group_short_paragraphs(paragraphs, config.min_chars)
    result = FilterResult(kept=[])
    counts = Counter(p for p in paragraphs if len(p) <= config.repeat_max_chars)
    seen: set[str] = set()
    n_head = config.langid_max_chars
    heads = [p[:n_head] for p in paragraphs]
    gate, plain = prepare_heads(heads)
    if config.ratio_head_chars != n_head:
        plain = prepare_heads([p[: config.ratio_head_chars] for p in paragraphs])[1]
    if not config.quick_gate:
        gate = None
    # The loop below runs ~700 times per book: the common case (a plain prose paragraph that the gate calls
    # Portuguese) is decided inline, with the same tests as `drop_reason` and `quick_is_portuguese`.
    min_chars, head_chars = config.min_chars, config.ratio_head_chars
    min_letters_share = 1 - config.max_filler_ratio
    repeat_max_chars, repeat_min_count = config.repeat_max_chars, config.repeat_min_count
    test_language, langid_min_chars = config.language_filter, config.langid_min_chars
    one_word_gate = gate is not None and config.quick_min_portuguese_words == 1
    foreign_free, portuguese_free = FOREIGN_WORDS.isdisjoint, PORTUGUESE_WORDS.isdisjoint
    reasons: list[str | None] = []
    ask_model: list[int] = []  # paragraphs the gate could not settle: language id runs on them in one batch
    tested_chars = 0
    for i, (p, plain_head, gate_head) in enumerate(zip(paragraphs, plain, gate or plain, strict=True)):
        n = len(p)
        tail = p[-8:].rstrip(".")
        if (
            n >= min_chars  # not too_short
            and tail
            and not tail[-1].isdigit()
            and "\n" not in p  # not toc_index (see toc_like's one-line path)
            and plain_head.isalpha()  # letters only: no symbols, digits or filler excess
            and len(plain_head) >= min_letters_share * min(n, head_chars)
        ):
            reason = None
        else:
            reason = drop_reason(p, config, plain_head)
        if reason is None and n <= repeat_max_chars and counts[p] >= repeat_min_count and not is_sentence(p):
            if p in seen:
                reason = "repeated"
            seen.add(p)
        if reason is None and test_language and n >= langid_min_chars:
            tested_chars += n
            if one_word_gate:
                words = gate_head.split()
                settled = foreign_free(words) and not portuguese_free(words)
            else:
                settled = gate is not None and quick_is_portuguese(
                    gate_head, config.quick_min_portuguese_words, prepared=True
                )
            if not settled:
                ask_model.append(i)
        reasons.append(reason)
    result.language_tested_chars = tested_chars
    result.langid_calls = len(ask_model)
    languages = detect_languages([paragraphs[i] for i in ask_model], config)
    for i, (_, accepted) in zip(ask_model, languages, strict=True):
        if accepted < config.min_accept_probability:
            reasons[i] = "not_portuguese"
    for p, reason in zip(paragraphs, reasons, strict=True):
        if reason is None:
            result.kept.append(p)
        else:
            result.drops[reason] += 1
            result.dropped_chars[reason] += len(p)
    return result
