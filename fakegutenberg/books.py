"""The project's own fake Project Gutenberg collection: Portuguese books written for ptgpt.

Tests, the local mirror and the offline demo need Portuguese "Gutenberg" files with every header
and footer layout, charset, line ending and in-body hazard that the real collection has, but real
books must never be copied into the repository. So this module writes them: a dozen original texts
(`texts/*.txt`, written for this project) plus a seeded generator of Portuguese prose
(fakegutenberg/prose.py), each wrapped the way Gutenberg served books between 1993 and 2025: the
headers, licenses and in-body hazards this module renders.

Every SampleBook knows its `body`: the text a perfect cleaner recovers from `raw_bytes()`. The
body contract (what corpus cleaners are tested against):
- paragraphs are separated by one blank line ("\\n\\n"); a prose paragraph is one line;
- verse keeps its line breaks ("\\n" inside a paragraph); lines carry no surrounding spaces;
- NFC; headings ("CAPÍTULO I") are one-line paragraphs of the body;
- no header, license, START/END markers, legacy "End of the Project Gutenberg ..." lines,
  credits ("Produced by ..."), transcriber's notes, "[Ilustração ...]" placeholders, page markers
  ("[Pg 12]", "{12}") or "Note: Project Gutenberg also has an HTML version ..." blocks;
- the characters are the ones the file can hold: an ISO-8859-1 book writes the em dash as "--".
Hard-wrapped prose may break a line right after the hyphen of a clitic or compound ("disse-" /
"lhe"); such a line end is always letter + "-", and means "join without a space". Every other line
end inside a paragraph is a space.

Where the body sits: between the `*** START OF ...` and `*** END OF ...` marker lines (all their
spellings), or, in the 1990s files, between the `*END*THE SMALL PRINT!...*END*` line and the
closing `End of the Project Gutenberg Etext of ...` line. The `no-marker` book has no START/END
marker at all: a correct cleaner rejects it (`cleanable`).
"""

from __future__ import annotations

import csv
import functools
import io
import random
import re
import unicodedata
from dataclasses import dataclass
from pathlib import Path

from common.files import write_bytes_atomic
from fakegutenberg.prose import FIRST_NAMES, SURNAMES, TITLE_PATTERNS, TITLE_PLACES, generated_body
from scraping.catalog import CATALOG_COLUMNS

TEXTS_DIR = Path(__file__).resolve().parent / "texts"

VARIANTS = (
    "small-print-1990s",
    "ebook-of-EBook/START-THIS",
    "ebook-of-EBook/ends-END-FULL-LICENSE",
    "pgs-possessive/START-THIS",
    "ebook-comma/START-THE-nospace",
    "ebook-of-eBook/START-THE",
    "ebook-of-eBook/START-THE-nospace",
    "markers-only/START-THE",
    "markers-only+legacy-endline/START-THE",
    "cache-epub-2023",
    "no-marker",
)
ENCODINGS = ("utf-8", "utf-8-sig", "iso-8859-1", "cp1252", "iso-8859-15")
LAYOUTS = ("cache", "files-0", "files-8", "files-plain")

# Hazards a book may carry (see _render_text): everything a cleaner must strip, or cope with.
FEATURES = (
    "credit",  # "Produced by ..." right after the START marker
    "credit-after-end",  # the credit repeated after the END marker (2003-2010 files)
    "etext-credit",  # "E-text prepared by ..." instead of "Produced by ..."
    "header-credit",  # "Produced by: ..." in the header, above the START marker (2012+)
    "posting-date",  # "Posting Date: ... [EBook #N]" / "Release Date:" / "First Posted:"
    "updated",  # a "Most recently updated:" header line
    "note-bracket",  # "[Nota do transcritor: ...]" (may span lines)
    "note-block",  # "Nota do transcritor:" heading over an indented block
    "note-en",  # "Transcriber's Note:" heading over an indented block
    "html-note",  # "Note: Project Gutenberg also has an HTML version of this file ..."
    "illustrations",  # "[Ilustração]", "[Ilustração: ...]", "[Illustration: ...]" (multi-line)
    "page-markers",  # "[Pg 12]" inside a wrapped paragraph, "{13}" between paragraphs
    "verse-indent",  # verse lines indented by four spaces
    "unwrapped",  # prose paragraphs on one long line
    "bom-blank",  # a blank line right after the BOM, before the first line
    "marker-id",  # START/END markers name the ebook number instead of the title
    "ascii-upper",  # marker title upper-cased for ASCII letters only ("CRóNICAS"), a real quirk
    "wrapped-endline",  # the legacy "End of the Project Gutenberg EBook of" line spans two lines
    "small-print-2002",  # the 2002 "EBOOKS" flavour of the small print
    "catalog-subtitle",  # the catalog writes "Title: Subtitle" as two lines inside one quoted field
)

# fmt: off
MONTHS = ("January", "February", "March", "April", "May", "June", "July", "August", "September",
          "October", "November", "December")  # English: Gutenberg's headers are in English
# fmt: on
HEADING_RE = re.compile(r"^(CAPÍTULO|CAPITULO|CHAPTER|CANTO|[IVXLC]+\b|MORALIDADE|[A-ZÀ-Ý ]{6,}$)")


