"""Stage 2: cut a decoded Gutenberg file into header, body and footer, and clean the body's edges.

Gutenberg's layout changed many times between 1991 and today: the 1990s "SMALL PRINT" headers,
the 2004-2011 `*** START OF THIS PROJECT GUTENBERG EBOOK X ***` with a header block and a full
license after the END marker, the 2012+ `*** START OF THE ...` (sometimes `***START...***` with no
spaces, sometimes with the title running onto a second line), and today's regenerated /files/ copies
that are nothing but the two markers, often keeping an old `End of the Project Gutenberg EBook of X`
line just before the END marker. The markers are matched loosely (any asterisks, any spacing, THE or
THIS, EBOOK/EBook/eBook/E-Text) and the earliest end line wins, so all of them cut the same way.

Inside the markers the body still carries volunteer credits ("Produced by ..."), HTML-version notes,
transcriber's notes, illustration placeholders and page markers; these are removed here so that the
later stages only ever see the author's text.
"""

from __future__ import annotations

import re
from dataclasses import dataclass


class BookRejected(Exception):
    """A book that cannot be cleaned; `.reason` is a short code counted by the corpus builder."""

    def __init__(self, reason: str, detail: str = ""):
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


@dataclass
class BookMetadata:
    title: str | None = None
    author: str | None = None
    language: str | None = None
    release_date: str | None = None
    encoding: str | None = None  # as declared in the header (the codec used is on CleanedBook)


@dataclass
class StrippedBook:
    header: str  # everything before the body, START marker included
    body: str  # the author's text, blocks separated by blank lines
    footer: str  # END marker (or "End of the Project Gutenberg ..." line) and everything after
    metadata: BookMetadata
    removed_blocks: int  # credit / note blocks dropped from the body's edges and middle
    removed_placeholders: int  # [Illustration]-style tags and page markers removed


_F = re.IGNORECASE | re.MULTILINE
# "*** START OF THIS PROJECT GUTENBERG EBOOK X ***", "***START OF THE PROJECT GUTENBERG EBOOK X***", ...
START_RE = re.compile(
    r"^[ \t*]*START[ \t]+OF[ \t]+(?:THE|THIS)[ \t]+PROJECT[ \t]+GUTENBERG[ \t]+E-?(?:BOOK|TEXT)\b.*$", _F
)
# 1990s files: the body begins after "*END*THE SMALL PRINT! FOR PUBLIC DOMAIN ETEXTS*Ver.04.29.93*END*".
SMALL_PRINT_END_RE = re.compile(r"^[ \t*]*END[ \t*]*THE SMALL PRINT\b.*$", _F)
END_RE = re.compile(
    r"^[ \t*]*(?:END[ \t]+OF[ \t]+(?:THE|THIS)[ \t]+PROJECT[ \t]+GUTENBERG[ \t]+E-?(?:BOOK|TEXT)\b"
    r"|End[ \t]+of[ \t]+(?:the[ \t]+)?Project[ \t]+Gutenberg)",
    _F,
)
_HEADER_FIELD_RE = re.compile(
    r"^(Title|Author|Release Date|Posting Date|Language|Character set encoding):[ \t]*(.*)$", _F
)
_FIRST_LINE_RE = re.compile(
    r"^\W*(?:The )?Project Gutenberg(?:'s|’s)?(?: E-?Book| Etext)?(?:,| of)?[ \t]+(.+?)(?:,[ \t]+by[ \t]+(.+))?$",
    re.IGNORECASE,
)
_EBOOK_NO_RE = re.compile(r"\s*\[\s*E-?(?:Book|text)\s*#\s*\d+\s*\]", re.IGNORECASE)

