"""`ptgpt corpus build` and `ptgpt corpus stats`."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import click

from corpus.doc_filters import DocFilterConfig
from corpus.sources import MAX_WEIGHT
from corpus.tokenizer import TokenizerConfig  # sentencepiece only: the defaults, defined once


def _check_vocab_size(ctx: click.Context, param: click.Parameter, value: int) -> int:
    """Refuse a vocabulary no build can make while the command line is read, before any download."""
    from corpus.build import check_vocab_size

    check_vocab_size(value)  # a UserError: one `Error:` line, as the build itself would give
    return value


def text_options(f):
    """What text goes in and how it is tokenized: shared by `corpus build`, `fetch-and-build` and `run`."""
    options = [
        click.option(
            "--vocab-size",
            type=int,
            callback=_check_vocab_size,
            default=TokenizerConfig.vocab_size,
            show_default=True,
            help="SentencePiece vocabulary (8000 suits the Gutenberg books alone).",
        ),
        click.option(
            "--model-type",
            type=click.Choice(["bpe", "unigram"]),
            default=TokenizerConfig.model_type,
            show_default=True,
            help="SentencePiece model.",
        ),
        click.option(
            "--extra",
            "extras",
            multiple=True,
            metavar="SOURCE[:WEIGHT][:min_words=N]",
            help="More text next to the books (repeatable): a .jsonl/.json/.parquet/.txt file or folder, "
            "or a dataset for datasets.load_dataset (local folder or hub name), streamed. WEIGHT "
            f"(default 1, at most {MAX_WEIGHT:g}): copies of each train document in the mix. "
            "min_words=N: this source's shortest document in words (default "
            f"{DocFilterConfig.min_words}). Text must be UTF-8; a file that is not stops the build, naming it.",
        ),
        click.option(
            "--text-field",
            default="text",
            show_default=True,
            help="The field or column of --extra sources that holds the text.",
        ),
    ]
    for option in reversed(options):
        f = option(f)
    return f


@click.group()
def corpus() -> None:
    """Turn a raw store into a tokenized, deduplicated Parquet corpus."""


@corpus.command()
@click.option(
    "--raw",
    "raw_dir",
    type=click.Path(path_type=Path),
    required=True,
    help="Raw store: <id>.txt files, with or without manifest.jsonl.",
)
@click.option(
    "--out",
    "out_dir",
    type=click.Path(file_okay=False, path_type=Path),
    required=True,
    help="Corpus folder (shards, tokenizer.model, manifest.json). Rerunning resumes.",
)
@click.option(
    "--workers",
    type=click.IntRange(min=1),
    default=None,
    help="Processes for cleaning and threads for encoding. Default: all cores.",
)
@click.option(
    "--cache-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Per-book cache (default OUT/.cache); reusing it makes reruns fast.",
)
@click.option(
    "--force",
    is_flag=True,
    help="Build into a non-empty OUT that is not a ptgpt corpus (its other files are kept).",
)
@click.option(
    "--allow-empty-splits",
    is_flag=True,
    help="Build from fewer than 3 books, leaving validation or test empty.",
)
@text_options
@click.option("--quiet", is_flag=True, help="No progress bars.")
def build(
    raw_dir: Path,
    out_dir: Path,
    vocab_size: int,
    model_type: str,
    workers: int | None,
    cache_dir: Path | None,
    force: bool,
    allow_empty_splits: bool,
    extras: tuple[str, ...],
    text_field: str,
    quiet: bool,
) -> None:
    """Build a corpus from a raw store already on disk (no Prefect, no downloads).

    Cleans, deduplicates, splits, tokenizes and shards the books of RAW into OUT. The new corpus is
    built next to OUT and replaces it only when complete: a failed build leaves OUT as it was. To
    download and build in one Prefect flow, use `ptgpt fetch-and-build`.
    """
    from corpus.build import CorpusConfig, build_corpus
    from corpus.sources import parse_extras
    from corpus.tokenizer import TokenizerConfig

    config = CorpusConfig(tokenizer=TokenizerConfig(vocab_size=vocab_size, model_type=model_type))
    manifest = build_corpus(
        raw_dir,
        out_dir,
        config,
        workers=workers or os.cpu_count(),
        progress=not quiet,
        cache_dir=cache_dir,
        force=force,
        allow_empty_splits=allow_empty_splits,
        extras=parse_extras(extras, text_field),
    )
    click.echo(summary_table(manifest))
    click.echo(f"\nwrote {out_dir}/manifest.json in {manifest['build']['seconds']:.1f} s")


@corpus.command()
@click.argument("out_dir", metavar="CORPUS", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--verify", is_flag=True, help="Also check every shard's and the tokenizer's sha256.")
def stats(out_dir: Path, verify: bool) -> None:
    """Print the statistics of a finished corpus (the folder `corpus build` wrote)."""
    from common.files import sha256_file
    from corpus.build import load_manifest

    try:
        manifest = load_manifest(out_dir)
    except (FileNotFoundError, ValueError) as e:
        raise click.ClickException(str(e)) from None
    click.echo(summary_table(manifest))
    if verify:
        files = [(manifest["tokenizer"]["file"], manifest["tokenizer"]["sha256"])]
        files += [(s["file"], s["sha256"]) for split in manifest["splits"].values() for s in split["shards"]]
        bad = [f for f, digest in files if not (out_dir / f).exists() or sha256_file(out_dir / f) != digest]
        if bad:
            click.echo(f"\n{len(bad)} file(s) missing or changed: {', '.join(bad)}", err=True)
            sys.exit(1)
        click.echo(f"\nverified {len(files)} files")


def summary_table(manifest: dict) -> str:
    """A plain-text table of the splits, then drops and near-duplicate editions."""
    rows = [("split", "books", "paragraphs", "tokens", "MB", "bytes/tok", "shards")]
    totals = [0, 0, 0, 0, 0]
    for name, s in manifest["splits"].items():
        bpt = f"{s['bytes'] / s['tokens']:.2f}" if s["tokens"] else "-"
        rows.append(
            (
                name,
                f"{len(s['books']):,}",
                f"{s['rows']:,}",
                f"{s['tokens']:,}",
                f"{s['bytes'] / 1e6:.1f}",
                bpt,
                str(len(s["shards"])),
            )
        )
        for i, v in enumerate((len(s["books"]), s["rows"], s["tokens"], s["bytes"], len(s["shards"]))):
            totals[i] += v
    tb = f"{totals[3] / totals[2]:.2f}" if totals[2] else "-"
    rows.append(
        (
            "total",
            f"{totals[0]:,}",
            f"{totals[1]:,}",
            f"{totals[2]:,}",
            f"{totals[3] / 1e6:.1f}",
            tb,
            str(totals[4]),
        )
    )
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = []
    for j, r in enumerate(rows):
        lines.append(
            "  ".join(
                c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths, strict=True))
            )
        )
        if j == 0 or j == len(rows) - 2:
            lines.append("  ".join("-" * w for w in widths))
    tok = manifest["tokenizer"]
    lines.append(
        f"\ntokenizer: {tok['file']} ({tok.get('config', {}).get('model_type', '?')}, vocab {tok['vocab_size']})"
    )
    books = manifest.get("books", {})
    drops = manifest.get("drops", {})
    if books:
        lines.append(f"raw files: {books['raw_files']}, books kept: {books['kept']}")
    for kind in ("books", "paragraphs"):
        if drops.get(kind):
            lines.append(f"{kind} dropped: " + ", ".join(f"{k} {v:,}" for k, v in drops[kind].items()))
    for name, src in manifest.get("sources", {}).items():
        dropped = ", ".join(f"{k} {v:,}" for k, v in src["dropped"].items()) or "none"
        tokens = sum(s["tokens"] for s in src["splits"].values())
        lines.append(
            f"source {name} (weight {src['weight']:g}): {src['documents']:,} read, {src['kept']:,} kept, "
            f"{tokens:,} tokens; dropped: {dropped}"
        )
    for g in books.get("near_duplicates", []):
        lines.append(
            f"near-duplicate: kept {g['kept']}, dropped {', '.join(g['dropped'])} (~{g['similarity']:.2f})"
        )
    return "\n".join(lines)