@dataclass(frozen=True)
class SampleBook:
    """One fake Gutenberg book: catalog metadata, how Gutenberg served it, and its clean text."""

    id: int  # Gutenberg-like ebook number (>= 90001: clearly fake)
    title: str
    author: str  # catalog form, "Surname, Given"
    language: str  # catalog language field: "pt" (or "en; pt")
    issued: str  # YYYY-MM-DD
    variant: str  # one of VARIANTS
    encoding: str  # python codec of the file bytes (one of ENCODINGS)
    newline: str  # "\r\n" or "\n"
    layout: str  # one of LAYOUTS: the single URL a Gutenberg-layout server serves it at
    body: str  # what a perfect cleaner recovers (see the module docstring)
    features: tuple[str, ...] = ()  # header/body hazards, see FEATURES
    wrap: int = 70  # hard-wrap column of prose
    subjects: str = "Portuguese fiction"
    bookshelves: str = "PT Contos; Browsing: Literature; Browsing: Fiction"
    generated: bool = False  # body from the procedural generator rather than texts/

    def raw_bytes(self) -> bytes:
        """The file exactly as "Gutenberg" would serve it."""
        return _render_bytes(self)

    @property
    def url_path(self) -> str:
        """Where a Gutenberg-layout server serves this book, e.g. "/files/90003/90003-8.txt"."""
        i = self.id
        return {
            "cache": f"/cache/epub/{i}/pg{i}.txt",
            "files-0": f"/files/{i}/{i}-0.txt",
            "files-8": f"/files/{i}/{i}-8.txt",
            "files-plain": f"/files/{i}/{i}.txt",
        }[self.layout]

    @property
    def has_bom(self) -> bool:
        return self.encoding == "utf-8-sig"

    @property
    def declared_charset(self) -> str | None:
        """The value of the file's own `Character set encoding:` line, None when it has none."""
        if self.variant not in _DECLARES_CHARSET:
            return None
        return {"utf-8": "UTF-8", "utf-8-sig": "UTF-8", "iso-8859-15": "ISO-8859-15"}.get(
            self.encoding,
            "ISO-8859-1",  # the cp1252 book declares ISO-8859-1, like the real ones
        )

    @property
    def cleanable(self) -> bool:
        """False for the book a correct cleaner must reject (no START/END marker)."""
        return self.variant != "no-marker"

    @property
    def author_display(self) -> str:
        """The header form of the author: "Surname, Given" -> "Given Surname"."""
        surname, _, given = self.author.partition(", ")
        return f"{given} {surname}" if given else surname


_DECLARES_CHARSET = {
    "ebook-of-EBook/START-THIS",
    "ebook-of-EBook/ends-END-FULL-LICENSE",
    "pgs-possessive/START-THIS",
    "ebook-comma/START-THE-nospace",
    "ebook-of-eBook/START-THE",
    "ebook-of-eBook/START-THE-nospace",
    "no-marker",
}


# ---------------------------------------------------------------------------------------------
# Characters: an 8-bit book can only hold what its charset has, and real ones wrote the em dash
# as "--". The body of such a book is the text as that file holds it.

_ASCII_PUNCT = {"—": "--", "–": "-", "“": '"', "”": '"', "‘": "'", "’": "'", "…": "..."}


def fit_charset(text: str, encoding: str) -> str:
    """`text` with the punctuation `encoding` cannot hold spelled the way 8-bit Gutenberg files do."""
    if encoding.startswith("utf-8") or encoding == "cp1252":
        return text
    for char, plain in _ASCII_PUNCT.items():
        text = text.replace(char, plain)
    text.encode(encoding)  # anything else unencodable is a bug in the sample text: fail loudly
    return text


def load_text(name: str) -> str:
    """One of the hand-written texts in texts/, in the body form (NFC, "\\n" line ends)."""
    text = (TEXTS_DIR / f"{name}.txt").read_text(encoding="utf-8")
    return unicodedata.normalize("NFC", text.replace("\r\n", "\n")).strip()


# ---------------------------------------------------------------------------------------------
# Rendering: body -> lines of the served file.


def wrap_prose(text: str, width: int, hyphen_breaks: bool = True) -> list[str]:
    """Greedy hard wrap at `width`; may break right after the hyphen of "disse-lhe"-like words."""
    lines: list[str] = []
    line = ""
    for word in text.split():
        if not line:
            line = word
        elif len(line) + 1 + len(word) <= width:
            line += " " + word
        else:
            head = _hyphen_head(word, width - len(line) - 1) if hyphen_breaks else ""
            if head:
                lines.append(f"{line} {head}")
                line = word[len(head) :]
            else:
                lines.append(line)
                line = word
    if line:
        lines.append(line)
    return lines


def _hyphen_head(word: str, room: int) -> str:
    """The longest prefix of `word` ending at a letter-hyphen-letter hyphen that fits in `room`."""
    best = ""
    for i in range(1, len(word) - 1):
        if word[i] == "-" and word[i - 1].isalpha() and word[i + 1].isalpha() and i + 1 <= room:
            best = word[: i + 1]
    return best


def _is_heading(paragraph: str) -> bool:
    return "\n" not in paragraph and len(paragraph) < 50 and bool(HEADING_RE.match(paragraph))


def _date_words(iso: str) -> tuple[str, str]:
    """("August 2, 2005", "August, 2005") from "2005-08-02"."""
    y, m, d = (int(x) for x in iso.split("-"))
    return f"{MONTHS[m - 1]} {d}, {y}", f"{MONTHS[m - 1]}, {y}"


def _marker_title(book: SampleBook) -> str:
    if "marker-id" in book.features:
        return str(book.id)
    if "ascii-upper" in book.features:
        return "".join(c.upper() if c.isascii() else c for c in book.title)
    return book.title.upper()


def _credit_names(rng: random.Random) -> str:
    k = rng.randint(1, 3)
    names = [
        f"{first} {last}"
        for first, last in zip(rng.sample(FIRST_NAMES, k), rng.sample(SURNAMES, k), strict=True)
    ]
    return ", ".join(names)


