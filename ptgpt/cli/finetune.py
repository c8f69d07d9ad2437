"""`ptgpt sft` and `ptgpt classify`: fine-tuning a pre-trained run through the one training loop.

Options come from SFTConfig and ClassifyConfig (training/config.py), so each shows its default and
help, and both gain what pre-training has: --precision, --device, --time-budget, --nproc (torchrun).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from ptgpt.cli.chat import _corpus_of as corpus_of
from ptgpt.cli.options import config_options, pick
from ptgpt.cli.train import launch, nproc_option
from training.config import ClassifyConfig, SFTConfig

RUN_DIR = click.Path(exists=True, file_okay=False, path_type=Path)


@click.command()
@click.option("--base", required=True, type=RUN_DIR, help="Pre-trained run (or one of its checkpoints).")
@click.option(
    "--data",
    required=True,
    help="JSONL of {prompt, response} or {messages} rows, or `builtin` for the corpus's own instruction set.",
)
@click.option(
    "--run",
    "run_dir",
    required=True,
    type=click.Path(file_okay=False, path_type=Path),
    help="SFT run folder.",
)
@click.option(
    "--corpus", "corpus_dir", type=RUN_DIR, default=None, help="builtin: the corpus (default: the base's)."
)
@click.option(
    "--score-items",
    type=click.IntRange(min=0),
    default=200,
    show_default=True,
    help="builtin: held-out items answered by the base and the tuned model (0: skip).",
)
@nproc_option
@config_options(SFTConfig, skip={"base", "data", "run_dir"})
def sft(
    base: Path, data: str, run_dir: Path, corpus_dir: Path | None, score_items: int, nproc: int, **params
) -> None:
    """Instruction fine-tuning: loss on the assistant's tokens only; rerun to resume.

    With `--data builtin` the instruction set is made from the base run's corpus into
    RUN/instructions/, trained on, and held-out items are answered by the base and the tuned model.
    """
    heldout = None
    if data == "builtin":
        from corpus.instructions import InstructionConfig, write_instructions

        folder = run_dir / "instructions"
        if not (folder / "train.jsonl").is_file():  # made once: a resumed run trains on the same rows
            counts = write_instructions(corpus_dir or corpus_of(base), folder, InstructionConfig())
            click.echo(f"built-in instructions in {folder}: {json.dumps(counts, ensure_ascii=False)}")
        data, heldout = str(folder / "train.jsonl"), folder / "heldout.jsonl"
        params["val_data"] = params.get("val_data") or str(heldout)
    config = SFTConfig(base=str(base), data=data, run_dir=str(run_dir), **pick(SFTConfig, params))
    code = launch("training.sft", config, nproc)
    if code == 0 and heldout is not None and score_items > 0:
        from ptgpt.cli.chat import format_report, heldout_report

        click.echo(format_report(heldout_report(base, run_dir, heldout, score_items)))
    sys.exit(code)


@click.command()
@click.option("--base", required=True, type=RUN_DIR, help="Pre-trained run (or one of its checkpoints).")
@click.option(
    "--task",
    required=True,
    help="`authors` (author attribution on the base's corpus) or a CSV / JSONL file of text,label rows.",
)
@click.option(
    "--run",
    "run_dir",
    required=True,
    type=click.Path(file_okay=False, path_type=Path),
    help="Classifier run folder.",
)
@click.option(
    "--corpus", "corpus_dir", type=RUN_DIR, default=None, help="authors: the corpus (default: the base's)."
)
@click.option(
    "--n-authors", type=click.IntRange(min=2), default=5, show_default=True, help="authors: how many."
)
@click.option(
    "--test-frac",
    type=click.FloatRange(0, 1, min_open=True, max_open=True),
    default=0.2,
    show_default=True,
    help="FILE: share of each class held out for the test scores.",
)
@nproc_option
@config_options(ClassifyConfig, skip={"base", "run_dir", "data", "test_data"})
def classify(
    base: Path,
    task: str,
    run_dir: Path,
    corpus_dir: Path | None,
    n_authors: int,
    test_frac: float,
    nproc: int,
    **params,
) -> None:
    """Classification fine-tuning: a head on the final hidden state, scored against the majority class
    and a bag-of-words naive Bayes baseline. `authors`: train and test paragraphs of each author come
    from different books."""
    from training.classify import read_labelled, split_rows, write_run_data
    from training.runs import check_apart

    config = ClassifyConfig(base=str(base), run_dir=str(run_dir), **pick(ClassifyConfig, params))
    if task == "authors":
        from corpus.instructions import AuthorTaskConfig, author_attribution, read_paragraphs

        paragraphs = read_paragraphs(corpus_dir or corpus_of(base))
        train, test, described = author_attribution(paragraphs, AuthorTaskConfig(n_authors=n_authors))
        for name, books in described.items():
            click.echo(f"  {name}: train books {books['train_books']}, test books {books['test_books']}")
    else:
        train, test = split_rows(read_labelled(task), test_frac, config.seed)
    click.echo(f"{len(train)} training and {len(test)} test texts, {len({y for _, y in train})} classes")
    check_apart(run_dir, base)  # before RUN/data/ is written
    config.data, config.test_data = write_run_data(run_dir, train, test)
    code = launch("training.classify", config, nproc)
    if code == 0:
        click.echo(format_classify_report(json.loads((run_dir / "report.json").read_text())))
    sys.exit(code)


def format_classify_report(report: dict) -> str:
    lines = [f"test set: {report['n_test']} texts, {len(report['labels'])} classes", "  accuracy  macro-F1"]
    for name in ("majority", "bag_of_words", "model"):
        r = report[name]
        lines.append(f"  {r['accuracy']:8.3f}  {r['macro_f1']:8.3f}  {name.replace('_', '-')}")
    beats = [
        n.replace("_", "-")
        for n in ("majority", "bag_of_words")
        if report["model"]["macro_f1"] > report[n]["macro_f1"]
    ]
    loses = [n.replace("_", "-") for n in ("majority", "bag_of_words") if n.replace("_", "-") not in beats]
    lines.append(
        f"  the model beats: {', '.join(beats) or 'none'}; loses to or ties: {', '.join(loses) or 'none'}"
    )
    return "\n".join(lines)
