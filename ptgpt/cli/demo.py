"""`ptgpt demo`: the main job (corpus-and-train), offline, on the project's own sample books, then SFT and
one chat reply. Its log is meant to be read: Prefect's per-task lines are off, and it ends with a screen
that says where everything is, what each number means beside its baseline, and what to run next."""

from __future__ import annotations

import json
import logging
import os
import textwrap
import time
from pathlib import Path

import click

# Small enough for a CPU in a few minutes, big enough to see the loss fall and Portuguese appear.
DEMO_TRAINING = {
    "batch_size": 16,
    "block_size": 128,
    "lr": 3e-3,
    "warmup_steps": 30,
    "eval_every": 100,
    "eval_batches": 20,
    "checkpoint_every": 100,
    "log_every": 10,
}


PER_ITEM_TASKS = {"download-book", "clean-book", "clean-chunk"}  # pipelines/tasks.py: one run per book


class PerItemTasksFilter(logging.Filter):
    """Drops the INFO lines of per-book task runs (two per book); their warnings and errors stay."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno >= logging.WARNING or getattr(record, "task_name", None) not in PER_ITEM_TASKS


def quiet_prefect() -> None:
    """Keep the flow runs' lines (a few per stage) and the train task's (the trainer's messages, printed
    through Prefect), drop the per-book task runs' lines and Prefect's own (server start, client).

    Set as environment variables because Prefect reconfigures its loggers from them more than once; a
    PREFECT_LOGGING_LEVEL of the user's own wins."""
    if "PREFECT_LOGGING_LEVEL" not in os.environ:
        os.environ["PREFECT_LOGGING_LEVEL"] = "WARNING"
        os.environ.setdefault("PREFECT_LOGGING_LOGGERS_PREFECT_FLOW_RUNS_LEVEL", "INFO")
        os.environ.setdefault("PREFECT_LOGGING_LOGGERS_PREFECT_TASK_RUNS_LEVEL", "INFO")
    import prefect  # noqa: F401 - configures its loggers on import (a no-op if it already was)

    for name, variable in (
        ("prefect", "PREFECT_LOGGING_LEVEL"),
        ("prefect.flow_runs", "PREFECT_LOGGING_LOGGERS_PREFECT_FLOW_RUNS_LEVEL"),
        ("prefect.task_runs", "PREFECT_LOGGING_LOGGERS_PREFECT_TASK_RUNS_LEVEL"),
    ):
        if os.environ.get(variable):
            logging.getLogger(name).setLevel(os.environ[variable])
    task_logger = logging.getLogger("prefect.task_runs")
    if not any(isinstance(f, PerItemTasksFilter) for f in task_logger.filters):
        task_logger.addFilter(PerItemTasksFilter())