def _body_region(book: SampleBook, rng: random.Random) -> list[str]:
    """Lines between the START and END markers: credits, notes, placeholders and the wrapped body."""
    out: list[str] = []
    f = book.features
    pd = "https://www.pgdp.net" if book.issued >= "2011" else "http://www.pgdp.net"
    credit = ""
    if "credit" in f and book.variant != "small-print-1990s":  # those say "This etext was prepared by"
        credit = f"Produced by {_credit_names(rng)} and the Online Distributed Proofreading Team at {pd}"
    elif "etext-credit" in f:
        credit = (
            f"E-text prepared by {_credit_names(rng)} and the Project Gutenberg Online "
            f"Distributed Proofreading Team ({pd})"
        )
    if credit:
        out += ["", "", ""] + wrap_prose(credit, book.wrap, hyphen_breaks=False) + [""] * 3
    if "html-note" in f:
        out += [
            "",
            "Note: Project Gutenberg also has an HTML version of this",
            "      file which includes the original illustrations.",
            f"      See {book.id}-h.htm or {book.id}-h.zip:",
            f"      (http://www.gutenberg.org/files/{book.id}/{book.id}-h/{book.id}-h.htm)",
            "      or",
            f"      (http://www.gutenberg.org/files/{book.id}/{book.id}-h.zip)",
            "",
            "",
        ]
    if "note-block" in f:
        note = (
            "Foram corrigidos diversos erros tipográficos evidentes, sem que seja feita "
            "qualquer menção desse facto. A ortografia original foi mantida."
        )
        out += ["", "Nota do transcritor:", ""]
        out += ["    " + x for x in wrap_prose(fit_charset(note, book.encoding), 62, False)] + ["", ""]
    if "note-en" in f:
        note = (
            "Obvious printer's errors have been corrected. The Portuguese passages keep the "
            "spelling of the printed book."
        )
        out += ["", "Transcriber's Note:", ""] + ["    " + x for x in wrap_prose(note, 62, False)] + ["", ""]
    if "note-bracket" in f:
        note = fit_charset(
            "[Nota do transcritor: Manteve-se a grafia do original, incluindo as suas inconsistências.]",
            book.encoding,
        )
        out += [""] + wrap_prose(note, book.wrap, hyphen_breaks=False) + ["", ""]
    out += ["", ""]

    paragraphs = book.body.split("\n\n")
    illus_at = (
        sorted(rng.sample(range(1, len(paragraphs)), min(3, len(paragraphs) - 1)))
        if "illustrations" in f
        else []
    )
    captions = [
        "[Ilustração]",
        "[Ilustração: Gravura do autor]",
        "[Illustration: Vista da vila, tirada do alto do monte, segundo\num desenho original da época]",
    ]
    page = rng.randint(7, 30)
    for i, para in enumerate(paragraphs):
        if i and _is_heading(para):
            out += ["", "", ""]
        if i in illus_at:
            out += fit_charset(captions[illus_at.index(i)], book.encoding).split("\n") + [""]
        if "\n" in para:  # verse: one line per line, maybe indented
            indent = "    " if "verse-indent" in f else ""
            out += [indent + line for line in para.split("\n")]
        elif "unwrapped" in f:
            out.append(para)
        else:
            lines = wrap_prose(para, book.wrap)
            if "page-markers" in f and len(lines) >= 3 and i % 3 == 1:
                cut = next((k for k in range(1, len(lines) - 1) if not lines[k].endswith("-")), None)
                if cut is not None:  # a page break in the middle of a paragraph
                    lines.insert(cut + 1, f"[Pg {page}]")
                    page += 1
            out += lines
        out.append("")
        if "page-markers" in f and i % 5 == 4:
            out += [f"{{{page}}}", ""]
            page += 1
    if "note-bracket" in f and len(paragraphs) > 4:  # a second note at the end, after the text
        out += [
            "",
            fit_charset(
                "[Nota do transcritor: Foram corrigidos alguns erros tipográficos evidentes.]", book.encoding
            ),
            "",
        ]
    return out


