"""Document-level cleaning and filters for web-like text (the `--extra` sources), with reason codes.

Gutenberg books go through decode -> boilerplate -> unwrap -> paragraph filters (corpus/clean.py). A
document of another source (a web page, a Wikipedia article, a line of a JSONL dump) has no Gutenberg
header and no hard-wrapped lines, but it has its own junk: menus, cookie banners, link lists, pages of
keywords, machine-made text that repeats itself. `clean_document` runs, in order:

    lines       NFC, whitespace collapsed; lines that are a URL or site boilerplate are removed
                (`url_line`, `boilerplate_line` paragraph drops), and a document made mostly of them
                is rejected (`boilerplate`)
    length      `too_short` / `too_long` (words)
    paragraphs  each line is a paragraph; corpus/filters.py's paragraph filters (the same as for the
                books: too_short, toc_index, symbols, digits, repeated, not_portuguese)
    language    `not_portuguese` when most language-tested text is not pt (Galician counts as pt, as
                for the books: the identifier confuses the two on real Portuguese)
    quality     Gopher-style (Rae et al. 2021) rules with Portuguese settings: `mean_word_length`,
                `symbols`, `digits`, `uppercase`, `few_letters`, `few_stop_words` (Portuguese function
                words), `spam_words` (advertising vocabulary), `bullet_lines`, `ellipsis_lines`
    repetition  Gopher's repetition rules: `duplicate_lines`, `duplicate_line_chars`,
                `top_ngram_<n>` (the most frequent n-gram covers too many characters) and
                `duplicate_ngram_<n>` (characters inside n-grams seen more than once)
    left        `too_little_text` when the paragraph filters kept less than `min_kept_fraction`

The thresholds are Gopher's where they are language-neutral; the word-length window, the stop words
and the digit ratio were set for Portuguese (mean word length of Portuguese prose is ~4.6 letters,
Gopher's English window is 3-10; Portuguese dates and numbers are written with more digits than the
English rule allows for news text).

Portuguese typography, read on real dialogue, verse and plays of the books (bench/bench_keep.py): a line
opened by a dash (—, –, --, -) is dialogue when it reads as a sentence, not a list bullet, and « » open
and continue quotations; lines of dialogue and verse trailing off in "..." are style, not teasers; a
play's speaker labels ("ANTÓNIO.", "D. BRANCA —") repeat and are upper case by nature, so the
upper-case and duplicate-line rules leave them out; the n-gram rules wait for 50 words, since a refrain
is a large share of a short poem.
"""

from __future__ import annotations

import re
import unicodedata
from collections import Counter
from dataclasses import dataclass, field

import numpy as np

from corpus.filters import FilterConfig, filter_paragraphs

# Function words of Portuguese (pt-PT and pt-BR): real text holds several of them, keyword lists,
# tables and other languages few.
# fmt: off
STOP_WORDS = frozenset({
    "de", "a", "o", "que", "e", "do", "da", "em", "um", "para", "é", "com", "não", "uma", "os", "no", "se",
    "na", "por", "mais", "as", "dos", "como", "mas", "foi", "ao", "ele", "das", "tem", "à", "seu", "sua",
    "lhe", "te", "meu", "minha", "teu", "tua", "nem", "tão", "tu", "vos", "nós", "ai", "oh", "elle", "ella",
    "ou", "ser", "quando", "muito", "há", "nos", "já", "está", "eu", "também", "só", "pelo", "pela", "até",
    "isso", "ela", "entre", "era", "depois", "sem", "mesmo", "aos", "ter", "seus", "quem", "nas", "me",
})
# Lines that are the furniture of a web page, not its text (lower-case substrings).
BOILERPLATE_PHRASES = (
    "cookies", "política de privacidade", "politica de privacidade", "termos de uso", "termos e condições",
    "todos os direitos reservados", "direitos reservados", "clique aqui", "leia mais", "leia também",
    "compartilhe", "compartilhar", "inscreva-se", "assine a newsletter", "newsletter", "faça login",
    "fazer login", "iniciar sessão", "javascript", "siga-nos", "voltar ao topo", "copyright",
)
# Furniture only as a line of its own: in prose "a publicidade de um jornal" is text.
BOILERPLATE_LABELS = ("publicidade", "anúncio", "compartilhe", "compartilhar", "partilhar", "comentários")
# Words of advertising and click-bait. Short documents are let in (see `min_words`), and a short ad
# in fluent Portuguese passes every Gopher rule; what gives it away is its vocabulary.
SPAM_WORDS = frozenset({
    "compre", "frete", "grátis", "gratis", "promoção", "promoções", "desconto", "descontos", "imperdível",
    "imperdíveis", "aproveite", "clique", "cadastre", "ganhe", "bônus", "bonus", "cassino", "casino",
    "apostas", "aposte", "parcelas", "cupom", "whatsapp", "emagrecer", "emagreça", "online", "site",
    "acesse", "acessar", "confira", "garanta", "garantido", "encomende", "preços", "celulares",
})
# fmt: on
_URL = re.compile(r"https?://|www\.\w|\b[\w.-]+\.(?:com|org|net|br|pt)(?:/|\b)", re.IGNORECASE)
_SPACES = re.compile(r"[ \t\u00a0\u2000-\u200b\u3000]+")
_WORD = re.compile(r"\S+")
_NON_LETTERS = re.compile(r"[\W\d_]+")
_WORD_WITH_LETTER = re.compile(r"\S*[^\W\d_]\S*")
_TOKEN = re.compile(r"\w+")  # words for the stop-word and n-gram rules: lower case, no punctuation
_BULLETS = ("•", "●", "▪", "‣", "*", "·", "►", "■", "□", "◦", "✓", "✔")
# A line opened by one of these is Portuguese dialogue ("— Sim, senhor.", "-- Bem sei.", "- Não.") when
# it reads as a sentence; a dash before a bare item ("- Arroz") is a list bullet. "»" and "«" open
# continued quotations, never lists.
_DASHES = ("—", "–", "-")
_SENTENCE_END = ".!?…:;»\"'—"
# A speaker label of a play: "ANTÓNIO.", "D. BRANCA —", "SEBASTIANA:"; repeated by nature, upper case.
_SPEAKER_LABEL = re.compile(r"^[^\W\d_][^\W\d_ .'ªº]*(?:[ .'][^\W\d_ .'ªº]*){0,5}\s*[.:—–-]?$")


