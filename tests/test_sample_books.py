"""The fake Gutenberg collection: every layout present, bytes as declared, bodies recoverable."""

from __future__ import annotations

import csv
import io
import random
import re
import unicodedata

import pytest

from fakegutenberg.books import (
    ENCODINGS,
    LAYOUTS,
    VARIANTS,
    SampleBook,
    fit_charset,
    sample_books,
    sample_catalog_csv,
    wrap_prose,
    write_sample_books,
)
from fakegutenberg.prose import portuguese_paragraphs

START_RE = re.compile(
    r"^(\*\*\* ?START OF TH(E|IS) PROJECT GUTENBERG EBOOK .*\*\*\*|\*END\*?.?THE SMALL PRINT.*)$"
)
END_RE = re.compile(
    r"^(\*\*\* ?END OF TH(E|IS) PROJECT GUTENBERG EBOOK .*\*\*\*|End of the Project Gutenberg (Etext|EBook) of .*)$"
)
PAGE_MARKER_RE = re.compile(r"^(\[Pg \d+\]|\{\d+\})$")
BOILERPLATE = [
    "Project Gutenberg",
    "Produced by",
    "E-text prepared",
    "etext was prepared",
    "[Ilustra",
    "[Illustration",
    "[Pg ",
    "Nota do transcritor",
    "Transcriber's Note",
    "*** ",
]


@pytest.fixture(scope="module")
def books() -> list[SampleBook]:
    return sample_books()


def decoded_lines(book: SampleBook) -> list[str]:
    text = book.raw_bytes().decode(book.encoding)
    return text.split(book.newline)


def marked_region(book: SampleBook) -> list[str]:
    """Lines strictly between the START (or small-print end) line and the END (or Etext end) line."""
    lines = decoded_lines(book)
    start = next(i for i, line in enumerate(lines) if START_RE.match(line))
    end = next(i for i in range(len(lines) - 1, start, -1) if END_RE.match(lines[i]))
    return lines[start + 1 : end]


def unwrap(lines: list[str]) -> str:
    """Join lines the documented way (letter + "-" at a line end joins without a space), collapse spaces."""
    out = ""
    for line in (x.strip() for x in lines if not PAGE_MARKER_RE.match(x.strip())):
        if re.search(r"[^\W\d_]-$", out):
            out += line
        else:
            out += " " + line
    return " ".join(out.split())


def test_fixed_set_covers_every_variant_encoding_layout(books):
    assert {b.variant for b in books} == set(VARIANTS)
    assert {b.encoding for b in books} == set(ENCODINGS)
    assert {b.layout for b in books} == set(LAYOUTS)
    assert {b.newline for b in books} == {"\r\n", "\n"}
    assert sum(b.newline == "\r\n" for b in books) > len(books) // 2  # mostly CRLF, like the real files
    ids = [b.id for b in books]
    assert len(set(ids)) == len(ids) and min(ids) >= 90001
    assert [b.language for b in books].count("en; pt") == 1
    assert all(re.fullmatch(r"\d{4}-\d{2}-\d{2}", b.issued) for b in books)
    paths = {b.layout: b.url_path for b in books}
    assert re.fullmatch(r"/cache/epub/(\d+)/pg\1\.txt", paths["cache"])
    assert re.fullmatch(r"/files/(\d+)/\1-0\.txt", paths["files-0"])
    assert re.fullmatch(r"/files/(\d+)/\1-8\.txt", paths["files-8"])
    assert re.fullmatch(r"/files/(\d+)/\1\.txt", paths["files-plain"])


def test_raw_bytes_decode_with_their_charset(books):
    for b in books:
        raw = b.raw_bytes()
        text = raw.decode(b.encoding)  # strict: every byte means what the book says
        declared = re.findall(r"^Character set encoding: (.+?)\r?$", text, flags=re.M)
        assert declared == ([b.declared_charset] if b.declared_charset else []), b.id
        if b.encoding.startswith("utf-8"):
            assert b.layout != "files-8", b.id  # -8 files are 8-bit
        else:
            assert b.layout != "cache", b.id  # the cache is always UTF-8
            with pytest.raises(UnicodeDecodeError):
                raw.decode("utf-8")
        assert raw.startswith(b"\xef\xbb\xbf") == (b.encoding == "utf-8-sig"), b.id
        if b.newline == "\r\n":
            assert raw.count(b"\n") == raw.count(b"\r\n"), b.id
        else:
            assert b"\r" not in raw, b.id


