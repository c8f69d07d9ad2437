"""Stage 1: every Gutenberg encoding decodes without losing a character."""

from __future__ import annotations

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from corpus.decode import _mostly_utf8, declared_charset, decode_gutenberg, repair_mojibake

PT = "Constituição, coração, pão, avó, À noite; «Não!» disse-lhe."


def header(charset: str) -> bytes:
    return f"Title: X\r\nCharacter set encoding: {charset}\r\n\r\n".encode("ascii")


def test_utf8_with_bom_and_crlf():
    raw = b"\xef\xbb\xbf" + (PT + "\r\nsegunda linha\r\n").encode("utf-8")
    d = decode_gutenberg(raw)
    assert d.text == PT + "\nsegunda linha\n"
    assert (d.encoding, d.had_bom, d.replacements) == ("utf-8", True, 0)


def test_latin1_declared_keeps_every_accent():
    raw = header("ISO-8859-1") + PT.encode("iso-8859-1")
    d = decode_gutenberg(raw)
    assert d.encoding == "iso-8859-1" and d.declared == "ISO-8859-1"
    assert d.text.endswith(PT)
    # the failure from the wild: utf-8 with errors ignored drops the accented letters
    assert "Constituio" in raw.decode("utf-8", errors="ignore")


def test_cp1252_punctuation_in_declared_latin1_file():
    raw = header("ISO-8859-1") + "d’elle – fim — œuvre ‡".encode("cp1252")
    d = decode_gutenberg(raw)
    assert d.encoding == "cp1252"
    assert d.text.endswith("d’elle – fim — œuvre ‡")
    assert not any(0x80 <= ord(c) <= 0x9F for c in d.text)  # no invisible C1 controls


def test_cp1252_undefined_bytes_are_kept_not_replaced():
    raw = b"caf\xe9 \x81 \x9d fim"  # 0x81 and 0x9D have no cp1252 character
    d = decode_gutenberg(raw)
    assert d.text == "café \x81 \x9d fim" and d.replacements == 0


def test_iso_8859_15_euro_sign():
    raw = header("ISO-8859-15") + "custa 5 € e é caro".encode("iso-8859-15")
    d = decode_gutenberg(raw)
    assert d.encoding == "iso-8859-15" and d.text.endswith("custa 5 € e é caro")


def test_mostly_utf8_with_a_stray_latin1_byte():
    raw = (PT * 5).encode("utf-8") + b" caf\xe9."
    d = decode_gutenberg(raw)
    assert d.encoding == "utf-8+cp1252-bytes" and d.fallback_bytes == 1
    assert d.text == PT * 5 + " café."


def test_lone_cr_line_endings():
    assert decode_gutenberg(b"um\rdois\r\ntres\n").text == "um\ndois\ntres\n"


def test_declared_charset_absent_in_markers_only_file():
    assert declared_charset(b"*** START OF THE PROJECT GUTENBERG EBOOK 1 ***\r\n") is None
    assert declared_charset(header("UTF-8")) == "UTF-8"


def test_mojibake_repaired_and_correct_text_untouched():
    assert repair_mojibake("o coraÃ§Ã£o") == ("o coração", 1)
    clean = "NÃO SÃO ÂNCORAS; coração"  # uppercase Ã/Â followed by letters is correct Portuguese
    assert repair_mojibake(clean) == (clean, 0)
    assert decode_gutenberg("â€œolÃ¡â€\x9d".encode()).text == "“olá”"


def test_rejects_str_input():
    with pytest.raises(TypeError):
        decode_gutenberg(PT)  # type: ignore[arg-type]


@settings(max_examples=60, deadline=None)
@given(
    st.text(alphabet=st.characters(codec="latin-1", exclude_categories=("Cc",)), min_size=1, max_size=300),
    st.sampled_from(["iso-8859-1", "cp1252", "utf-8"]),
)
def test_round_trip_is_lossless(text, codec):
    """Whatever the codec, decoding gives back exactly the characters that were encoded."""
    if codec == "cp1252":
        text = "".join(c for c in text if c not in "\x81\x8d\x8f\x90\x9d")
        try:
            raw = text.encode("cp1252")
        except UnicodeEncodeError:
            return
    else:
        raw = text.encode(codec)
    if codec != "utf-8":
        # Bytes that also form valid UTF-8 ("Â\xa0" is C2 A0, a UTF-8 NBSP) are read as UTF-8: the one
        # ambiguity no decoder can resolve, and one real Latin-1 prose never hits.
        try:
            raw.decode("utf-8")
            assume(False)
        except UnicodeDecodeError:
            pass
    d = decode_gutenberg(raw)
    expected = text.replace("\r\n", "\n").replace("\r", "\n")
    if codec == "utf-8" and expected.startswith("\ufeff"):
        expected = expected[1:]
    if d.mojibake_repaired == 0:
        assert d.text == expected
    assert d.replacements == expected.count("\ufffd")


@pytest.mark.parametrize(
    "raw",
    [
        (PT + "\n").encode("iso-8859-1") * 3000,  # Latin-1, far longer than the prefix the shortcut reads
        (PT + "\n").encode("utf-8") * 3000 + "café\n".encode("iso-8859-1"),  # UTF-8 with one stray byte
        "café\n".encode("iso-8859-1") * 5 + (PT + "\n").encode("utf-8") * 3000,  # strays up front only
        ("x" * 100 + "\n").encode() * 800 + (PT + "\n").encode("iso-8859-1") * 50,  # Latin-1 after the prefix
    ],
)
def test_mostly_utf8_shortcut_gives_the_exact_verdict(raw):
    assert _mostly_utf8(raw, exact=False)[0] == _mostly_utf8(raw)[0]


def test_crlf_fixed_on_bytes_in_every_codec():
    for codec in ("utf-8", "iso-8859-1", "cp1252"):
        raw = header("x") + "pão\r\ncoração\rfim\r\n".encode(codec)
        assert decode_gutenberg(raw).text.endswith("pão\ncoração\nfim\n"), codec
    raw = b"\xef\xbb\xbf" + "pão\r\n".encode() + b"caf\xe9\r\n"  # BOM + stray Latin-1 byte
    d = decode_gutenberg(raw)
    assert d.text == "pão\ncafé\n" and d.encoding == "utf-8+cp1252-bytes"