# Blocks (text between blank lines) that are credits or notes about the e-text, not the book.
CREDIT_RE = re.compile(
    r"^\W*(?:Produced by|Produzido por|E-?text prepared by|This e-?(?:text|book|file) was|Transcribed (?:by|from)"
    r"|Digiti[sz]ed by|Scanned by|Prepared by|Note: Project Gutenberg|Nota: (?:o )?Projecto Gutenberg)",
    re.IGNORECASE,
)
GUTENBERG_MENTION_RE = re.compile(
    r"Project Gutenberg|Projecto Gutenberg|gutenberg\.(?:org|net)|pgdp\.net|Distributed\s+Proofread"
    r"|produced from (?:scanned )?images|www\.gutenberg|Biblioteca Nacional Digital|\bbnd\.bn\.pt",
    re.IGNORECASE,
)
# "Lista de erros corrigidos" heads the transcriber's table of the misprints they corrected ("#pág. 53 |
# pefil | perfil") at the end of many Portuguese e-texts: the misspellings are not the author's text.
TRANSCRIBER_NOTE_RE = re.compile(
    r"^[\s\[*_]*(?:Notas? do transcritor|Notas? de transcrição|Transcriber'?s? notes?|Nota do digitalizador"
    r"|Lista de erros corrigidos)\b",
    re.IGNORECASE,
)
_NOTE_CONTENT_RE = re.compile(
    r"transcri|corrigid|corrected|errors?\b|erros? tipogr|original|alteraç|ortogr|spelling|gralha",
    re.IGNORECASE,
)
_TABLE_ROW_RE = re.compile(r"\S[ \t]{3,}\S")
# [Illustration], [Ilustração: ...], [Figura], [IMAGEM: ...], [Nota do Transcritor: ...] and page markers
# like [Pag. 19.], [Pg 12], [Página 3]. Footnotes ("[Nota de rodapé 1: ...]") are the author's: kept.
_PLACEHOLDER = (
    r"\[[ \t*_]*(?:Illustra\w*|Ilustra\w*|Figura|Imagem|Gravura|Estampa|Retrato|Fotografia|Image"
    r"|Notas? do transcritor|Transcriber'?s? notes?)\b(?:[^\[\]]|\[[^\[\]\n]{0,20}\]){0,2000}\]"
    r"|\[(?:Pag|Pág|Pg|Página|Pagina|Page)\.?[ \t]*\d+[ \t]*\.?\]"
)
# A placeholder alone on its line(s) goes with its line break, so that a page marker inside a wrapped
# paragraph does not split it in two; elsewhere only the tag goes. "{12}" is a page marker only alone.
PLACEHOLDER_RE = re.compile(_PLACEHOLDER, re.IGNORECASE)  # starts with a literal "[": scans fast
_PAGE_NUMBER_LINE_RE = re.compile(r"[ \t]*\{\d{1,4}\}[ \t]*(?=\n)")  # "{12}" counts only alone on a line
_SENTINEL = "\x01"  # stands in for a removed placeholder until its line is known to be otherwise empty
_SENTINEL_LINE_RE = re.compile(r"\n[ \t]*\x01[ \t]*(?=\n)")
_BLOCK_SPLIT_RE = re.compile(r"\n[ \t]*(?:\n[ \t]*)+")
# What must never reach the corpus: what tests and the bench count as boilerplate residue. Plain
# substrings searched in the lowercased text (a case-insensitive regex alternation over a whole book is
# ~100x slower); "Produced by" only at a line start and case-sensitive, as prose says "produced by".
RESIDUE_NEEDLES = (
    "project gutenberg", "projecto gutenberg", "gutenberg.org", "pgdp.net", "distributed proofread",
    "start of the project", "start of this project", "end of the project", "end of this project",
    "small print", "full license", "this file should be named", "transcriber's note", "transcribers note",
    "nota do transcritor", "notas do transcritor", "[illustra", "[ilustra",
)  # fmt: skip


def find_residue(text: str) -> str | None:
    """The first line of `text` holding Gutenberg boilerplate, or None."""
    lower = text.lower()
    hits = [i for i in (lower.find(n) for n in RESIDUE_NEEDLES) if i >= 0]
    i = text.find("\nProduced by")
    if i >= 0 or text.startswith("Produced by"):
        hits.append(i + 1)
    if not hits:
        return None
    at = min(hits)
    return text[text.rfind("\n", 0, at) + 1 : (text.find("\n", at) + 1 or len(text) + 1) - 1]


# How many blocks at each end of the body are checked for credits and Gutenberg mentions (front matter
# can hold a title page, a dedication and a translator's licence before the credit-like block).
EDGE_BLOCKS = 12


def _find_start(text: str) -> tuple[int, int] | None:
    """(header_end, body_start) offsets, or None. The START line may run onto following lines
    ("...EBOOK OS FIDALGOS\\n(VOL. I) ***") when the title is long; those lines belong to the marker."""
    m = START_RE.search(text)
    if m is None:
        m = SMALL_PRINT_END_RE.search(text)
        if m is None:
            return None
        return m.start(), m.end()
    end = m.end()
    line = m.group(0).strip()
    if line.startswith("*") and not line.endswith("*"):
        pos = end
        for _ in range(3):  # the title wraps over at most a few lines
            nl = text.find("\n", pos + 1)
            nxt = text[pos + 1 : nl if nl >= 0 else len(text)].strip()
            if not nxt:
                break
            pos = nl if nl >= 0 else len(text)
            if nxt.endswith("*"):
                end = pos
                break
    return m.start(), end


