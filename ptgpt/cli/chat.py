"""After pre-training: `ptgpt instructions`, `sft`, `chat` and `classify` (`serve-model`: serve_model.py).

The corpus-side sets (corpus/instructions.py) and the model side (training/chat.py, sft.py,
classify.py) never import each other; these commands pass data between them.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from training.config import SFTConfig  # no torch: the sft defaults

RUN_DIR = click.Path(exists=True, file_okay=False, path_type=Path)


def _corpus_of(base: Path) -> Path:
    """The corpus a base run was trained on (recorded in its checkpoint)."""
    from training.runs import recorded_corpus

    return recorded_corpus(base)


def _is_text(s: str) -> bool:
    """False for a str with lone surrogates: bytes that were not UTF-8, escaped by Python."""
    try:
        s.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _sampling_options(f):
    f = click.option("--seed", type=int, default=None, help="Sampling seed (repeatable replies).")(f)
    f = click.option(
        "--max-new-tokens",
        type=click.IntRange(min=1),
        default=200,
        show_default=True,
        help="Longest reply in tokens (within the model's context).",
    )(f)
    f = click.option(
        "--top-p",
        type=click.FloatRange(0, 1, min_open=True),
        default=None,
        help="Nucleus sampling: the smallest set of tokens with this probability (default: off).",
    )(f)
    f = click.option(
        "--top-k",
        type=click.IntRange(min=1),
        default=50,
        show_default=True,
        help="Sample among the k likeliest.",
    )(f)
    f = click.option(
        "--temperature", type=click.FloatRange(min=0), default=0.8, show_default=True, help="0: greedy."
    )(f)
    return f


# -----------------------------------------------------------------------------------------------
# instructions and sft


@click.command()
@click.option("--corpus", "corpus_dir", required=True, type=RUN_DIR, help="A built corpus folder.")
@click.option(
    "--out",
    "out_dir",
    required=True,
    type=click.Path(file_okay=False, path_type=Path),
    help="Folder to write.",
)
@click.option(
    "--seed", type=int, default=0, show_default=True, help="Seed of the items and of which are held out."
)
@click.option(
    "--force", is_flag=True, help="Replace an instruction set in OUT, or write into a corpus folder."
)
def instructions(corpus_dir: Path, out_dir: Path, seed: int, force: bool) -> None:
    """Write the built-in Portuguese instruction set of a corpus: OUT/train.jsonl, OUT/heldout.jsonl."""
    from corpus.instructions import InstructionConfig, check_instructions_out, write_instructions

    check_instructions_out(out_dir, force)
    counts = write_instructions(corpus_dir, out_dir, InstructionConfig(seed=seed))
    click.echo(json.dumps(counts, ensure_ascii=False))


def heldout_report(base: Path, run_dir: Path, heldout: Path, limit: int) -> dict:
    """training.heldout's report, judged by the corpus's rules for its own items."""
    from corpus.instructions import names_author, score_reply
    from training.heldout import heldout_report as report

    return report(base, run_dir, heldout, limit, score_reply, names_author)


def format_report(report: dict) -> str:
    from training.heldout import format_report as format_heldout

    return format_heldout(report)


def demo_chat(base: Path, run_dir: Path, max_steps: int, score_items: int = 60) -> dict:
    """The end of `ptgpt demo`: SFT on the built-in instructions, then the held-out scores of the base and
    the tuned model and one sampled reply to a held-out question, with the answer that item expects.

    Returns {"report": heldout_report's dict, "question", "reply", "expected", "right"}; the demo prints it."""
    from corpus.instructions import InstructionConfig, score_reply, write_instructions
    from training.heldout import demo_exchange, read_items
    from training.sft import sft as run_sft

    folder = run_dir / "instructions"
    if not (folder / "train.jsonl").is_file():
        write_instructions(_corpus_of(base), folder, InstructionConfig())
    click.echo(f"instruction tuning (SFT) on {folder / 'train.jsonl'} for {max_steps} steps", err=True)
    config = SFTConfig(
        base=str(base),
        data=str(folder / "train.jsonl"),
        run_dir=str(run_dir),
        val_data=str(folder / "heldout.jsonl"),
        max_steps=max_steps,
        lr=2e-3,
        eval_every=max_steps,
        checkpoint_every=max_steps,
    )
    run_sft(config)
    click.echo(f"scoring up to {score_items} held-out questions with the base and the tuned model", err=True)
    report = heldout_report(base, run_dir, folder / "heldout.jsonl", score_items)
    question, reply = demo_exchange(run_dir, folder / "heldout.jsonl")
    item = next(i for i in read_items(folder / "heldout.jsonl") if i["prompt"] == question)
    text = " ".join(reply.text.split())
    return {
        "report": report,
        "question": question,
        "reply": text,
        "expected": item["response"],
        "right": bool(score_reply(item, reply.text)),
    }


# -----------------------------------------------------------------------------------------------
# chat


@click.command()
@click.option("--run", "run_dir", required=True, type=RUN_DIR, help="An SFT run (or a chat checkpoint).")
@click.option("--prompt", default=None, help="Answer this one message and exit (no REPL).")
@click.option("--system", default=None, help="A system message placed before the conversation.")
@_sampling_options
def chat(
    run_dir: Path,
    prompt: str | None,
    system: str | None,
    temperature: float,
    top_k: int,
    top_p: float | None,
    max_new_tokens: int,
    seed: int | None,
) -> None:
    """Talk to a tuned model in the terminal; replies stream as they are sampled.

    Commands: /reset forgets the conversation, /quit (or Ctrl-D) leaves. When the conversation no
    longer fits in the model's context, the oldest turns are dropped (and you are told).
    """
    from common.errors import UserError
    from training.chat import Reply, SamplingConfig, load_chat_session

    sampling = SamplingConfig(max_new_tokens, temperature, top_k, top_p, seed).validated()
    for name, text in (("--prompt", prompt), ("--system", system)):
        if text is not None and not _is_text(text):
            raise UserError(f"{name} is not UTF-8 text")
    start = [{"role": "system", "content": system}] if system else []
    session = load_chat_session(run_dir)
    history = list(start)

    def answer(message: str) -> None:
        """One reply streamed to stdout; a message that cannot be answered raises ValueError."""
        nonlocal history
        history.append({"role": "user", "content": message})
        try:
            prompt_ids, dropped = session.chat_prompt(history, min(max_new_tokens, session.context // 2))
        except ValueError:
            history.pop()
            raise
        if dropped:
            history = history[:1] + history[1 + dropped :] if start else history[dropped:]
            notice = f"[{dropped} oldest message(s) dropped to fit the {session.context}-token context]"
            click.echo(notice, err=True)
        pieces = []
        try:
            for piece in session.stream(prompt_ids, sampling):
                if not isinstance(piece, Reply):
                    pieces.append(piece)
                    click.echo(piece, nl=False)
                    sys.stdout.flush()
        except KeyboardInterrupt:  # Ctrl-C stops this reply, not the session
            click.echo(" [interrupted]", nl=False)
        history.append({"role": "assistant", "content": "".join(pieces)})
        click.echo()

    if prompt is not None:
        try:
            answer(prompt)
        except ValueError as e:
            raise UserError(f"--prompt: {e}") from None
        return
    # Bytes that are not UTF-8 arrive as lone surrogates instead of ending the REPL with a decode error.
    if hasattr(sys.stdin, "reconfigure"):
        sys.stdin.reconfigure(errors="surrogateescape")
    click.echo(f"chatting with {run_dir} ({session.context}-token context); /reset, /quit", err=True)
    while True:
        try:
            line = input("> ")
        except (EOFError, KeyboardInterrupt):
            click.echo()
            return
        except UnicodeDecodeError:
            click.echo("[that line is not UTF-8 text: skipped]", err=True)
            continue
        if line.strip() in ("/quit", "/exit"):
            return
        if line.strip() == "/reset":
            history = list(start)
            click.echo("[conversation reset]", err=True)
            continue
        if not _is_text(line):
            click.echo("[that line is not UTF-8 text: skipped]", err=True)
        elif line.strip():
            try:
                answer(line)
            except ValueError as e:  # this one message cannot be answered: say so, keep chatting
                click.echo(f"[{e}]", err=True)


# -----------------------------------------------------------------------------------------------
# classify