def _small_print(book: SampleBook, *, flavour_2002: bool) -> list[str]:
    t, a = book.title, book.author_display
    _, month_year = _date_words(book.issued)
    short = re.sub(r"[^a-z]", "", t.lower().encode("ascii", "ignore").decode())[:5] or "etext"
    kind = "EBook" if flavour_2002 else "Etext"
    lines = [f"The Project Gutenberg {kind} of {t}, by {a}", f"#1 in our series by {a}", ""]
    lines += wrap_prose(
        "Copyright laws differ from country to country and keep changing, so check "
        "the laws of your own country before you post or pass on these files!!",
        66,
        False,
    )
    lines += [""] + wrap_prose(
        "Please read the information in this header. Keep this file on your "
        "own disk, so that an electronic path stays open for the next readers. "
        "Do not remove this.",
        66,
        False,
    )
    lines += ["", ""]
    if flavour_2002:
        lines += [
            "**Welcome To The World of Free Plain Vanilla Electronic Texts**",
            "",
            "**eBooks Readable By Both Humans and By Computers, Since 1971**",
            "",
            "*****These eBooks Were Prepared By Thousands of Volunteers!*****",
            "",
        ]
    else:
        lines += [
            "**Welcome To The World of Free Plain Vanilla Electronic Texts**",
            "",
            "**Etexts Readable By Both Humans and By Computers, Since 1971**",
            "",
            "*****These Etexts Are Prepared By Thousands of Volunteers!*****",
            "",
        ]
    lines += wrap_prose(
        "How to reach Project Gutenberg for more texts, and further information, "
        "is given below. We need your donations.",
        66,
        False,
    )
    lines += ["", "", t, "", f"by {a}", "", f"{month_year}  [{kind} #{book.id}]", "", ""]
    lines += [
        f"The Project Gutenberg {kind} of {t}, by {a}",
        f"******This file should be named {short}10.txt or {short}10.zip******",
        "",
        f"Corrected EDITIONS of our {kind.lower()}s get a new NUMBER, {short}11.txt",
        f"VERSIONS based on separate sources get new LETTER, {short}10a.txt",
        "",
    ]
    lines += wrap_prose(
        f"Our {kind.lower()}s are usually made from several printed editions, all of "
        "them in the Public Domain in the United States unless a copyright notice "
        "is included. We therefore keep no particular paper edition.",
        66,
        False,
    )
    lines += ["", "", "Information about Project Gutenberg (one page)", ""]
    lines += wrap_prose(
        "Volunteers have typed and checked these texts for decades, and the goal is "
        "to give away a very large number of them to anyone who wants them. The "
        "time it takes us to make one is large, so donations are welcome; they go "
        "to the Project Gutenberg Literary Archive Foundation.",
        66,
        False,
    )
    lines += ["", "", "**The Legal Small Print**", "", "", "(Three Pages)", "", ""]
    if flavour_2002:
        lines.append("***START**THE SMALL PRINT!**FOR PUBLIC DOMAIN EBOOKS**START***")
    else:
        lines.append("*START**THE SMALL PRINT!**FOR PUBLIC DOMAIN ETEXTS**START***")
    lines += wrap_prose(
        'Why this "Small Print!" statement? Our lawyers asked for it: they say you '
        "might hold us liable if something is wrong with your copy, even one you "
        "got for free from someone else. So this statement limits our liability "
        "to you, and it also says how you may give copies away.",
        66,
        False,
    )
    lines += [""]
    lines += wrap_prose(
        "LIMITED WARRANTY; DISCLAIMER OF DAMAGES. The text is given to you AS-IS, "
        "without warranties of any kind. If it has a defect you may ask for a "
        "replacement copy within 90 days of receiving it.",
        66,
        False,
    )
    lines += [""]
    lines += wrap_prose(
        "DISTRIBUTION. You may copy and give away this text for free, as long as "
        "this small print and the header stay with it, in plain ASCII or another "
        "form that a reader can read without special software.",
        66,
        False,
    )
    if flavour_2002:
        lines += ["*END THE SMALL PRINT! FOR PUBLIC DOMAIN EBOOKS*Ver.02/11/02*END*"]
    else:
        lines += ["*END*THE SMALL PRINT! FOR PUBLIC DOMAIN ETEXTS*Ver.04.29.93*END*"]
    return lines


def _file_name(book: SampleBook) -> str:
    return {"files-0": f"{book.id}-0", "files-8": f"{book.id}-8"}.get(book.layout, str(book.id))


def _license(book: SampleBook, style: str) -> list[str]:
    """A shortened paraphrase of the Project Gutenberg license, with its real headings."""
    tm = "™" if style == "2023" else "-tm"
    dash = "—" if style == "2023" else "--"
    site = "www.gutenberg.org" if style != "2005" else "http://www.gutenberg.org"
    pg = f"Project Gutenberg{tm}"
    w = 70

    def par(text: str) -> list[str]:
        return wrap_prose(text, w, hyphen_breaks=False) + [""]

    digits = "/".join(str(book.id)[:-1])
    out: list[str] = []
    if style != "2023":
        out += [
            f"***** This file should be named {_file_name(book)}.txt or {_file_name(book)}.zip *****",
            "This and all associated files of various formats will be found in:",
            f"        {site}/{digits}/{book.id}/",
            "",
        ]
    out += par(f"Updated editions will replace the previous one{dash}the old editions will be renamed.")
    out += par(
        "These works were made from print editions that are in the public domain in the "
        "United States, so no one holds a United States copyright in them and the Foundation "
        "(and you!) may copy and distribute them there without permission or royalties. The "
        f"General Terms of Use below set special rules for copying and distributing {pg} "
        f"electronic works, to protect the PROJECT GUTENBERG{tm} concept and trademark."
    )
    out += [
        "",
        "*** START: FULL LICENSE ***" if style != "2023" else "START: FULL LICENSE",
        "",
        "THE FULL PROJECT GUTENBERG LICENSE",
        "PLEASE READ THIS BEFORE YOU DISTRIBUTE OR USE THIS WORK",
        "",
    ]
    out += par(
        f"To protect the {pg} mission of promoting the free distribution of electronic "
        f"works, you agree, by using or distributing this work, to the terms of the Full {pg} "
        f"License, found with this file or online at {site}/license."
    )
    out += par(f"Section 1. General Terms of Use and Redistributing {pg} electronic works")
    out += par(
        f"1.A. Reading or using any part of this {pg} electronic work means that you accept "
        "this license. If you do not accept it, stop using the work and destroy your copies."
    )
    out += par(
        '1.B. "Project Gutenberg" is a registered trademark. Only people who agree to this '
        "license may use it with an electronic work."
    )
    out += par(
        "1.C. The Project Gutenberg Literary Archive Foundation owns a compilation copyright "
        "in the collection; most individual works in it are in the public domain in the "
        "United States."
    )
    out += par(
        "1.D. The copyright laws of the place where you are located also govern what you can "
        "do with this work."
    )
    out += par(
        "1.E. Unless you have removed all references to Project Gutenberg, the license "
        "sentence must appear prominently whenever a copy is accessed, displayed, performed, "
        "viewed, copied or distributed."
    )
    out += par(
        "1.F. LIMITED WARRANTY, DISCLAIMER OF DAMAGES: the works may contain defects, and "
        "apart from the right of replacement or refund they are provided to you AS-IS."
    )
    out += par(f"Section 2. Information about the Mission of {pg}")
    out += par(
        f"{pg} stands for the free distribution of electronic works in formats readable by "
        "the widest variety of computers. It exists because of the efforts of volunteers "
        "and the donations of people from all walks of life."
    )
    out += par("Section 3. Information about the Project Gutenberg Literary Archive Foundation")
    out += par(
        "The Foundation is a non-profit 501(c)(3) educational corporation of the state of "
        "Mississippi; contributions to it are tax deductible as far as U.S. laws allow."
    )
    out += par("Section 4. Information about Donations to the Project Gutenberg Literary Archive Foundation")
    out += par(f"{pg} depends on wide public support and donations. To donate, please visit: {site}/donate")
    out += par(f"Section 5. General Information About {pg} electronic works.")
    out += par(
        f"Professor Michael S. Hart was the originator of the {pg} concept of a library of "
        "electronic works that could be freely shared with anyone."
    )
    out += par(f"Most people start at our Web site which has the main PG search facility: {site}")
    out += par(
        f"This Web site includes information about {pg}, including how to make donations "
        "to the Project Gutenberg Literary Archive Foundation, how to help produce our new "
        "eBooks, and how to subscribe to our email newsletter to hear about new eBooks."
    )
    return out


