"""Stage 1: turn the raw bytes of a Gutenberg file into text without losing a single character.

Gutenberg's historic files come as UTF-8 (with or without BOM), ISO-8859-1, ISO-8859-15, and
Latin-1 files that secretly hold Windows-1252 punctuation in 0x80-0x9F. Reading them all as
UTF-8 with errors ignored silently deletes every accented letter, so this stage never ignores
an error: strict UTF-8 first, then a single-byte codec chosen from the file's own
`Character set encoding:` line and its bytes. Every single-byte decode is total (each byte maps
to a character), so no byte is ever lost; `replacements` counts U+FFFD in the result so a
caller can prove that.
"""

from __future__ import annotations

import codecs
import re
from dataclasses import dataclass

UTF8_BOM = b"\xef\xbb\xbf"
_C1_BYTES = [bytes([b]) for b in range(0x80, 0xA0)]
_HIGH_BYTES = bytes(range(0x80, 0x100))
_DECLARED_RE = re.compile(rb"^[ \t]*Character set encoding:[ \t]*([^\r\n]*)", re.IGNORECASE | re.MULTILINE)
# A UTF-8 text decoded as Latin-1/cp1252: "Ã§" for "ç", "â€”" for "—". Only these high-signal pairs
# are looked for, so correct uppercase Portuguese ("NÃO", "ÂNCORA") is never touched.
_MOJIBAKE_SECOND = (
    "\u0080-\u00bf\u0152\u0153\u0160\u0161\u0178\u017d\u017e\u0192\u02c6\u02dc\u2013\u2014"
    "\u2018-\u201e\u2020-\u2022\u2026\u2030\u2039\u203a\u20ac\u2122"
)
_MOJIBAKE_RE = re.compile(f"[ÃÂ][{_MOJIBAKE_SECOND}]|â€")
_MOJIBAKE_SECOND_CHARS = frozenset(c for c in map(chr, range(0x80, 0x2200)) if _MOJIBAKE_RE.match("Ã" + c))
# How many header bytes to scan for the declared charset (it sits in the first ~40 lines).
HEADER_SCAN_BYTES = 8192


@dataclass
class DecodedText:
    text: str  # LF line endings, no BOM
    encoding: str  # codec actually used: "utf-8", "utf-8+cp1252-bytes", "cp1252", "iso-8859-1", "iso-8859-15"
    declared: str | None  # the file's `Character set encoding:` value, as written
    had_bom: bool
    replacements: int  # U+FFFD characters in `text` (0 unless the source itself contains them)
    fallback_bytes: int  # bytes of a mostly-UTF-8 file that were invalid and decoded as cp1252
    mojibake_repaired: int  # lines where double-encoded UTF-8 was repaired


def declared_charset(raw: bytes) -> str | None:
    """The value of the header's `Character set encoding:` line, or None (markers-only files have none)."""
    m = _DECLARED_RE.search(raw[:HEADER_SCAN_BYTES])
    if not m:
        return None
    return m.group(1).decode("ascii", errors="replace").strip() or None


def _cp1252_with_latin1_holes(error: UnicodeDecodeError) -> tuple[str, int]:
    """Error handler: decode the offending bytes one by one as cp1252, and the 5 bytes cp1252 leaves
    undefined (0x81 0x8D 0x8F 0x90 0x9D) as Latin-1, so every byte becomes exactly one character."""
    bad = error.object[error.start : error.end]
    out = []
    for b in bad:
        try:
            out.append(bytes([b]).decode("cp1252"))
        except UnicodeDecodeError:
            out.append(chr(b))
    return "".join(out), error.end


codecs.register_error("ptgpt_cp1252", _cp1252_with_latin1_holes)


def _single_byte_codec(raw: bytes, declared: str | None) -> str:
    """Pick the single-byte codec: ISO-8859-15 when declared, cp1252 when C1 bytes (0x80-0x9F) occur
    (as Latin-1 they would be invisible control characters), else ISO-8859-1."""
    d = (declared or "").lower().replace("_", "-")
    if "8859-15" in d or "latin-9" in d or "latin9" in d:
        return "iso-8859-15"
    if _has_c1_bytes(raw) or "1252" in d or "windows" in d:
        return "cp1252"
    return "iso-8859-1"


def _has_c1_bytes(raw: bytes) -> bool:
    """Any byte in 0x80-0x9F: 32 memchr scans (C speed), ~20x faster than a byte-class regex search."""
    return any(b in raw for b in _C1_BYTES)


