"""Stages 3 and 4: normalize a book body to one text convention, unwrap prose, keep verse, split paragraphs.

Policy (the same for every book, so the tokenizer sees one convention):
- Unicode NFC; soft hyphens and zero-width characters removed; NBSP, tabs and other spaces become
  one ASCII space; runs of spaces collapse.
- Double quotes “ ” „ ‟ ″ become `"`, single quotes ‘ ’ ‚ ‛ ′ become `'` (the apostrophe in "d'elle").
  Guillemets « » are kept: they are the Portuguese quotation marks, not a typographic variant.
- Dashes: the em dash is the Portuguese dialogue dash and is kept. Gutenberg transcribers typed it as
  `--`, so `--` becomes `—`, as do the horizontal bar ― and an en dash opening a line of dialogue.
  Single hyphens, en dashes in ranges (1850–1860) and rules of 3+ hyphens are left alone:
  `disse-lhe`, `guarda-chuva` are words.
- `_italics_` underscores and `+bold+` pluses are removed (the words stay).
- ASCII tables (a block of ruled lines `+----+----+` / `|----|` and rows with `|` column bars) become
  one line per row with the cells' text joined by " | ": ruled lines and empty cells go, and so do the
  alignment spaces, which `_collapse_spaces` would otherwise leave as meaningless bars and dashes. The
  rows are never unwrapped (they are as wide as the page, which the prose test would take for forced
  breaks). `{` braces grouping rows inside a table count as column bars.
- Hard-wrapped prose is unwrapped to one line per paragraph. A block is prose when most of its line
  breaks were forced, i.e. the next line's first word would not have fit on the line (the greedy
  wrapping the transcriber's editor did; a few columns of slack absorb later edits). Verse and lists
  of short lines are never forced, so they keep their line breaks. A line ending in letter + hyphen is
  joined without a space and the hyphen kept.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass
from itertools import pairwise

import numpy as np

_INVISIBLE = "\u00ad\u200b\u200c\u200d\u2060\ufeff"
_ODD_SPACES = (
    "\t\u00a0\u1680\u2000\u2001\u2002\u2003\u2004\u2005\u2006\u2007\u2008\u2009\u200a\u202f\u205f\u3000"
)
# (character, replacement): applied with str.replace, only for the characters present (a C-level scan
# each); faster than str.translate or a regex with a callback on long non-ASCII text.
_REPLACEMENTS = (
    [(c, "") for c in _INVISIBLE]
    + [(c, '"') for c in "“”„‟″"]
    + [(c, "'") for c in "‘’‚‛′"]
    + [("\u2015", "—")]
    + [(c, " ") for c in _ODD_SPACES]
)
_HYPHEN_RUN_RE = re.compile(r"--+")  # literal first: scanning is fast; runs of 3+ are rules, left alone
_DIALOGUE_EN_DASH_RE = re.compile(r"^([ \t]*)–", re.MULTILINE)
_ITALICS_RE = re.compile(r"_(?<![\w_]_)([^_\s](?:(?:[^_\n]|\n(?!\n)){0,400}?[^_\s])?)_(?![\w_])")
# Gutenberg's plain-text bold: "+ATENÇÃO+", "chamar-se +Ortografia Portuguesa+." (also inside italics,
# "_+menus+_"). The text must open with a letter, so "+---+" corners and "+ 3 47" signs are not bold.
_BOLD_RE = re.compile(r"(?<![^\s(\[«\"'_—])\+([^\W\d_](?:(?:[^+|\n]|\n(?!\n)){0,400}?[^\s+|])?)\+(?![\w+])")
# A table's ruled line ("+-----+----+", "|=====|", "-----+-----"), and a rule segment inside a row.
_RULE_LINE_RE = re.compile(r"[ +|:=-]*(?:---|===)[ +|:=-]*")
_RULE_SEGMENT_RE = re.compile(r"[+=-]*(?:---|===)[+=-]*")
# A column bar: "|" not between two letters (there it divides syllables: "pa|la|vra").
_COLUMN_BAR_RE = re.compile(r"(?<![^\W\d_])\||\|(?![^\W\d_])")
_BRACE_RE = re.compile(r"(?<!\^)\{")  # a brace grouping rows; "^{2}" is a superscript
_SPACE_RUN_RE = re.compile(r" +")
_HYPHEN_BREAK_RE = re.compile(r"(?<=[^\W\d_])([-—])\n")  # letter + hyphen/dash at a line end: join tight
_BLOCK_SPLIT_RE = re.compile(r"\n[ \t]*(?:\n[ \t]*)+")


@dataclass
class UnwrapConfig:
    # Lines longer than this percentile of the book's line lengths are treated as full: it estimates
    # the width the transcriber wrapped at (usually 65-78 characters).
    wrap_width_percentile: float = 0.95
    # Floor for the estimated width, so a book of pure verse (all lines ~40 chars) is not mistaken
    # for prose wrapped at 40.
    min_wrap_width: int = 55
    # Lines longer than this are unwrapped paragraphs (some files mix them with wrapped ones), not a
    # wrap width: they are left out of the estimate.
    max_wrap_width: int = 100
    # Real files are not perfectly greedy-wrapped (lines edited after wrapping, width estimated from a
    # percentile): a break counts as forced when the next word would have overflowed the width minus this.
    wrap_slack: int = 5
    # A block is prose when at least this fraction of its line breaks were forced.
    min_forced_fraction: float = 0.5


def _line_lengths(text: str) -> np.ndarray:
    """Length in characters of every line of `text` (what `map(len, text.split("\n"))` gives), from the
    newline positions in a fixed-width encoding of the text: no million small line strings are made."""
    try:
        units = np.frombuffer(text.encode("latin-1"), dtype=np.uint8)  # most books: one byte a character
    except UnicodeEncodeError:
        units = np.frombuffer(text.encode("utf-16-le", "surrogatepass"), dtype=np.uint16)
        if len(units) != len(text):  # characters beyond the BMP take two UTF-16 units
            units = np.frombuffer(text.encode("utf-32-le", "surrogatepass"), dtype=np.uint32)
    newlines = np.flatnonzero(units == 10)
    return np.diff(newlines, prepend=-1, append=len(text)) - 1


def estimate_wrap_width(text: str, config: UnwrapConfig | None = None) -> int:
    """The width the book was hard-wrapped at, estimated from its line lengths: the
    `wrap_width_percentile` of the non-empty lines no longer than `max_wrap_width`, floored."""
    config = config or UnwrapConfig()
    lengths = _line_lengths(text)
    histogram = np.bincount(lengths[(lengths > 0) & (lengths <= config.max_wrap_width)])
    widths = np.flatnonzero(histogram)
    if not len(widths):
        return config.min_wrap_width
    seen = np.cumsum(histogram[widths])
    rank = config.wrap_width_percentile * int(seen[-1])
    first_above = min(int(np.searchsorted(seen, rank, side="right")), len(widths) - 1)
    return max(int(widths[first_above]), config.min_wrap_width)


def is_prose_block(lines: list[str], width: int, min_forced_fraction: float = 0.5, slack: int = 0) -> bool:
    """True when most line breaks in `lines` (raw, unstripped) were forced by the wrap width."""
    needed = min_forced_fraction * (len(lines) - 1)
    allowed_misses = (len(lines) - 1) - needed
    forced = missed = 0
    limit = width - 1 - slack
    for line, nxt in pairwise(lines):
        nxt = nxt.lstrip()
        cut = nxt.find(" ")
        if len(line.rstrip()) + (len(nxt) if cut < 0 else cut) > limit:
            forced += 1
            if forced >= needed:  # decided: stop early (most blocks are plain prose)
                return True
        else:
            missed += 1
            if missed > allowed_misses:
                return False
    return forced >= needed


def join_prose_lines(lines: list[str]) -> str:
    """Join wrapped lines with spaces; after a trailing hyphen or dash join without a space and keep it
    (Portuguese hyphens are part of words: "disse-\\nlhe" is "disse-lhe")."""
    text = "\n".join(map(str.strip, lines))
    if "-\n" in text or "—\n" in text:
        text = _HYPHEN_BREAK_RE.sub(r"\1", text)
    return text.replace("\n", " ")


def normalize_text(body: str, config: UnwrapConfig | None = None) -> str:
    """Normalize a body (blocks separated by blank lines) to paragraphs separated by one blank line:
    prose on one line each, verse with its line breaks."""
    config = config or UnwrapConfig()
    if not _is_nfc(body):
        body = unicodedata.normalize("NFC", body)
    for char, replacement in _REPLACEMENTS:
        if char in body:
            body = body.replace(char, replacement)
    width = estimate_wrap_width(body, config)
    # At the floor the book is mostly short lines (verse): no slack, every line break counts as meant.
    slack = config.wrap_slack if width > config.min_wrap_width else 0
    paragraphs = []
    for block in _BLOCK_SPLIT_RE.split(body):
        if "\n" not in block:
            para = block.strip()
            if para:
                paragraphs.append(para)
            continue
        lines = block.strip("\n").split("\n")  # no blank line inside: blank lines are the block separators
        if ("|" in block or "{" in block) and is_table_block(lines):
            para = table_text(lines)
        elif len(lines) == 1 or is_prose_block(lines, width, config.min_forced_fraction, slack):
            para = join_prose_lines(lines)
        else:
            para = "\n".join(map(str.strip, lines))
        if para:
            paragraphs.append(para)
    text = "\n\n".join(paragraphs)
    # Length-changing rewrites come after unwrapping: the wrap test must see the widths the transcriber's
    # editor saw ("--" was two columns, "_word_" seven).
    text = _collapse_spaces(text)
    if "---" in text:
        text = _HYPHEN_RUN_RE.sub(lambda m: "—" if len(m.group()) == 2 else m.group(), text)
    elif "--" in text:
        text = text.replace("--", "—")
    if "–" in text:
        text = _DIALOGUE_EN_DASH_RE.sub(r"\1—", text)
    if "_" in text:
        text = _ITALICS_RE.sub(_first_group, text)
    if "+" in text:
        text = _BOLD_RE.sub(_first_group, text)
    return text


def _is_rule_line(line: str) -> bool:
    return bool(_RULE_LINE_RE.fullmatch(line.strip()))


def is_table_block(lines: list[str]) -> bool:
    """An ASCII table: ruled lines and rows with column bars make at least half of the block's lines,
    with at least two rows with bars (a lone rule under a heading is not a table) and at least one
    ruled line or `{` brace, as tables have; a reading primer's "pa|la|vra" has no column bar."""
    rules = rows = braces = 0
    for line in lines:
        if _is_rule_line(line):
            rules += 1
        elif _COLUMN_BAR_RE.search(line):
            rows += 1
        elif "{" in line and _BRACE_RE.search(line):
            braces += 1
    return rows >= 2 and bool(rules or braces) and 2 * (rules + rows + braces) >= len(lines)


