"""`ptgpt demo`: the main job (corpus-and-train), offline, on the project's own sample books."""

from __future__ import annotations

import json
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


@click.command()
@click.option(
    "--out",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path("data/demo"),
    show_default=True,
    help="Folder for raw/, corpus/ and run/.",
)
@click.option(
    "--extra-books",
    type=click.IntRange(min=0),
    default=60,
    show_default=True,
    help="Generated sample books added to the hand-written ones.",
)
@click.option("--vocab-size", type=click.IntRange(min=300), default=2000, show_default=True)
@click.option("--max-steps", type=click.IntRange(min=1), default=300, show_default=True)
@click.option("--prompt", default="Era uma vez", show_default=True)
@click.option("--sft-steps", type=click.IntRange(min=0), default=150, show_default=True, help="0: no chat.")
def demo(out: Path, extra_books: int, vocab_size: int, max_steps: int, prompt: str, sft_steps: int) -> None:
    """Serve a local Gutenberg-layout mirror of sample books, run corpus-and-train on it, generate.

    The same flow runs against gutenberg.org with `ptgpt run`. Rerunning resumes: stored books,
    cleaned books and checkpoints are reused.
    """
    from fakegutenberg.books import sample_books, sample_catalog_csv
    from fakegutenberg.mirror import GutenbergMirror, mirror_books_from_samples
    from pipelines.flows import corpus_and_train_flow
    from training.engine import SamplingConfig, sample_texts
    from training.runs import load_run

    out = out.resolve()
    samples = sample_books(extra=extra_books)
    with GutenbergMirror(mirror_books_from_samples(samples), sample_catalog_csv(samples)) as mirror:
        click.echo(f"local Gutenberg mirror at {mirror.url} with {len(samples)} sample books")
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
    result = state.result()
    click.echo(json.dumps(result, indent=2, default=str))

    run = load_run(out / "run", "cpu")
    [text] = sample_texts(run.model, run.tokenizer, [prompt], SamplingConfig(60, 0.8, top_k=50, seed=1234))
    click.echo(f"\nsample from {run.checkpoint.name}:\n{text}")
    if sft_steps:  # after pre-training: instruction tuning on the corpus's own questions, then a chat
        from ptgpt.cli.chat import demo_chat

        demo_chat(out / "run", out / "sft", sft_steps)