def shown(path: Path) -> str:
    """A path as the user would type it: relative to the current folder when it lies inside it."""
    try:
        return str(path.relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def last_evaluation(run_dir: Path) -> dict:
    """The newest metrics record with a validation bpb (the figures a rerun shows too)."""
    from training.metrics import read_metrics

    return next((r for r in reversed(read_metrics(run_dir)) if r.get("val_bpb") is not None), {})


def final_screen(out: Path, seconds: float, sample: tuple[str, str, str], chat: dict | None) -> str:
    """What the demo made, what its figures mean, and the next commands: the last thing a person reads."""
    corpus_manifest = json.loads((out / "corpus" / "manifest.json").read_text(encoding="utf-8"))
    splits = corpus_manifest.get("splits", {})
    books = sum(len(s.get("books", [])) for s in splits.values())
    tokens = sum(s.get("tokens", 0) for s in splits.values())
    ev = last_evaluation(out / "run")
    prog = ".venv/bin/ptgpt" if Path(".venv/bin/ptgpt").is_file() else "ptgpt"
    minutes, secs = divmod(round(seconds), 60)
    lines = [
        "",
        f"== ptgpt demo done in {minutes}m{secs:02d}s; everything is under {shown(out)}/ ==",
        "  raw/      the downloaded books, byte for byte as served, with manifest.jsonl",
        f"  corpus/   {books} books cleaned and deduplicated: Parquet shards ({tokens:,} tokens), tokenizer.model,",
        "            README.md (the dataset card)",
        "  run/      the pre-trained model: checkpoints/, loss.png, metrics.jsonl, samples.txt, tb/",
    ]
    if chat is not None:
        lines.append("  sft/      the instruction-tuned model: checkpoints/, loss.png, heldout_scores.json")
    lines += ["", "what the numbers mean:"]
    if ev:
        bpb, ngram = ev["val_bpb"], ev.get("ngram_val_bpb")
        lines.append(f"  validation bits per byte {bpb:.3f} at step {ev['step']} (lower is better)")
        if ngram is not None:
            verdict = "beats" if bpb < ngram else "does not beat yet"
            order = int(ev.get("ngram_order") or 0)
            lines.append(
                f"    a {order}-gram model of the same corpus: {ngram:.3f}, so the model {verdict} it"
            )
        lines += [
            "    (the sample books are generated from templates, hence far below the ~2.4 of a small model on",
            "    real books: docs/benchmarks.md)",
        ]
    if chat is not None:
        base, tuned, n = chat["report"]["base"], chat["report"]["tuned"], chat["report"]["items"]
        lines += [
            f"  held-out questions answered right: base {base['accuracy']:.1%} -> tuned {tuned['accuracy']:.1%}"
            f" of {n}",
            "    (who wrote a book, which book a passage is from, the next word: questions on the corpus never",
            "    seen in tuning; a model this small is mostly wrong, the gain from tuning is the point)",
        ]
    prompt, checkpoint, text = sample
    lines += ["", f"sample of the pre-trained model ({checkpoint}), prompt {prompt!r}:"]
    lines += textwrap.wrap(text, 100, initial_indent="  ", subsequent_indent="  ")
    if chat is not None:
        verdict = "right" if chat["right"] else "wrong"
        lines += [
            "",
            "chat with the tuned model (a held-out question, sampled reply):",
            f"  > {chat['question']}",
            f"  {chat['reply']}",
            f"  expected: {chat['expected']}  ({verdict})",
        ]
    run, sft = shown(out / "run"), shown(out / "sft")
    lines += ["", "next:"]
    commands = [
        (f"{prog} chat --run {sft}", "talk to it in the terminal"),
        (f"{prog} serve-model --run {sft}", "API + chat page on http://127.0.0.1:8000"),
    ]
    if chat is None:
        commands = [(f'{prog} generate --run {run} --prompt "Era uma vez"', "continue a prompt")]
    commands.append((f"{prog} eval --run {run}", "bpb and tasks beside every baseline"))
    width = max(len(c) for c, _ in commands)
    lines += [f"  {c.ljust(width)}   # {why}" for c, why in commands]
    lines.append(f"  (also: tensorboard --logdir {shown(out)}; the loss plot: {run}/loss.png; README.md)")
    return "\n".join(lines)


@click.command()
@click.option(
    "--out",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path("data/demo"),
    show_default=True,
    help="Folder for raw/, corpus/, run/ and sft/.",
)
@click.option(
    "--extra-books",
    type=click.IntRange(min=0),
    default=60,
    show_default=True,
    help="Generated sample books added to the hand-written ones.",
)
@click.option(
    "--vocab-size",
    type=click.IntRange(min=300),
    default=2000,
    show_default=True,
    help="SentencePiece vocabulary of the corpus.",
)
@click.option(
    "--max-steps",
    type=click.IntRange(min=1),
    default=300,
    show_default=True,
    help="Pre-training steps of the tiny model (a rerun with more continues).",
)
@click.option("--prompt", default="Era uma vez", show_default=True, help="Prompt of the generated sample.")
@click.option(
    "--sft-steps",
    type=click.IntRange(min=0),
    default=150,
    show_default=True,
    help="Instruction-tuning (SFT) steps before the chat reply; 0: no SFT, no chat.",
)
def demo(out: Path, extra_books: int, vocab_size: int, max_steps: int, prompt: str, sft_steps: int) -> None:
    """Start here: the whole path offline, in a few minutes on a CPU.

    Serves a local Gutenberg-layout mirror of sample books, runs the corpus-and-train flow on it
    (download, corpus, pre-training), generates a sample, then instruction-tunes the model (SFT) on
    questions made from the corpus, scores held-out questions before and after, and shows one chat
    reply. The same flow runs against gutenberg.org with `ptgpt run`. Rerunning resumes: stored books,
    cleaned books and checkpoints are reused.
    """
    started = time.monotonic()
    quiet_prefect()
    from fakegutenberg.books import sample_books, sample_catalog_csv
    from fakegutenberg.mirror import GutenbergMirror, mirror_books_from_samples
    from pipelines.flows import corpus_and_train_flow
    from training.engine import SamplingConfig, sample_texts
    from training.runs import load_run

    out = out.resolve()
    samples = sample_books(extra=extra_books)
    with GutenbergMirror(mirror_books_from_samples(samples), sample_catalog_csv(samples)) as mirror:
        click.echo(f"local Gutenberg mirror at {mirror.url} with {len(samples)} sample books", err=True)
        # Our own mirror: no rate limit needed; robots, retries and checks work as for the real site.
        state = corpus_and_train_flow(
            source=mirror.url,
            out=str(out / "corpus"),
            raw=str(out / "raw"),
            run=str(out / "run"),
            vocab_size=vocab_size,
            rate=0,
            max_steps=max_steps,
            overrides=DEMO_TRAINING,
            return_state=True,
        )
    if not state.is_completed():
        raise click.ClickException(f"corpus-and-train ended {state.type.value}: {state.message}")

    run = load_run(out / "run", "cpu")
    [text] = sample_texts(run.model, run.tokenizer, [prompt], SamplingConfig(60, 0.8, top_k=50, seed=1234))
    sample = (prompt, run.checkpoint.name, " ".join(text.split()))
    chat = None
    if sft_steps:  # after pre-training: instruction tuning on the corpus's own questions, then a chat
        from ptgpt.cli.chat import demo_chat

        chat = demo_chat(out / "run", out / "sft", sft_steps)
    click.echo(final_screen(out, time.monotonic() - started, sample, chat))