def _mostly_utf8(raw: bytes, exact: bool = True) -> tuple[bool, int]:
    """True when a file that failed strict UTF-8 is still UTF-8 apart from a few stray bytes (valid
    non-ASCII characters outnumber invalid sequences 10 to 1). Returns (verdict, invalid sequences).

    With `exact=False` a file can be rejected from its first `HEADER_SCAN_BYTES * 8` bytes: valid
    multi-byte characters can never outnumber the file's high bytes, so when the prefix alone holds more
    than a tenth as many invalid sequences the verdict is already no (the invalid count is then a lower
    bound). Latin-1 files, most of the non-UTF-8 ones, are settled this way without decoding them whole."""
    if not exact:
        cut = raw.rfind(b"\n", 0, HEADER_SCAN_BYTES * 8) + 1  # an ASCII boundary: no sequence is split
        if cut:
            prefix = raw[:cut].decode("utf-8", errors="replace")
            invalid = prefix.count("\ufffd") - raw[:cut].count(b"\xef\xbf\xbd")
            high_bytes = len(raw) - len(raw.translate(None, _HIGH_BYTES))
            if invalid > 0 and high_bytes < 10 * invalid:
                return False, invalid
    with_replacements = raw.decode("utf-8", errors="replace")
    invalid = with_replacements.count("\ufffd") - raw.count(b"\xef\xbf\xbd")
    # Extra UTF-8 bytes beyond one per character: 1-3 per multi-byte character.
    non_ascii = len(with_replacements.encode("utf-8")) - len(with_replacements)
    valid_multibyte = max(non_ascii - 2 * invalid, 0)  # each U+FFFD adds 2 extra bytes
    return valid_multibyte >= 10 * max(invalid, 1), invalid


def _has_mojibake(text: str) -> bool:
    """Fast scan: "Ã"/"Â" are rare (uppercase only), so jumping between them with str.find and looking at
    the next character is ~50x cheaper than a regex or many substring searches over a whole book."""
    if "â€" in text:
        return True
    for lead in "ÃÂ":
        i = text.find(lead)
        while i >= 0:
            if text[i + 1 : i + 2] in _MOJIBAKE_SECOND_CHARS:
                return True
            i = text.find(lead, i + 1)
    return False


def repair_mojibake(text: str) -> tuple[str, int]:
    """Repair lines where UTF-8 was decoded as Latin-1/cp1252 ("coraÃ§Ã£o" -> "coração").

    Only lines with an unambiguous mojibake pair are handed to ftfy, so clean text is untouched and
    the common case costs one regex search."""
    if not _has_mojibake(text):
        return text, 0
    import ftfy  # only needed for the rare broken file

    lines = text.split("\n")
    repaired = 0
    for i, line in enumerate(lines):
        if _MOJIBAKE_RE.search(line):
            fixed = ftfy.fix_encoding(line)
            if fixed != line:
                lines[i] = fixed
                repaired += 1
    return "\n".join(lines), repaired


def decode_gutenberg(raw: bytes) -> DecodedText:
    """Decode a Gutenberg file: BOM, strict UTF-8, else the declared/cp1252/Latin-1 single-byte codec;
    CRLF and lone CR become LF; detectable mojibake is repaired."""
    if not isinstance(raw, (bytes, bytearray, memoryview)):
        raise TypeError(f"decode_gutenberg expects bytes, got {type(raw).__name__}")
    raw = bytes(raw)
    declared = declared_charset(raw)
    had_bom = raw.startswith(UTF8_BOM)
    body = raw[len(UTF8_BOM) :] if had_bom else raw
    # Line endings are fixed on the bytes: CR and LF are single bytes in every codec used here (never
    # inside a UTF-8 sequence), so this equals doing it on the text, and is cheaper (one byte a character).
    if b"\r" in body:
        body = body.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
    fallback_bytes = 0
    try:
        text = body.decode("utf-8")
        encoding = "utf-8"
    except UnicodeDecodeError:
        mostly, invalid = _mostly_utf8(body, exact=had_bom)
        if mostly or had_bom:
            text = body.decode("utf-8", errors="ptgpt_cp1252")
            encoding, fallback_bytes = "utf-8+cp1252-bytes", invalid
        else:
            encoding = _single_byte_codec(body, declared)
            if encoding == "cp1252":
                text = body.decode("cp1252", errors="ptgpt_cp1252")
            else:
                text = body.decode(encoding)  # total: every byte maps to a character
    text, repaired = repair_mojibake(text)
    return DecodedText(
        text=text,
        encoding=encoding,
        declared=declared,
        had_bom=had_bom,
        replacements=text.count("\ufffd"),
        fallback_bytes=fallback_bytes,
        mojibake_repaired=repaired,
    )