def find_end(text: str, body_start: int) -> int | None:
    """Offset of the first END line after `body_start`. Every END variant names Project Gutenberg, so
    only lines holding "gutenberg" are tried: a plain substring scan, much faster than a line-anchored
    case-insensitive regex over a whole book."""
    best = None
    # "Gutenberg" and "gutenberg" are found in one scan for "utenberg" (then the letter before is checked):
    # two passes over the book instead of three.
    for tail, heads in (("utenberg", "Gg"), ("UTENBERG", "G")):
        pos = text.find(tail, body_start + 1)
        while pos >= 0 and (best is None or pos - 1 < best):
            if text[pos - 1] in heads:
                line_start = text.rfind("\n", 0, pos - 1) + 1
                if line_start >= body_start and END_RE.match(text, line_start):
                    best = line_start
                    break
            pos = text.find(tail, pos + 1)
    return best


def _field(header: str, name: str) -> str | None:
    """A header field with its indented continuation lines ("Title: X\\n       subtitle")."""
    for m in _HEADER_FIELD_RE.finditer(header):
        if m.group(1).lower() != name.lower():
            continue
        parts = [m.group(2).strip()]
        rest = header[m.end() + 1 :].split("\n")
        for line in rest[:4]:
            if line[:1] in (" ", "\t") and line.strip():
                parts.append(line.strip())
            else:
                break
        value = " ".join(p for p in parts if p)
        return value or None
    return None


def parse_metadata(header: str) -> BookMetadata:
    """Title, author, language, release date and declared encoding from a header block; missing fields
    fall back to the first line ("The Project Gutenberg EBook of X, by Y") and the START marker's title."""
    meta = BookMetadata(
        title=_field(header, "Title"),
        author=_field(header, "Author"),
        language=_field(header, "Language"),
        release_date=_field(header, "Release Date") or _field(header, "Posting Date"),
        encoding=_field(header, "Character set encoding"),
    )
    if meta.release_date:
        meta.release_date = _EBOOK_NO_RE.sub("", meta.release_date).strip() or None
    if meta.title is None or meta.author is None:
        first = next((ln.strip() for ln in header.split("\n") if ln.strip()), "")
        m = _FIRST_LINE_RE.match(first)
        if m and not START_RE.match(first):
            meta.title = meta.title or m.group(1).strip(" ,")
            meta.author = meta.author or (m.group(2).strip() if m.group(2) else None)
    if meta.title is None:
        m = START_RE.search(header)
        if m:
            marker = re.sub(r"\s+", " ", header[m.start() :]).strip()
            t = re.sub(r"^.*?E-?(?:BOOK|TEXT)\b", "", marker, count=1, flags=re.IGNORECASE).strip(" *")
            if t and not t.isdigit():
                meta.title = t
    return meta


# Lowercase substrings, one of which every GUTENBERG_MENTION_RE match contains; the case-insensitive regex
# (no literal to scan for) runs only on blocks holding one. "İ", "ı" and "ſ" match "i"/"s" in re's
# case-insensitive mode but do not lowercase to them: a block holding one always goes to the regex.
_MENTION_NEEDLES = (
    "gutenberg", "pgdp.net", "distributed", "produced from ", "biblioteca nacional digital", "bnd.bn.pt",
)  # fmt: skip


def mentions_gutenberg(block: str) -> bool:
    """GUTENBERG_MENTION_RE.search(block), without running the regex on the usual block that mentions
    nothing (lowercasing + six substring scans cost a fraction of the case-insensitive alternation)."""
    lower = block.lower()
    if not any(n in lower for n in _MENTION_NEEDLES) and not any(c in block for c in "\u0130\u0131\u017f"):
        return False
    return bool(GUTENBERG_MENTION_RE.search(block))


def _is_credit(block: str) -> bool:
    return bool(CREDIT_RE.match(block) or mentions_gutenberg(block))