def table_text(lines: list[str]) -> str:
    """The rows of an ASCII table, one a line, cells joined by " | "; ruled lines and empty cells go."""
    rows = []
    for line in lines:
        if _is_rule_line(line):
            continue
        line = _RULE_SEGMENT_RE.sub("|", _BRACE_RE.sub("|", line))
        cells = [c for c in map(str.strip, line.split("|")) if c]
        if cells:
            rows.append(" | ".join(cells))
    return "\n".join(rows)


def _is_nfc(text: str) -> bool:
    """unicodedata.is_normalized("NFC", text), with a fast path for the ~80% of books whose text fits in
    Latin-1: every character below U+0100 is NFC-stable with no combining class, so such text is NFC, and
    the encode that proves it fits is a memcpy."""
    try:
        text.encode("latin-1")
    except UnicodeEncodeError:
        return unicodedata.is_normalized("NFC", text)
    return True


def _first_group(match: re.Match) -> str:
    return match.group(1)  # cheaper per match than the template r"\1", which re expands in Python


def _collapse_spaces(text: str) -> str:
    """Runs of spaces become one space. A book has ~100 runs in ~200k characters: jumping between them with
    str.find and slicing is ~1.5x faster than re.sub."""
    i = text.find("  ")
    if i < 0:
        return text
    parts, start = [], 0
    while i >= 0:
        end = _SPACE_RUN_RE.match(text, i).end()
        parts.append(text[start : i + 1])
        start = end
        i = text.find("  ", end)
    parts.append(text[start:])
    return "".join(parts)


def split_paragraphs(text: str) -> list[str]:
    """Paragraphs of normalized text, in order; a paragraph's index in this list is its paragraph_index."""
    return [p for p in text.split("\n\n") if p and not p.isspace()]