def _title_block(book: SampleBook, rng: random.Random, style: str) -> list[str]:
    """The Title:/Author:/Release Date: block of headers from 2004 on."""
    long_date, month_year = _date_words(book.issued)
    year = int(book.issued[:4])
    lines = [f"Title: {book.title}", "", f"Author: {book.author_display}", ""]
    if "posting-date" in book.features:
        lines += [
            f"Posting Date: {MONTHS[rng.randrange(12)]} {rng.randint(1, 28)}, {year + 7} [EBook #{book.id}]",
            f"Release Date: {month_year}",
            f"First Posted: {long_date}",
            "",
        ]
    elif style == "2023":
        lines += [f"Release date: {long_date} [eBook #{book.id}]"]
        if "updated" in book.features:
            lines += [
                f"                Most recently updated: {MONTHS[rng.randrange(12)]} "
                f"{rng.randint(1, 28)}, {year + 1}"
            ]
        lines += [""]
    else:
        tag = "EBook" if style == "2005" else "eBook"
        gap = "  " if style == "2010" else " "
        lines += [f"Release Date: {long_date}{gap}[{tag} #{book.id}]"]
        if "updated" in book.features:
            upd = f"{MONTHS[rng.randrange(12)]} {rng.randint(1, 28)}, {year + 9}"
            lines += [
                f"[Most recently updated: {upd}]" if style == "2012" else f"Most recently updated: {upd}"
            ]
        lines += [""]
    lines += ["Language: " + ("English" if book.language.startswith("en") else "Portuguese"), ""]
    if book.declared_charset:
        lines += [f"Character set encoding: {book.declared_charset}", ""]
    return lines


_USE_2005 = (
    "This eBook is for the use of anyone anywhere at no cost and with almost no restrictions "
    "whatsoever. You may copy it, give it away or re-use it under the terms of the Project "
    "Gutenberg License included with this eBook or online at www.gutenberg.org"
)
_USE_2012 = (
    "This eBook is for the use of anyone anywhere in the United States and most other parts "
    "of the world at no cost and with almost no restrictions whatsoever. You may copy it, "
    "give it away or re-use it under the terms of the Project Gutenberg License included "
    "with this eBook or online at www.gutenberg.org. If you are not located in the United "
    "States, you will have to check the laws of the country where you are located before "
    "using this eBook."
)


