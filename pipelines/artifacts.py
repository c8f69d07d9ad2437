"""What a flow run shows in the Prefect UI: result tables, a corpus summary, training curves, progress.

Artifact keys are fixed, so each key's page in the UI holds the history of every run:

    corpus-books        table: every book found, and whether it was downloaded, skipped or failed
    corpus-drops        table: books and paragraphs kept and dropped, by reason
    corpus-summary      markdown: books, paragraphs, tokens per split, tokenizer fertility
    train-summary       markdown: final losses and the loss plot
    train-losses        table: the logged losses
    *-progress          progress bars updated while downloading, cleaning and training
"""

from __future__ import annotations

import base64
import time
from pathlib import Path

import pyarrow.compute as pc
import pyarrow.parquet as pq
from prefect.artifacts import (
    create_markdown_artifact,
    create_progress_artifact,
    create_table_artifact,
    update_progress_artifact,
)

from corpus.split import SPLITS

BOOKS_KEY = "corpus-books"
DROPS_KEY = "corpus-drops"
CORPUS_SUMMARY_KEY = "corpus-summary"
TRAIN_SUMMARY_KEY = "train-summary"
TRAIN_LOSSES_KEY = "train-losses"
MAX_INLINE_PLOT_BYTES = 512 << 10  # a bigger PNG is linked by path instead of embedded


class Progress:
    """A progress artifact, updated at most every `interval` seconds (and always at the end)."""

    def __init__(self, key: str, total: int, description: str, interval: float = 1.0):
        self.total, self.done, self.description, self.interval = max(total, 0), 0, description, interval
        self._last = 0.0
        self.id = create_progress_artifact(0.0, key=key, description=f"{description}: 0/{self.total}")

    def advance(self, n: int = 1) -> None:
        self.done += n
        now = time.monotonic()
        if self.done >= self.total or now - self._last >= self.interval:
            self._last = now
            self.set(self.done)

    def set(self, done: int) -> None:
        self.done = done
        percent = 100.0 * done / self.total if self.total else 100.0
        update_progress_artifact(
            self.id, min(percent, 100.0), description=f"{self.description}: {done}/{self.total}"
        )


def books_table(outcomes: list[dict]) -> None:
    """corpus-books: one row per book discovered (id, title, outcome, bytes, error)."""
    counts = {k: sum(o["outcome"] == k for o in outcomes) for k in ("downloaded", "skipped", "failed")}
    create_table_artifact(
        outcomes,
        key=BOOKS_KEY,
        description=(
            f"{len(outcomes)} books found: {counts['downloaded']} downloaded, {counts['skipped']} already "
            f"stored, {counts['failed']} failed"
        ),
    )


def drops_table(manifest: dict) -> list[dict]:
    """corpus-drops: what was kept and what was dropped, for books and for paragraphs, by reason."""
    splits = manifest["splits"]
    rows = [{"unit": "book", "reason": "kept", "count": manifest["books"]["kept"]}]
    rows += [{"unit": "book", "reason": k, "count": v} for k, v in manifest["drops"]["books"].items()]
    rows.append({"unit": "paragraph", "reason": "kept", "count": sum(splits[s]["rows"] for s in SPLITS)})
    rows += [
        {"unit": "paragraph", "reason": k, "count": v} for k, v in manifest["drops"]["paragraphs"].items()
    ]
    create_table_artifact(rows, key=DROPS_KEY, description="Books and paragraphs kept and dropped, by reason")
    return rows


def split_words(out: str | Path, manifest: dict) -> dict[str, int]:
    """Whitespace-separated words per split, read from the shards (for tokenizer fertility)."""
    words = {}
    for split in SPLITS:
        n = 0
        for shard in manifest["splits"][split]["shards"]:
            text = pq.read_table(Path(out) / shard["file"], columns=["text"]).column("text")
            n += pc.sum(pc.list_value_length(pc.utf8_split_whitespace(text))).as_py() or 0
        words[split] = n
    return words


