"""manifest.json of a corpus (docs/formats.md): what was kept, dropped and written, and how."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from pathlib import Path

from common import corpus_format as fmt
from corpus.books import BookSelection, BookSummary
from corpus.cache import code_version
from corpus.split import SPLITS
from corpus.tokenizer import tokenizer_info


def drop_counts(
    summaries: Sequence[BookSummary], selection: BookSelection, duplicate_paragraphs: int
) -> dict:
    """Books dropped by reason, and paragraphs dropped by reason (cleaning's plus deduplication)."""
    books = Counter(selection.rejected.values())
    books["near_duplicate"] = sum(len(g["dropped"]) for g in selection.near_duplicates)
    kept = {s.key for s in selection.kept}
    paragraphs: Counter[str] = Counter()
    for s in summaries:
        if s.key in kept:
            paragraphs.update(s.drops)
    paragraphs["duplicate_paragraph"] = duplicate_paragraphs
    return {
        "books": dict(sorted((k, v) for k, v in books.items() if v)),
        "paragraphs": dict(sorted((k, v) for k, v in paragraphs.items() if v)),
    }


def gutenberg_source_entry(summaries: Sequence[BookSummary], selection: BookSelection) -> dict:
    """The books' entry among the sources of a mix (split counts are filled in by write_shards)."""
    dropped = Counter(selection.rejected.values())
    dropped["near_duplicate"] = sum(len(g["dropped"]) for g in selection.near_duplicates)
    return {
        "spec": "raw store",
        "weight": 1.0,
        "documents": len(summaries),
        "kept": len(selection.kept),
        "dropped": dict(sorted((k, v) for k, v in dropped.items() if v)),
        "paragraphs_dropped": {},
        "splits": {
            split: {"documents": len(selection.splits[split]), "rows": 0, "tokens": 0, "bytes": 0}
            for split in SPLITS
        },
    }


def make_manifest(
    raw_dir: str | Path,
    out_dir: str | Path,
    config: dict,
    tokenizer_config,
    summaries: Sequence[BookSummary],
    selection: BookSelection,
    duplicate_paragraphs: int,
    shards: dict[str, list[dict]],
    build_info: dict,
    mix: dict | None = None,
) -> dict:
    """The manifest of a corpus. `config` is CorpusConfig.to_dict(); `mix`, the entries a mix of
    sources adds (`sources`, `sources_config`): none for a books-only corpus, whose manifest stays
    as it always was."""
    out_dir = Path(out_dir)
    tok = tokenizer_info(out_dir / fmt.TOKENIZER_FILE, tokenizer_config)
    return fmt.make_manifest(
        fmt.tokenizer_entry(out_dir, **tok),
        {split: fmt.split_entry(selection.splits[split], shards.get(split, [])) for split in SPLITS},
        books={
            "raw_files": len(summaries),
            "kept": len(selection.kept),
            "near_duplicates": selection.near_duplicates,
            "rejected": selection.rejected,
        },
        drops=drop_counts(summaries, selection, duplicate_paragraphs),
        config=config,
        code_version=code_version(),
        source={"raw_dir": str(Path(raw_dir).resolve())},
        build=build_info,  # times: the only part that differs between two builds of one input
        **(mix or {}),
    )


def load_manifest(out_dir: str | Path) -> dict:
    """The manifest of a finished corpus; FileNotFoundError when OUT has none (yet)."""
    path = Path(out_dir) / fmt.MANIFEST_FILE
    if not path.exists():
        raise FileNotFoundError(
            f"{path} not found: {out_dir} is not a finished corpus (build it, or rerun the build)"
        )
    return fmt.read_manifest(out_dir)