def test_cp1252_and_latin9_traps(books):
    (cp,) = [b for b in books if b.encoding == "cp1252"]
    raw = cp.raw_bytes()
    assert cp.declared_charset == "ISO-8859-1"
    assert all(bytes([c]) in raw for c in (0x93, 0x94, 0x96, 0x97, 0x85))  # “ ” – — …
    assert re.search("[\x80-\x9f]", raw.decode("latin-1"))  # read as declared: C1 controls
    (l9,) = [b for b in books if b.encoding == "iso-8859-15"]
    assert "œ" in l9.body and "½" in l9.raw_bytes().decode("latin-1")
    eight_bit = [b for b in books if b.encoding in ("iso-8859-1", "iso-8859-15")]
    assert not any("—" in b.body or "…" in b.body for b in eight_bit)  # Latin-1 has neither
    assert any("-- " in b.body for b in eight_bit)  # so dialogue dashes are written "--"


def test_bom_then_blank_line_before_start_marker(books):
    (b,) = [b for b in books if "bom-blank" in b.features]
    assert b.raw_bytes().startswith(b"\xef\xbb\xbf\r\n*** START OF THE PROJECT GUTENBERG EBOOK")


def test_body_is_recoverable_from_between_the_markers(books):
    for b in books:
        if not b.cleanable:
            continue
        region = marked_region(b)
        flat = unwrap(region)
        pos = 0
        for para in b.body.split("\n\n"):
            needle = " ".join(para.split())
            found = flat.find(needle, pos)
            assert found >= 0, (b.id, needle[:80])
            pos = found + len(needle)
        stripped = {line.strip() for line in region}
        for para in b.body.split("\n\n"):
            if "\n" in para:  # verse keeps its line breaks
                assert all(line in stripped for line in para.split("\n")), (b.id, para[:40])


def test_body_contract(books):
    for b in books:
        body = b.body
        assert body and unicodedata.is_normalized("NFC", body), b.id
        assert "\r" not in body and "\n\n\n" not in body and body == body.strip(), b.id
        assert all(line == line.strip() and line for line in body.split("\n") if line), b.id
        for para in body.split("\n\n"):
            assert para, b.id
            if "\n" in para:
                assert all(len(line) < 60 for line in para.split("\n")), (b.id, para[:40])
        if b.language == "pt":
            assert not any(word in body for word in BOILERPLATE), b.id
        body.encode(b.encoding)


def test_every_in_body_hazard_is_somewhere(books):
    raws = {b.id: b.raw_bytes().decode(b.encoding) for b in books}
    everything = "\n".join(raws.values())
    for hazard in [
        "\nProduced by ",
        "\nE-text prepared by ",
        "[Nota do transcritor:",
        "\nNota do transcritor:",
        "\nTranscriber's Note:",
        "[Ilustração]",
        "[Ilustração: ",
        "[Illustration: ",
        "\n[Pg ",
        "also has an HTML version",
        "End of the Project Gutenberg EBook of",
        "End of Project Gutenberg's",
        "*** END: FULL LICENSE ***",
        "Most recently updated",
        "CAPÍTULO I",
        "This etext was prepared by",
        "Produced by: ",
        "subscribe to our email newsletter",
    ]:
        assert hazard in everything, hazard
    assert re.search(r"\n\{\d+\}\r?\n", everything)
    # A bracketed illustration caption that spans two lines.
    assert re.search(r"\[Illustration: [^\]\n]*\r?\n[^\]\n]*\]", everything)
    # Clitics and compounds broken after their hyphen at a line end, in an 8-bit and a UTF-8 file.
    broken = [b for b in books if b.cleanable and any(re.search(r"[^\W\d_]-$", x) for x in marked_region(b))]
    assert {b.encoding for b in broken} >= {"iso-8859-1", "utf-8"}
    # The legacy end line inside a markers-only body, right before the END marker.
    (legacy,) = [b for b in books if b.variant.startswith("markers-only+legacy")]
    tail = [x for x in marked_region(legacy) if x.strip()][-1]
    assert tail.startswith("End of the Project Gutenberg EBook of")


def test_no_marker_book_has_no_markers(books):
    (b,) = [b for b in books if b.variant == "no-marker"]
    assert not b.cleanable
    text = b.raw_bytes().decode(b.encoding)
    assert "START OF" not in text and "END OF" not in text and "SMALL PRINT" not in text
    for other in books:
        if other.cleanable:
            lines = decoded_lines(other)
            assert sum(bool(START_RE.match(x)) for x in lines) == 1, other.id