def corpus_summary(manifest: dict, words: dict[str, int], download: dict) -> str:
    """corpus-summary: the markdown summary of a build; also returned for logs."""
    splits, tok = manifest["splits"], manifest["tokenizer"]
    lines = [
        "# Corpus build",
        "",
        f"Books: {download['found']} found, {download['downloaded']} downloaded, {download['skipped']} already "
        f"stored, {len(download['failed'])} failed; {manifest['books']['raw_files']} raw files cleaned, "
        f"{manifest['books']['kept']} books kept.",
        "",
        "| split | books | paragraphs | tokens | words | tokens/word | bytes/token |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for split in SPLITS:
        s = splits[split]
        fert = f"{s['tokens'] / words[split]:.3f}" if words.get(split) else "-"
        bpt = f"{s['bytes'] / s['tokens']:.2f}" if s["tokens"] else "-"
        lines.append(
            f"| {split} | {len(s['books'])} | {s['rows']:,} | {s['tokens']:,} | {words.get(split, 0):,} | {fert} "
            f"| {bpt} |"
        )
    total_tokens, total_words = sum(splits[s]["tokens"] for s in SPLITS), sum(words.values())
    lines += [
        "",
        f"Tokenizer: SentencePiece {tok['config']['model_type'].upper()}, vocabulary {tok['vocab_size']:,}, "
        f"trained on the train split; fertility {total_tokens / max(total_words, 1):.3f} tokens per word "
        "over all splits.",
        "",
        f"Dropped books: {_reasons(manifest['drops']['books'])}.",
        f"Dropped paragraphs: {_reasons(manifest['drops']['paragraphs'])}.",
        "",
        f"Code version `{manifest['code_version']}`; built in {manifest['build'].get('seconds', 0):.1f} s.",
    ]
    text = "\n".join(lines)
    create_markdown_artifact(text, key=CORPUS_SUMMARY_KEY, description="Corpus: books, paragraphs, tokens")
    return text


def _reasons(counts: dict[str, int]) -> str:
    return ", ".join(f"{k} {v:,}" for k, v in counts.items()) or "none"


def training_artifacts(summary: dict, metrics: list[dict], run_dir: str | Path) -> str:
    """train-summary (final losses + the loss plot) and train-losses (the logged curve)."""
    train_records = [m for m in metrics if "loss" in m]
    val_records = [m for m in metrics if "val_loss" in m]
    last = train_records[-1] if train_records else {}
    last_val = val_records[-1] if val_records else {}
    lines = [
        "# Training run",
        "",
        f"Run folder `{run_dir}`: step {summary.get('step')} (this run started at step {summary.get('start_step')}).",
        "",
        "| metric | value |",
        "|---|---:|",
        f"| final train loss | {_fmt(last.get('loss'))} |",
        f"| validation loss | {_fmt(last_val.get('val_loss'))} |",
        f"| validation bits per byte | {_fmt(last_val.get('val_bpb'))} |",
        f"| tokens seen | {summary.get('tokens_seen', last.get('tokens', 0)):,} |",
        "",
        f"Last checkpoint: `{summary.get('checkpoint')}`",
    ]
    plot = Path(run_dir) / "loss.png"
    if plot.is_file() and plot.stat().st_size <= MAX_INLINE_PLOT_BYTES:
        data = base64.b64encode(plot.read_bytes()).decode()
        lines += ["", f"![loss curves](data:image/png;base64,{data})"]
    elif plot.is_file():
        lines += ["", f"Loss plot: `{plot}`"]
    text = "\n".join(lines)
    create_markdown_artifact(text, key=TRAIN_SUMMARY_KEY, description="Final losses and loss curves")
    if train_records:
        rows = [
            {"step": m["step"], "loss": m["loss"], "val_loss": m.get("val_loss"), "lr": m.get("lr")}
            for m in train_records
        ]
        create_table_artifact(rows, key=TRAIN_LOSSES_KEY, description="Logged training losses")
    return text


def _fmt(x) -> str:
    return f"{x:.4f}" if isinstance(x, (int, float)) else "-"