def _render_text(book: SampleBook) -> str:
    """The served file as text with "\\n" line ends (before newline conversion and encoding)."""
    rng = random.Random(book.id)
    v, f = book.variant, book.features
    t, a = book.title, book.author_display
    mt = _marker_title(book)
    if v == "small-print-1990s":
        flavour_2002 = "small-print-2002" in f
        head = _small_print(book, flavour_2002=flavour_2002) + ["", "", ""]
        kind = "EBook" if flavour_2002 else "Etext"
        if "credit" in f:
            head += [f"This {kind.lower()} was prepared by {_credit_names(rng)}.", "", ""]
        body = _body_region(book, rng)
        tail = ["", "", f"End of the Project Gutenberg {kind} of {t}, by {a}", ""]
        return "\n".join(head + body + tail)

    if v in ("markers-only/START-THE", "markers-only+legacy-endline/START-THE"):
        head = ([""] if "bom-blank" in f else []) + [f"*** START OF THE PROJECT GUTENBERG EBOOK {mt} ***"]
        tail = []
        if v.startswith("markers-only+legacy"):
            tail = ["", "", "", f"End of the Project Gutenberg EBook of {t}, by {a}", ""]
        tail += ["", f"*** END OF THE PROJECT GUTENBERG EBOOK {mt} ***", ""]
        return "\n".join(head + _body_region(book, rng) + tail)

    if v == "cache-epub-2023":
        use = wrap_prose(
            _USE_2012.replace("This eBook", "This ebook").replace("eBook or", "ebook or"), 72, False
        )
        head = [f"The Project Gutenberg eBook of {t}", "    ", ""] + [x + " " for x in use] + ["", ""]
        head += _title_block(book, rng, "2023")
        credit = wrap_prose(
            f"Credits: {_credit_names(rng)} and the Online Distributed Proofreading "
            "Team at https://www.pgdp.net (This file was produced from images "
            "generously made available by The Internet Archive)",
            70,
            False,
        )
        head += [credit[0]] + ["         " + x for x in credit[1:]] + ["", ""]
        head += [f"*** START OF THE PROJECT GUTENBERG EBOOK {mt} ***"]
        tail = ["", f"*** END OF THE PROJECT GUTENBERG EBOOK {mt} ***", "    ", ""]
        tail += _license(book, "2023")
        return "\n".join(head + _body_region(book, rng) + tail)

    if v == "no-marker":  # a header and a body, but the START/END markers never came
        head = [f"The Project Gutenberg EBook of {t}, by {a}", ""] + wrap_prose(_USE_2005, 70, False)
        head += ["", ""] + _title_block(book, rng, "2005") + [""]
        return "\n".join(head + _body_region(book, rng))

    # The 2004-2012 headers: first line, use notice, title block, START marker.
    style = {
        "ebook-comma/START-THE-nospace": "2010",
        "ebook-of-eBook/START-THE-nospace": "2010",
        "ebook-of-eBook/START-THE": "2012",
    }.get(v, "2005")
    if v == "pgs-possessive/START-THIS":
        first = [f"Project Gutenberg's {t}, by {a}"]
    elif v == "ebook-comma/START-THE-nospace":
        first = wrap_prose(f"The Project Gutenberg eBook, {t}, by {a}", 70, False)
    elif style == "2005":
        first = [f"The Project Gutenberg EBook of {t}, by {a}"]
    else:
        first = wrap_prose(f"The Project Gutenberg eBook of {t}, by {a}", 74, False)
    use = wrap_prose(_USE_2012 if style == "2012" else _USE_2005, 72, False)
    gap = [""] * (4 if style == "2010" else 1)
    head = first + ["", *([""] if style == "2010" else [])] + use + gap + [""]
    head += _title_block(book, rng, style)
    if "header-credit" in f:
        head += [f"Produced by: {_credit_names(rng)} and the Online Distributed Proofreading Team", ""]
    if style == "2010":
        head += [""]
    if v.endswith("START-THE-nospace"):
        start, end = (
            f"***START OF THE PROJECT GUTENBERG EBOOK {mt}***",
            f"***END OF THE PROJECT GUTENBERG EBOOK {mt}***",
        )
    elif style == "2012":
        start, end = (
            f"*** START OF THE PROJECT GUTENBERG EBOOK {mt} ***",
            f"*** END OF THE PROJECT GUTENBERG EBOOK {mt} ***",
        )
    else:
        start, end = (
            f"*** START OF THIS PROJECT GUTENBERG EBOOK {mt} ***",
            f"*** END OF THIS PROJECT GUTENBERG EBOOK {mt} ***",
        )
    body = _body_region(book, rng)
    tail: list[str] = ["", ""]
    if v.endswith("START-THIS") or v.endswith("END-FULL-LICENSE"):
        who = (
            f"Project Gutenberg's {t}, by {a}"
            if v.startswith("pgs")
            else f"the Project Gutenberg EBook of {t}, by {a}"
        )
        end_line = f"End of {who}"
        tail += wrap_prose(end_line, 74, False) if "wrapped-endline" in f else [end_line]
        tail += [""]
    tail += [end, "", ""] if style == "2010" else [end, ""]
    license_lines = _license(book, "2005" if style == "2005" else "2010")
    if "credit-after-end" in f:  # 2003-2010 files repeat the credit after the file-name lines
        credit = [x for x in body[:12] if x.startswith(("Produced by", "E-text"))]
        if credit:
            k = body.index(credit[0])
            block = body[k : body.index("", k)]
            license_lines = license_lines[:4] + block + [""] + license_lines[4:]
    tail += license_lines
    if v.endswith("END-FULL-LICENSE"):
        tail += ["*** END: FULL LICENSE ***", ""]
    return "\n".join(head + [start] + body + tail)


@functools.lru_cache(maxsize=256)
def _render_bytes(book: SampleBook) -> bytes:
    text = _render_text(book)
    if not text.endswith("\n"):
        text += "\n"
    return text.replace("\n", book.newline).encode(book.encoding)


# ---------------------------------------------------------------------------------------------
# The collection.