def _is_note_content(block: str) -> bool:
    lines = [ln for ln in block.split("\n") if ln.strip()]
    table_rows = sum(1 for ln in lines if _TABLE_ROW_RE.search(ln.strip()))
    return bool(_NOTE_CONTENT_RE.search(block)) or table_rows * 2 >= len(lines)


def clean_body_blocks(blocks: list[str]) -> tuple[list[str], int]:
    """Drop credit blocks at both edges and transcriber's notes anywhere. Returns (blocks, dropped)."""
    n = len(blocks)
    drop = [False] * n
    for i in range(min(EDGE_BLOCKS, n)):
        if _is_credit(blocks[i]):
            drop[i] = True
    for i in range(max(0, n - EDGE_BLOCKS), n):
        if mentions_gutenberg(blocks[i]):
            drop[i] = True
    i = 0
    while i < n:
        if TRANSCRIBER_NOTE_RE.match(blocks[i]):
            drop[i] = True
            heading_only = "\n" not in blocks[i].strip() and len(blocks[i].strip()) < 40
            j = i + 1
            # A bare "Nota do transcritor:" heading: the note is in the next blocks (text, correction table).
            while heading_only and j < n and j <= i + 12 and _is_note_content(blocks[j]):
                drop[j] = True
                j += 1
            i = j
        else:
            i += 1
    kept = [b for b, d in zip(blocks, drop, strict=True) if not d]
    return kept, n - len(kept)


def _mark_page_number_lines(text: str) -> tuple[str, int]:
    """Replace each line that is only a page number ("{12}", spaces around allowed) by the sentinel, in
    `text` that starts and ends with a newline. Jumps between the rare "{" with str.find: a regex for
    a whole line has no literal to scan for and tests every position (35x slower on a book)."""
    parts, start, n = [], 0, 0
    i = text.find("{")
    while i >= 0:
        line_start = text.rfind("\n", 0, i) + 1
        m = None
        if line_start and not text[line_start:i].strip(" \t"):  # "{" opens its line
            m = _PAGE_NUMBER_LINE_RE.match(text, line_start)
        if m:
            parts += [text[start:line_start], _SENTINEL]
            start, n = m.end(), n + 1
        i = text.find("{", m.end() if m else i + 1)
    if not n:
        return text, 0
    parts.append(text[start:])
    return "".join(parts), n


def strip_gutenberg_boilerplate(text: str, min_body_chars: int = 200) -> StrippedBook:
    """Split decoded text into header / body / footer and parse the header's metadata.

    Raises BookRejected("no_start_marker" | "no_end_marker" | "too_little_text") rather than
    returning an empty or license-polluted body."""
    start = _find_start(text)
    if start is None:
        raise BookRejected("no_start_marker", "no '*** START OF ... PROJECT GUTENBERG' or SMALL PRINT line")
    header_end, body_start = start
    end = find_end(text, body_start)
    if end is None:
        raise BookRejected(
            "no_end_marker", "no END marker or 'End of the Project Gutenberg' line after START"
        )
    header, raw_body, footer = text[:body_start], text[body_start:end], text[end:]

    blocks = [b.strip("\n") for b in _BLOCK_SPLIT_RE.split(raw_body)]
    blocks = [b for b in blocks if b and not b.isspace()]  # not blank (isspace makes no copy, strip would)
    blocks, removed_blocks = clean_body_blocks(blocks)
    body = "\n\n".join(blocks)
    removed_placeholders = 0
    if "[" in body or "{" in body:
        body = "\n" + body + "\n"
        body, removed_placeholders = PLACEHOLDER_RE.subn(_SENTINEL, body)
        if "{" in body:
            body, n = _mark_page_number_lines(body)
            removed_placeholders += n
        if removed_placeholders:
            # A placeholder alone on its line goes with its line break, so that a page marker inside a
            # wrapped paragraph does not split it in two; elsewhere only the tag goes.
            body = _SENTINEL_LINE_RE.sub("", body).replace(_SENTINEL, "")
        body = body[1:-1]

    # Letters are counted only in a short body: a long one has enough whatever it holds.
    letters = len(body) if len(body) >= 4 * min_body_chars else sum(ch.isalpha() for ch in body)
    if letters < min_body_chars:
        raise BookRejected("too_little_text", f"{letters} letters left between the markers")
    return StrippedBook(
        header=header,
        body=body,
        footer=footer,
        metadata=parse_metadata(header),
        removed_blocks=removed_blocks,
        removed_placeholders=removed_placeholders,
    )