@dataclass(frozen=True)
class DocFilterConfig:
    # Fewer words: a headline, a caption, a menu item, a one-line ad. Gopher's 50 (web pages) dropped
    # every paragraph-sized document: real book paragraphs of 100-250 characters have 13-45 words, and
    # 45% of clean Portuguese paragraphs of an extra source went (issue 22). At 15, 185 of 37,280 book
    # paragraphs of 100+ characters were still too short (one long sentence); at 10, 7, and the short ads that now reach the rules are caught by `spam_words`; a
    # source of longer documents can ask for more with its own `min_words`.
    min_words: int = 10
    max_words: int = 1_000_000  # more: a dump of something, not one document
    min_mean_word_length: float = 3.0  # letters per word; Portuguese prose ~4.6
    max_mean_word_length: float = 9.0  # long "words": URLs, hashes, glued text
    max_symbol_word_ratio: float = 0.1  # "#" per word (Gopher)
    # Gopher counts "..." with "#" (0.1 a word); Portuguese dialogue trails off in "..." far more often
    # than English web text: real dialogue pages of the books reach 0.15-0.2 (bench/bench_keep.py)
    max_ellipsis_word_ratio: float = 0.5
    max_digit_ratio: float = 0.15  # digits / non-space characters
    max_uppercase_ratio: float = 0.25  # upper-case / letters: SHOUTING, lists of names
    min_letter_word_fraction: float = 0.8  # words with at least one letter (Gopher)
    min_stop_words: int = 2  # distinct Portuguese function words
    # advertising words per word: ads and keyword pages 0.2-1; the books' prose under 0.01 (bench_keep)
    max_spam_word_ratio: float = 0.06
    max_bullet_line_fraction: float = 0.9  # Gopher
    # Gopher: lines ending in "..." are teasers (0.3 there); verse and dialogue end half their lines so
    max_ellipsis_line_fraction: float = 0.5
    min_lines_for_ellipsis_rule: int = 3
    max_boilerplate_line_fraction: float = 0.5  # of the lines: URL and boilerplate lines
    max_duplicate_line_fraction: float = 0.3  # Gopher
    max_duplicate_line_char_fraction: float = 0.2  # Gopher
    # Gopher: the most frequent n-gram may cover at most this share of the characters of words
    # (both n-gram rules need `min_words_for_ngram_rules`: a refrain is a large share of a short poem)
    top_ngram_fractions: tuple[tuple[int, float], ...] = ((2, 0.20), (3, 0.18), (4, 0.16))
    # Gopher: characters of words inside n-grams that occur more than once (n ascending)
    duplicate_ngram_fractions: tuple[tuple[int, float], ...] = ((5, 0.15), (7, 0.13), (10, 0.10))
    min_words_for_ngram_rules: int = 50
    min_kept_fraction: float = 0.2  # share of the text the paragraph filters must keep
    # each line is a paragraph; short lines are not joined (in web text they are menus, not speaker labels)
    paragraph: FilterConfig = field(default_factory=lambda: FilterConfig(group_short=False))


class DocumentRejected(Exception):
    def __init__(self, reason: str, detail: str = ""):
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason


@dataclass
class CleanedDocument:
    paragraphs: list[str]
    drops: dict[str, int]  # reason -> paragraphs (lines) dropped inside a kept document
    chars: int  # characters of the document's lines before any drop


def clean_lines(text: str) -> list[str]:
    """NFC, one stripped line per non-empty line, runs of spaces collapsed."""
    if not text.isascii():
        text = unicodedata.normalize("NFC", text)
    text = _SPACES.sub(" ", text.replace("\r\n", "\n").replace("\r", "\n"))
    return [line.strip() for line in text.split("\n") if line and not line.isspace()]


def line_junk(line: str) -> str | None:
    """`url_line` or `boilerplate_line` for a line that is page furniture, else None."""
    lower = line.lower()
    words = len(line.split())
    if _URL.search(line) and (words <= 8 or len(_URL.findall(line)) * 8 >= words):
        return "url_line"
    if words <= 25 and any(p in lower for p in BOILERPLATE_PHRASES):
        return "boilerplate_line"
    if words <= 3 and any(p in lower for p in BOILERPLATE_LABELS):
        return "boilerplate_line"
    return None


def _ngram_hashes(ids: np.ndarray, n: int) -> np.ndarray:
    """One 64-bit hash per n-gram of the word-hash sequence `ids` (wrapping multiply-add)."""
    out = np.zeros(len(ids) - n + 1, dtype=np.uint64)
    for k in range(n):
        out = out * np.uint64(0x9E3779B97F4A7C15) + ids[k : len(ids) - n + 1 + k]
    return out


def _ngram_checks(words: list[str], config: DocFilterConfig) -> str | None:
    """Gopher's n-gram repetition rules on the word list; the first failing rule's reason.

    Vectorised: words become ids (in order of first use, so the result never depends on Python's
    per-process string hash), n-grams a rolling 64-bit combination of them, and counts come from
    np.unique (a collision could only merge two n-grams of one document). The top n-gram is the most
    frequent one; of several as frequent, the one covering the most characters."""
    first_use: dict[str, int] = {}
    ids = np.fromiter(
        (first_use.setdefault(w, len(first_use)) for w in words), dtype=np.uint64, count=len(words)
    )
    lengths = np.fromiter(map(len, words), dtype=np.int64, count=len(words))
    total = int(lengths.sum()) or 1
    ends = np.concatenate(([0], np.cumsum(lengths)))  # chars of words[i:i+n] = ends[i+n] - ends[i]
    for n, limit in config.top_ngram_fractions:
        if len(words) < n:
            continue
        _, first, counts = np.unique(_ngram_hashes(ids, n), return_index=True, return_counts=True)
        top = np.flatnonzero(counts == counts.max())
        chars = int((ends[first[top] + n] - ends[first[top]]).max())
        if counts[top[0]] > 1 and counts[top[0]] * chars / total > limit:
            return f"top_ngram_{n}"
    for n, limit in config.duplicate_ngram_fractions:
        if len(words) < n:
            continue
        _, inverse, counts = np.unique(_ngram_hashes(ids, n), return_inverse=True, return_counts=True)
        starts = np.flatnonzero(counts[inverse] > 1)
        if not len(starts):
            return None  # no repeated n-gram: no longer one repeats either
        edges = np.zeros(len(words) + 1, dtype=np.int64)  # +1 where a repeated n-gram starts, -1 after it
        np.add.at(edges, starts, 1)
        np.add.at(edges, starts + n, -1)
        covered = np.cumsum(edges[:-1]) > 0
        if lengths[covered].sum() / total > limit:
            return f"duplicate_ngram_{n}"
    return None


def _count_upper(letters: str) -> int:
    lower = letters.lower()
    if len(lower) != len(letters):  # a rare letter whose lower case is longer (İ)
        return sum(c.isupper() for c in letters)
    a = np.frombuffer(letters.encode("utf-32-le"), dtype=np.uint32)
    return int(np.count_nonzero(a != np.frombuffer(lower.encode("utf-32-le"), dtype=np.uint32)))


def is_bullet_line(line: str) -> bool:
    """A list item: a bullet sign, or a dash before something that does not read as a line of dialogue."""
    if line.startswith(_BULLETS):
        return line[1:2] in (" ", "")  # "*BEMAVENTURADO*—O que..." is emphasis, "* item" a bullet
    if not line.startswith(_DASHES):
        return False
    rest = line.lstrip("—–- ")
    return len(rest.split()) < 8 and line.rstrip()[-1:] not in _SENTENCE_END


def is_dialogue_line(line: str) -> bool:
    return line.startswith(_DASHES) and not is_bullet_line(line)


def is_speaker_label(line: str) -> bool:
    """ "ANTÓNIO.", "D. BRANCA —": the upper-case name of a play's speaker on its own line."""
    return len(line) <= 40 and line.isupper() and bool(_SPEAKER_LABEL.match(line))