# fmt: off
# id, text (file stem, or "gen:<kb>"), title, author, issued, variant, encoding, newline, layout,
# features, subjects/bookshelves kind
_FIXED = [
    (90001, "cantos_do_mar", "Cantos do mar alto", "Vasconcelos, Henrique de", "1997-03-01",
     "small-print-1990s", "iso-8859-1", "\r\n", "files-plain", ("credit", "verse-indent"), "poetry"),
    (90002, "gen:6", "Contos da lareira", "Sousa, Rodrigo de", "2002-06-01",
     "small-print-1990s", "iso-8859-1", "\r\n", "files-plain", ("small-print-2002",), "fiction"),
    (90003, "o_relojoeiro", "O relojoeiro da rua dos Fanqueiros", "Teixeira, Joaquim", "2005-08-02",
     "ebook-of-EBook/START-THIS", "iso-8859-1", "\r\n", "files-8", ("credit", "credit-after-end"), "fiction"),
    (90004, "carta_a_prima", "Carta a uma prima da província", "Albuquerque, Mariana de", "2007-04-14",
     "ebook-of-EBook/START-THIS", "utf-8-sig", "\n", "files-0", ("credit", "posting-date"), "letters"),
    (90005, "a_serra_no_inverno", "A serra no inverno: impressões de um caminhante",
     "Pereira, António Lopes", "2006-01-20", "ebook-of-EBook/ends-END-FULL-LICENSE", "iso-8859-1",
     "\r\n", "files-8", ("credit", "credit-after-end", "wrapped-endline", "catalog-subtitle"), "essays"),
    (90006, "cronica_da_feira", "Crónica da feira", "Rebelo, Luísa", "2006-09-21",
     "pgs-possessive/START-THIS", "cp1252", "\r\n", "files-8", ("credit", "note-bracket"), "essays"),
    (90007, "diario_de_viagem", "Diário de uma viagem a Paris", "Morais, Teresa de", "2010-02-05",
     "ebook-comma/START-THE-nospace", "iso-8859-15", "\r\n", "files-8",
     ("etext-credit", "html-note", "illustrations"), "travel"),
    (90008, "sonetos_da_aldeia", "Sonetos da aldeia", "Cunha, Aurélio da", "2012-05-10",
     "ebook-of-eBook/START-THE", "utf-8-sig", "\r\n", "files-0", ("header-credit", "updated"), "poetry"),
    (90009, "o_faroleiro", "O faroleiro do Cabo Negro", "Lopes, Bernardo", "2011-03-16",
     "ebook-of-eBook/START-THE-nospace", "iso-8859-1", "\r\n", "files-8",
     ("etext-credit", "html-note", "note-block", "updated"), "fiction"),
    (90010, "a_botica", "A botica do seu Nicolau", "Guimarães, Joaquim Maria", "2024-01-15",
     "markers-only/START-THE", "utf-8", "\r\n", "files-0", ("marker-id", "illustrations", "unwrapped"),
     "fiction"),
    (90011, "english_notes", "Notes on the Rubber Country", "Hardy, Edward", "2025-02-11",
     "markers-only/START-THE", "utf-8-sig", "\r\n", "files-0", ("bom-blank", "note-en"), "travel-en"),
    (90012, "lenda_da_moura", "A lenda da moura do castelo", "Fonseca, Maria da Glória", "2004-06-24",
     "markers-only+legacy-endline/START-THE", "utf-8", "\r\n", "files-plain", ("credit", "page-markers"),
     "legends"),
    (90013, "a_tartaruga_e_o_pardal", "A tartaruga e o pardal", "Nogueira, Custódio", "2023-10-02",
     "cache-epub-2023", "utf-8-sig", "\r\n", "cache", ("ascii-upper",), "fables"),
    (90014, "gen:7", "Serões de inverno", "Magalhães, Inês", "2023-11-30",
     "cache-epub-2023", "utf-8-sig", "\r\n", "cache", ("updated", "page-markers", "illustrations"), "fiction"),
    (90015, "gen:4", "Memórias de um escrivão", "Barros, Francisco", "2008-05-05",
     "no-marker", "utf-8", "\n", "files-0", (), "fiction"),
]

_KINDS = {  # kind -> (Subjects, Bookshelves) as pg_catalog.csv writes them
    "fiction": ("Portuguese fiction -- 19th century; Short stories, Portuguese",
                "PT Contos; Browsing: Literature; Browsing: Fiction"),
    "poetry": ("Portuguese poetry", "PT Poesia; Poetry; Browsing: Literature; Browsing: Poetry"),
    "letters": ("Portuguese letters", "Browsing: Literature"),
    "essays": ("Portugal -- Description and travel; Portuguese essays",
               "Browsing: Culture/Civilization/Society; Browsing: Literature"),
    "travel": ("Paris (France) -- Description and travel", "Browsing: Travel & Geography"),
    "travel-en": ("Amazon River Valley -- Description and travel; Rubber industry and trade -- Brazil",
                  "Browsing: Travel & Geography; Browsing: History - American"),
    "legends": ("Legends -- Portugal", "PT Contos; Browsing: Culture/Civilization/Society"),
    "fables": ("Fables, Portuguese", "Browsing: Literature; Browsing: Children & Young Adult Reading"),
}

# Layouts for generated books: every charset and header a training corpus meets in the wild.
_EXTRA_TEMPLATES = [
    ("ebook-of-EBook/START-THIS", "iso-8859-1", "\r\n", "files-8", ("credit",)),
    ("markers-only+legacy-endline/START-THE", "utf-8", "\r\n", "files-0", ("credit", "marker-id")),
    ("cache-epub-2023", "utf-8-sig", "\r\n", "cache", ("updated",)),
    ("pgs-possessive/START-THIS", "cp1252", "\r\n", "files-8", ("credit", "note-bracket")),
    ("ebook-of-eBook/START-THE", "utf-8-sig", "\r\n", "files-0", ("header-credit",)),
    ("markers-only/START-THE", "utf-8", "\r\n", "files-0", ("marker-id", "illustrations")),
    ("ebook-comma/START-THE-nospace", "iso-8859-1", "\r\n", "files-8", ("etext-credit", "html-note")),
    ("ebook-of-EBook/ends-END-FULL-LICENSE", "iso-8859-1", "\r\n", "files-plain", ("credit",)),
    ("small-print-1990s", "iso-8859-1", "\r\n", "files-plain", ()),
    ("ebook-of-eBook/START-THE-nospace", "iso-8859-15", "\r\n", "files-8", ("etext-credit",)),
]
# fmt: on
EXTRA_FIRST_ID = 91001


def _make_book(
    book_id: int,
    text: str,
    title: str,
    author: str,
    issued: str,
    variant: str,
    encoding: str,
    newline: str,
    layout: str,
    features: tuple[str, ...],
    kind: str,
    generated_seed: int | None = None,
) -> SampleBook:
    """A SampleBook from one _FIXED row; `text` is a texts/ stem or "gen:<kb>"."""
    if text.startswith("gen:"):
        seed = book_id if generated_seed is None else generated_seed
        body = generated_body(seed, float(text[4:]))
    else:
        body = load_text(text)
    body = unicodedata.normalize("NFC", fit_charset(body, encoding))
    subjects, shelves = _KINDS[kind]
    # The column, 66-72, that breaks the most "disse-" / "lhe" pairs: the hazard should be there.
    wrap = max(
        range(72, 65, -1),
        key=lambda w: sum(x.endswith("-") for p in body.split("\n\n") for x in wrap_prose(p, w)),
    )
    return SampleBook(
        id=book_id,
        title=title,
        author=author,
        language="en; pt" if kind == "travel-en" else "pt",
        issued=issued,
        variant=variant,
        encoding=encoding,
        newline=newline,
        layout=layout,
        body=body,
        features=tuple(features),
        wrap=wrap,
        subjects=subjects,
        bookshelves=shelves,
        generated=text.startswith("gen:"),
    )


