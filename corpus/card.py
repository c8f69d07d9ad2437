"""README.md of a corpus: a Hugging Face dataset card, written from the manifest alone."""

from __future__ import annotations

from urllib.parse import urlparse

from corpus.split import SPLITS

GUTENBERG_HOSTS = ("gutenberg.org", "gutenberg.pglaf.org", "aleph.gutenberg.org")


def from_gutenberg(manifest: dict) -> bool:
    """True only when the books were downloaded from gutenberg.org (or a PGLAF mirror), as recorded."""
    source = (manifest.get("source") or {}).get("source") or ""
    host = urlparse(source).hostname or ""
    return any(host == h or host.endswith("." + h) for h in GUTENBERG_HOSTS)


def size_category(rows: int) -> str:
    """The Hugging Face Hub's size bucket for a number of rows."""
    for limit, name in (
        (10**3, "n<1K"),
        (10**4, "1K<n<10K"),
        (10**5, "10K<n<100K"),
        (10**6, "100K<n<1M"),
        (10**7, "1M<n<10M"),
        (10**8, "10M<n<100M"),
    ):
        if rows < limit:
            return name
    return "n>100M"


def provenance(manifest: dict) -> list[str]:
    """Where the text came from, as the build recorded it: never a claim the manifest cannot back."""
    recorded = manifest.get("source") or {}
    if from_gutenberg(manifest):
        return [
            f"Portuguese books downloaded from Project Gutenberg ({recorded['source']}). The texts are",
            "Project Gutenberg eBooks, public domain in the USA; check the laws of your country before",
            "using them. Project Gutenberg is a trademark of the Project Gutenberg Literary Archive",
            "Foundation; this derived dataset is not endorsed by it.",
        ]
    where = recorded.get("source") or recorded.get("raw_dir") or "a local folder"
    return [
        f"Books read from {where}, not downloaded from gutenberg.org by this build, so this card makes no",
        "claim about their licence: check it for each book. (The mirror of `ptgpt demo` and the tests",
        "serves the project's own generated sample books, templated Portuguese-like prose, not literature.)",
    ]