def test_wrapping_keeps_words_and_marks_hyphen_breaks():
    text = "Ele disse-lhe que o guarda-chuva ficara na estação, e ela respondeu-lhe que não."
    for width in range(20, 60):
        lines = wrap_prose(text, width)
        assert all(len(x) <= width for x in lines)
        assert unwrap(lines) == text
    assert wrap_prose("a" * 10 + " disse-lhe", 17) == ["aaaaaaaaaa disse-", "lhe"]
    assert fit_charset("— Sim… “não”", "iso-8859-1") == '-- Sim... "não"'


def test_prose_is_hard_wrapped(books):
    for b in books:
        if not b.cleanable or "unwrapped" in b.features:
            continue
        lines = [x for x in marked_region(b) if not x.startswith("End of")]
        assert max(len(x) for x in lines) <= 80, b.id


def test_generated_text_is_portuguese():
    import py3langid

    paragraphs = [p for p in portuguese_paragraphs(random.Random(3), 30_000) if len(p) > 60]
    assert len(paragraphs) > 40
    langs = [py3langid.classify(p)[0] for p in paragraphs]
    assert langs.count("pt") / len(langs) >= 0.9, langs


def test_hand_written_texts_are_classified_by_language(books):
    import py3langid

    for b in books:
        if b.generated:
            continue
        paragraphs = [p for p in b.body.split("\n\n") if len(p) > 150]
        langs = [py3langid.classify(p)[0] for p in paragraphs]
        expected = "en" if b.language == "en; pt" else "pt"
        assert langs.count(expected) / len(langs) >= 0.75, (b.id, langs)


def test_same_seed_same_bytes_and_extra_sizes():
    a = sample_books(extra=12, extra_kb=5, seed=7)
    b = sample_books(extra=12, extra_kb=5, seed=7)
    c = sample_books(extra=12, extra_kb=5, seed=8)
    assert [x.raw_bytes() for x in a] == [x.raw_bytes() for x in b]
    fixed = len(sample_books())
    assert [x.raw_bytes() for x in a[:fixed]] == [x.raw_bytes() for x in c[:fixed]]
    assert all(x.raw_bytes() != y.raw_bytes() for x, y in zip(a[fixed:], c[fixed:], strict=True))
    extras = a[fixed:]
    assert len(extras) == 12 and len({x.id for x in a}) == len(a)
    assert all(0.8 * 5 * 1024 <= len(x.body.encode()) <= 1.4 * 5 * 1024 for x in extras)
    assert all(x.generated and x.cleanable and x.language == "pt" for x in extras)
    assert len({x.variant for x in extras}) >= 9 and {x.encoding for x in extras} >= {"iso-8859-1", "utf-8"}
    with pytest.raises(ValueError):
        sample_books(extra=-1)


def test_catalog_csv_shape(books):
    text = sample_catalog_csv(books)
    assert text.startswith("Text#,Type,Issued,Title,Language,Authors,Subjects,LoCC,Bookshelves\n")
    assert "\r" not in text
    rows = list(csv.DictReader(io.StringIO(text)))
    by_id = {int(r["Text#"]): r for r in rows}
    assert len(by_id) == len(rows) and list(by_id) == sorted(by_id)
    for b in books:
        row = by_id[b.id]
        assert (row["Type"], row["Issued"], row["Language"], row["Authors"]) == (
            "Text",
            b.issued,
            b.language,
            b.author,
        )
        assert ": ".join(row["Title"].split("\n")) == b.title
    others = [r for i, r in by_id.items() if i not in {b.id for b in books}]
    assert any(r["Type"] == "Sound" and r["Language"] == "pt" for r in others)
    assert not any(r["Type"] == "Text" and "pt" in r["Language"].split("; ") for r in others)
    assert {r["Language"] for r in others} >= {"en", "fr", "es", "gl"}
    assert sum("\n" in r["Title"] for r in rows) >= 2  # a distractor and a Portuguese book
    assert any(r["Language"] == "en; pt" for r in rows)


def test_write_sample_books(tmp_path, books):
    paths = write_sample_books(tmp_path / "src", books)
    assert [p.name for p in paths] == [f"{b.id}.txt" for b in books]
    assert all(p.read_bytes() == b.raw_bytes() for p, b in zip(paths, books, strict=True))
    assert sorted(p.name for p in (tmp_path / "src").iterdir()) == sorted(p.name for p in paths)