def quality_reason(lines: list[str], config: DocFilterConfig) -> str | None:
    """Gopher-style quality and repetition rules over a document's lines; None if it passes.

    Counting is done with str/regex/numpy calls, not loops over characters: this runs on every
    document of a source."""
    text = "\n".join(lines)
    words = text.split()
    n_words = len(words)
    if n_words < config.min_words:
        return "too_short"
    if n_words > config.max_words:
        return "too_long"
    non_space = len(text) - text.count(" ") - text.count("\n")
    digits = sum(map(text.count, "0123456789"))
    if digits / non_space > config.max_digit_ratio:
        return "digits"
    letters = _NON_LETTERS.sub("", text)
    if not config.min_mean_word_length <= len(letters) / n_words <= config.max_mean_word_length:
        return "mean_word_length"
    if text.count("#") / n_words > config.max_symbol_word_ratio:
        return "symbols"
    if (text.count("…") + text.count("...")) / n_words > config.max_ellipsis_word_ratio:
        return "symbols"
    labels = [line for line in lines if is_speaker_label(line)]  # a play's labels are upper case by nature
    label_letters = sum(len(_NON_LETTERS.sub("", line)) for line in labels)
    if (
        len(letters) > label_letters
        and (_count_upper(letters) - label_letters) / (len(letters) - label_letters)
        > config.max_uppercase_ratio
    ):
        return "uppercase"
    # a free-standing "..." of hesitant dialogue ("Talvez ... enganasse") is punctuation, not a word
    loose_dots = text.count(" ... ") + text.count(" … ")
    if len(_WORD_WITH_LETTER.findall(text)) / max(n_words - loose_dots, 1) < config.min_letter_word_fraction:
        return "few_letters"
    tokens = _TOKEN.findall(text.lower())
    if len(STOP_WORDS.intersection(tokens)) < config.min_stop_words:
        return "few_stop_words"
    spam_hits = sum(map(SPAM_WORDS.__contains__, tokens))  # one alone is news ("o site do ministério")
    if spam_hits >= 2 and spam_hits / n_words > config.max_spam_word_ratio:
        return "spam_words"
    if sum(map(is_bullet_line, lines)) / len(lines) > config.max_bullet_line_fraction:
        return "bullet_lines"
    # Gopher's teaser rule ("Leia mais..." lists). A line of dialogue or verse trailing off in "..." is
    # Portuguese style, and a document of one or two lines that ends so is a paragraph, not a list.
    if len(lines) >= config.min_lines_for_ellipsis_rule:
        teasers = sum(line.endswith(("...", "…")) and not is_dialogue_line(line) for line in lines)
        if teasers / len(lines) > config.max_ellipsis_line_fraction:
            return "ellipsis_lines"
    line_counts = Counter(lines)
    dup_lines = [line for line in lines if line_counts[line] > 1 and not is_speaker_label(line)]
    if len(dup_lines) / len(lines) > config.max_duplicate_line_fraction:
        return "duplicate_lines"
    if sum(map(len, dup_lines)) / max(1, len(text)) > config.max_duplicate_line_char_fraction:
        return "duplicate_line_chars"
    return _ngram_checks(tokens, config) if n_words >= config.min_words_for_ngram_rules else None


def clean_document(text: str, config: DocFilterConfig | None = None) -> CleanedDocument:
    """Clean and filter one document; raises DocumentRejected(reason) instead of returning junk."""
    config = config or DocFilterConfig()
    lines = clean_lines(text)
    if not lines:
        raise DocumentRejected("empty")
    chars = sum(map(len, lines))
    drops: Counter[str] = Counter()
    content = []
    for line in lines:
        junk = line_junk(line)
        if junk:
            drops[junk] += 1
        else:
            content.append(line)
    if not content or (len(lines) - len(content)) / len(lines) > config.max_boilerplate_line_fraction:
        raise DocumentRejected("boilerplate", f"{len(lines) - len(content)} of {len(lines)} lines")
    n_words = sum(len(line.split()) for line in content)
    if n_words < config.min_words:
        raise DocumentRejected("too_short", f"{n_words} words")
    result = filter_paragraphs(content, config.paragraph)
    if result.foreign_fraction > config.paragraph.max_foreign_fraction:
        raise DocumentRejected("not_portuguese")
    reason = quality_reason(content, config)
    if reason:
        raise DocumentRejected(reason)
    kept_chars = sum(map(len, result.kept))
    if not result.kept or kept_chars < config.min_kept_fraction * chars:
        raise DocumentRejected("too_little_text", f"kept {kept_chars} of {chars} characters")
    drops.update(result.drops)
    return CleanedDocument(paragraphs=result.kept, drops=dict(drops), chars=chars)