def dataset_card(manifest: dict) -> str:
    """README.md: a Hugging Face dataset card (YAML header so `load_dataset(OUT)` finds the splits)."""
    splits = manifest["splits"]
    tok = manifest["tokenizer"]
    rows = sum(splits[split]["rows"] for split in SPLITS)
    lines = [
        "---",
        "language:",
        "- pt",
        f"license: {'other' if from_gutenberg(manifest) else 'unknown'}",
        *(["license_name: public-domain-us"] if from_gutenberg(manifest) else []),
        "task_categories:",
        "- text-generation",
        "size_categories:",
        f"- {size_category(rows)}",
        "source_datasets:",
        "- original",
        "pretty_name: ptgpt Portuguese Gutenberg corpus",
        "configs:",
        "- config_name: default",
        "  data_files:",
    ]
    for split in SPLITS:
        if splits[split]["shards"]:
            lines += [f"  - split: {split}", f"    path: {split}/*.parquet"]
    lines += ["---", "", "# ptgpt Portuguese Gutenberg corpus", ""]
    lines += [
        "Portuguese books, cleaned (Gutenberg header, footer and license removed;",
        "text NFC; verse line breaks kept), deduplicated (near-duplicate editions and exact duplicate",
        "paragraphs) and split train/validation/test by whole book. One row per paragraph, with its",
        f"SentencePiece token ids (`{tok['file']}`, {tok['config']['model_type'].upper()}, vocabulary "
        f"{tok['vocab_size']}, byte fallback; ids unk {tok['unk_id']}, bos {tok['bos_id']}, "
        f"eos {tok['eos_id']}, pad {tok['pad_id']}).",
        "",
        *provenance(manifest),
        "",
        "## Statistics",
        "",
        "| split | books | paragraphs | tokens | UTF-8 bytes | bytes/token | shards |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for split in SPLITS:
        s = splits[split]
        bpt = f"{s['bytes'] / s['tokens']:.2f}" if s["tokens"] else "-"
        lines.append(
            f"| {split} | {len(s['books'])} | {s['rows']:,} | {s['tokens']:,} | {s['bytes']:,} | {bpt} "
            f"| {len(s['shards'])} |"
        )
    lines += _drops_and_config(manifest)
    if "sources" in manifest:
        lines += sources_card(manifest)
    lines += _columns()
    lines += LIMITATIONS
    return "\n".join(lines)


LIMITATIONS = [
    "",
    "## Limitations",
    "",
    "- Spelling of the period: most Portuguese Gutenberg books predate the 1911 and 1945/1990 reforms",
    '  ("pharmacia", "estylo", "hontem"), so a model learns old orthography beside the modern one.',
    "- European and Brazilian Portuguese are mixed and not labelled.",
    "- The collection is skewed towards a few prolific 19th-century authors.",
    "- Cleaning is heuristic (language identification, Gutenberg markers, paragraph filters): some front",
    "  matter, tables or foreign passages remain and some prose is dropped (the drop counts above).",
]


def _drops_and_config(manifest: dict) -> list[str]:
    drops = manifest["drops"]
    books = manifest["books"]
    lines = [
        "",
        f"Raw files read: {books['raw_files']}; books kept: {books['kept']}.",
        "",
        "Books dropped, by reason:",
        "",
    ]
    lines += [f"- {k}: {v}" for k, v in drops["books"].items()] or ["- none"]
    lines += ["", "Paragraphs dropped, by reason:", ""]
    lines += [f"- {k}: {v:,}" for k, v in drops["paragraphs"].items()] or ["- none"]
    if books["near_duplicates"]:
        lines += ["", "Near-duplicate editions (kept <- dropped, estimated Jaccard):", ""]
        for g in books["near_duplicates"]:
            lines.append(f"- {g['kept']} <- {', '.join(g['dropped'])} ({g['similarity']:.2f})")
    cfg = manifest["config"]
    lines += [
        "",
        "## How it was built",
        "",
        f"- split: by book, from sha256 of the ebook number (salt `{cfg['split']['salt']}`), "
        f"validation {cfg['split']['validation_fraction']:.0%}, test {cfg['split']['test_fraction']:.0%}",
        f"- near-duplicate books: MinHash ({cfg['dedup']['num_perm']} hashes) over word "
        f"{cfg['dedup']['shingle_words']}-grams of a spelling skeleton, Jaccard >= {cfg['dedup']['book_threshold']}",
        f"- exact duplicate paragraphs of at least {cfg['dedup']['min_paragraph_chars']} characters: first kept",
        f"- tokenizer: trained on the train split only; cleaning code version `{manifest['code_version']}`",
        "- `manifest.json` holds the full configuration, per-shard sha256 and the book list of each split",
    ]
    return lines


def _columns() -> list[str]:
    return [
        "",
        "## Columns",
        "",
        "`book_id` (Gutenberg ebook number), `paragraph_index` (position in the cleaned book; gaps are",
        "duplicate paragraphs removed), `title`, `author`, `text`, `tokens` (ids of `text`, no BOS/EOS),",
        "`n_bytes` (UTF-8 length of `text`). Rows of a book are contiguous and in order; a book never",
        "spans two shards. Between two paragraphs of a book put `separator_ids` from `manifest.json`;",
        "BOS and EOS mark book boundaries.",
        "",
        "```python",
        "import datasets",
        'ds = datasets.load_dataset("parquet", data_dir="path/to/corpus")',
        "```",
        "",
    ]


def sources_card(manifest: dict) -> list[str]:
    """The dataset card's section on a mix of sources: counts, drops by reason, tokens, weights."""
    lines = [
        "",
        "## Sources",
        "",
        "Besides the Gutenberg books, documents of other sources went through the same cleaning (no",
        "Gutenberg header or unwrapping; web-text filters of corpus/doc_filters.py), were deduplicated",
        "against the books and each other (a copy of a book is dropped in favour of the cleaned book) and",
        "split by a hash of their id. Each row has `source` and `source_id` (the book's file stem, or",
        "the document's own id). Other documents have a negative `book_id`, empty `title` and `author`.",
        "Train documents enter the mix `weight` times (fractions: a deterministic sample).",
        "",
        "| source | weight | documents read | kept | train tokens | validation tokens | test tokens |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for name, src in manifest["sources"].items():
        sp = src["splits"]
        lines.append(
            f"| {name} | {src['weight']:g} | {src['documents']:,} | {src['kept']:,} | "
            + " | ".join(f"{sp[s]['tokens']:,}" for s in SPLITS)
            + " |"
        )
    lines += ["", "Dropped, by source and reason (documents; then paragraphs or lines inside kept ones):", ""]
    for name, src in manifest["sources"].items():
        docs = ", ".join(f"{k} {v:,}" for k, v in src["dropped"].items()) or "none"
        paragraphs = ", ".join(f"{k} {v:,}" for k, v in src["paragraphs_dropped"].items()) or "none"
        lines.append(f"- {name} (`{src['spec']}`): {docs}; paragraphs: {paragraphs}")
    return lines