def _extra_book(index: int, kb: float, seed: int) -> SampleBook:
    rng = random.Random(f"{seed}:{index}")
    variant, encoding, newline, layout, features = _EXTRA_TEMPLATES[index % len(_EXTRA_TEMPLATES)]
    name = f"{rng.choice(FIRST_NAMES)} {rng.choice(SURNAMES)}"
    title = rng.choice(TITLE_PATTERNS).format(place=rng.choice(TITLE_PLACES), name=name)
    author = f"{rng.choice(SURNAMES)}, {rng.choice(FIRST_NAMES)}"
    year = {"small-print-1990s": 1998, "cache-epub-2023": 2023}.get(variant, 2004 + index % 10)
    issued = f"{year}-{rng.randint(1, 12):02d}-{rng.randint(1, 28):02d}"
    return _make_book(
        EXTRA_FIRST_ID + index,
        f"gen:{kb}",
        title,
        author,
        issued,
        variant,
        encoding,
        newline,
        layout,
        features,
        "fiction",
        generated_seed=rng.randrange(2**31),
    )


def sample_books(extra: int = 0, extra_kb: int = 8, seed: int = 0) -> list[SampleBook]:
    """The fixed set (every variant/encoding at least once) plus `extra` generated books of ~extra_kb KB each.

    The fixed set does not depend on `seed`; the extra books (ids from 91001) do.
    """
    if extra < 0 or extra_kb <= 0:
        raise ValueError(f"extra must be >= 0 and extra_kb > 0, got extra={extra}, extra_kb={extra_kb}")
    books = [_make_book(*row) for row in _FIXED]
    books += [_extra_book(i, extra_kb, seed) for i in range(extra)]
    return books


# ---------------------------------------------------------------------------------------------
# The catalog feed (pg_catalog.csv) around the books.


# fmt: off
# Rows a Portuguese-only scraper must read and drop: other languages, a sound recording in
# Portuguese, a multi-line quoted title. Galician is the language most easily taken for Portuguese.
_DISTRACTORS = [
    ["89901", "Text", "2005-03-01", "The Clockmaker's Apprentice", "en", "Whitfield, George, 1841-1910",
     "Clockmakers -- Fiction", "PR", "Browsing: Literature; Browsing: Fiction"],
    ["89902", "Text", "2009-07-14", "Contes du vieux port", "fr", "Lemaire, Jeanne",
     "Short stories, French", "PQ", "FR Littérature; Browsing: Literature"],
    ["89903", "Sound", "2011-01-05", "Poemas lidos em voz alta", "pt", "Vasconcelos, Henrique de",
     "Portuguese poetry", "", ""],
    ["89904", "Text", "2013-10-22",
     "A Winter Journey\nBeing Letters Written from the Mountains of Portugal", "en",
     "Marsh, Eleanor, 1850-1921", "Portugal -- Description and travel", "DP",
     "Browsing: Travel & Geography"],
    ["89905", "Text", "2016-04-30", "Cuentos de la sierra", "es", "Robles, Tomás",
     "Short stories, Spanish", "PQ", "Browsing: Literature"],
    ["89906", "Text", "2019-08-08", "Contos da terra", "gl", "Varela, Ramón",
     "Short stories, Galician", "PQ", "Browsing: Literature"],
    ["89907", "Text", "2021-12-01", "Lettres de Lisbonne", "fr", "Duval, Claire, 1862-1930",
     "Lisbon (Portugal) -- Description and travel", "DP", "Browsing: Travel & Geography"],
]


# fmt: on


def non_portuguese_rows() -> list[list[str]]:
    """The distractor catalog rows: no Portuguese *text* among them (89903 is a pt Sound row)."""
    return [list(r) for r in _DISTRACTORS]


def _catalog_title(book: SampleBook) -> str:
    # Gutenberg's catalog puts a subtitle on its own line inside the quoted field.
    main, sep, sub = book.title.partition(": ")
    return f"{main}\n{sub}" if sep and "catalog-subtitle" in book.features else book.title


def sample_catalog_csv(books: list[SampleBook]) -> str:
    """A pg_catalog.csv in Gutenberg's format (LF line ends, minimal quoting) with distractor rows."""
    rows = [
        [
            str(b.id),
            "Text",
            b.issued,
            _catalog_title(b),
            b.language,
            b.author,
            b.subjects,
            "PQ",
            b.bookshelves,
        ]
        for b in books
    ]
    ids = {b.id for b in books}
    rows += [r for r in non_portuguese_rows() if int(r[0]) not in ids]
    rows.sort(key=lambda r: int(r[0]))
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(CATALOG_COLUMNS)
    writer.writerows(rows)
    return buf.getvalue()


def write_sample_books(folder: Path, books: list[SampleBook]) -> list[Path]:
    """Writes `<id>.txt` raw files (a local-folder source for the scraper); each via temp + rename."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for book in books:
        path = folder / f"{book.id}.txt"
        write_bytes_atomic(path, book.raw_bytes())
        paths.append(path)
    return paths
