"""Stages 1-5 in one call: raw Gutenberg bytes -> a cleaned book of Portuguese paragraphs.

    decode_gutenberg -> strip_gutenberg_boilerplate -> normalize_text -> split_paragraphs -> filter_paragraphs

`clean_book` is a plain module-level function of picklable arguments, so a corpus builder can map it
over a process pool; the language identifier is loaded lazily once per process.
"""

from __future__ import annotations

import re
import time
from dataclasses import asdict, dataclass, field

from corpus.boilerplate import BookMetadata, BookRejected, strip_gutenberg_boilerplate
from corpus.decode import decode_gutenberg
from corpus.filters import FilterConfig, filter_paragraphs
from corpus.normalize import UnwrapConfig, normalize_text, split_paragraphs

__all__ = ["BookMetadata", "BookRejected", "CleanConfig", "CleanedBook", "clean_book"]


@dataclass
class CleanConfig:
    # Fewer letters than this between the markers (after credits and notes are removed) means the file
    # is a stub, a placeholder or a cut-off download, not a book.
    min_body_chars: int = 500
    # A book that keeps less than this share of its normalized body was mangled somewhere (wrong
    # codec, a layout the cleaner misreads): reject it rather than ship fragments.
    min_kept_fraction: float = 0.2
    unwrap: UnwrapConfig = field(default_factory=UnwrapConfig)
    filter: FilterConfig = field(default_factory=FilterConfig)


@dataclass
class CleanedBook:
    book_id: int
    metadata: BookMetadata
    paragraphs: list[str]  # kept paragraphs, in order (paragraph_index = position)
    drops: dict[str, int]  # reason code -> paragraphs dropped
    encoding: str  # codec actually used
    replacements: int  # U+FFFD in the decoded text (0 on every real book)
    raw_bytes: int
    body_chars: int  # characters of the normalized body, before filtering
    kept_chars: int  # characters of the kept paragraphs
    langid_calls: int = 0  # paragraphs the language model was run on

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> CleanedBook:
        d = dict(d)
        d["metadata"] = BookMetadata(**d["metadata"])
        return cls(**d)

    def records(self):
        """(book_id, paragraph_index, text) for every kept paragraph: the provenance of each row."""
        for i, text in enumerate(self.paragraphs):
            yield self.book_id, i, text


_CONTROL_BYTES = re.compile(rb"[\x00-\x08\x0e-\x1a\x1c-\x1f]")  # never in a text file, save a stray one


def reject_non_text(raw: bytes) -> None:
    """Raise BookRejected with the true reason for a file that is no text at all.

    Decoding would otherwise turn any bytes into some 8-bit "text" and the file would be rejected
    later for the wrong reason (`no_start_marker`).
    """
    if not raw.strip():
        raise BookRejected("empty_file", f"{len(raw)} bytes, none of them text")
    head = raw[:65536]
    if head.startswith((b"\xff\xfe", b"\xfe\xff")) or b"\x00" in head:
        raise BookRejected(
            "not_text", "UTF-16 or binary data (NUL bytes); Gutenberg texts are UTF-8 or 8-bit"
        )
    if len(_CONTROL_BYTES.findall(head)) > len(head) // 100:
        raise BookRejected("not_text", "binary data: more than 1% control bytes")


def clean_book(
    raw: bytes, book_id: int, config: CleanConfig | None = None, timings: dict[str, float] | None = None
) -> CleanedBook:
    """Clean one raw Gutenberg file. Raises BookRejected with a reason code instead of returning junk.

    `timings`, when given, accumulates seconds per stage (decode, strip, normalize, filter) for benches."""
    config = config or CleanConfig()
    reject_non_text(bytes(raw))
    clock = time.process_time  # CPU seconds: robust to other processes sharing the cores
    t0 = clock()
    decoded = decode_gutenberg(raw)
    t1 = clock()
    stripped = strip_gutenberg_boilerplate(decoded.text, min_body_chars=config.min_body_chars)
    t2 = clock()
    paragraphs = split_paragraphs(normalize_text(stripped.body, config.unwrap))
    t3 = clock()
    result = filter_paragraphs(paragraphs, config.filter)
    t4 = clock()
    if timings is not None:
        for stage, dt in (
            ("decode", t1 - t0),
            ("strip", t2 - t1),
            ("normalize", t3 - t2),
            ("filter", t4 - t3),
        ):
            timings[stage] = timings.get(stage, 0.0) + dt
    body_chars = sum(map(len, paragraphs))
    kept_chars = sum(map(len, result.kept))
    if result.foreign_fraction > config.filter.max_foreign_fraction:
        raise BookRejected(
            "not_portuguese", f"{result.foreign_fraction:.0%} of language-tested text is not Portuguese"
        )
    if kept_chars < config.min_kept_fraction * body_chars:
        raise BookRejected("too_little_text", f"filters kept {kept_chars} of {body_chars} characters")
    meta = stripped.metadata
    if meta.encoding is None:
        meta.encoding = decoded.declared
    return CleanedBook(
        book_id=int(book_id),
        metadata=meta,
        paragraphs=result.kept,
        drops=dict(result.drops),
        encoding=decoded.encoding,
        replacements=decoded.replacements,
        raw_bytes=len(raw),
        body_chars=body_chars,
        kept_chars=kept_chars,
        langid_calls=result.langid_calls,
    )
