"""After pre-training: `ptgpt instructions`, `sft`, `chat`, `serve-model` and `classify`.

The corpus-side sets (corpus/instructions.py) and the model side (training/chat.py, sft.py,
serve.py, classify.py) never import each other; these commands pass data between them.
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
    from common.errors import UserError
    from training.checkpoint import read_checkpoint_config
    from training.sft import resolve_checkpoint

    corpus = read_checkpoint_config(resolve_checkpoint(base)).get("corpus")
    if not corpus or not Path(corpus).is_dir():
        raise UserError(f"{base} records no corpus folder that exists here: pass --corpus")
    return Path(corpus)


def _sampling_options(f):
    f = click.option("--seed", type=int, default=None, help="Sampling seed (repeatable replies).")(f)
    f = click.option("--max-new-tokens", type=click.IntRange(min=1), default=200, show_default=True)(f)
    f = click.option("--top-p", type=click.FloatRange(0, 1, min_open=True), default=None)(f)
    f = click.option("--top-k", type=click.IntRange(min=1), default=50, show_default=True)(f)
    f = click.option(
        "--temperature", type=click.FloatRange(min=0), default=0.8, show_default=True, help="0: greedy."
    )(f)
    return f


# -----------------------------------------------------------------------------------------------
# instructions and sft


@click.command()
@click.option("--corpus", "corpus_dir", required=True, type=RUN_DIR, help="A built corpus folder.")
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False, path_type=Path))
@click.option("--seed", type=int, default=0, show_default=True)
@click.option(
    "--force", is_flag=True, help="Replace an instruction set in OUT, or write into a corpus folder."
)
def instructions(corpus_dir: Path, out_dir: Path, seed: int, force: bool) -> None:
    """Write the built-in Portuguese instruction set of a corpus: OUT/train.jsonl, OUT/heldout.jsonl."""
    from corpus.instructions import InstructionConfig, check_instructions_out, write_instructions

    check_instructions_out(out_dir, force)
    counts = write_instructions(corpus_dir, out_dir, InstructionConfig(seed=seed))
    click.echo(json.dumps(counts, ensure_ascii=False))


def score_heldout(model, tok, items: list[dict], max_new_tokens: int = 32) -> dict:
    """Greedy replies to held-out items, scored by corpus.instructions.score_reply: accuracy per kind."""
    from corpus.instructions import names_author, score_reply
    from training.sft import greedy_reply

    right: dict[str, list[int]] = {}
    excerpt_author: list[int] = []  # title items whose reply names the right author
    for item in items:
        reply = greedy_reply(model, tok, item["prompt"], max_new_tokens)
        right.setdefault(item["kind"], []).append(int(score_reply(item, reply)))
        if item["kind"] == "title" and item.get("author"):
            excerpt_author.append(int(names_author(item["author"], reply)))
    per_kind = {k: {"n": len(v), "accuracy": sum(v) / len(v)} for k, v in sorted(right.items())}
    n = sum(len(v) for v in right.values())
    report = {"n": n, "accuracy": sum(sum(v) for v in right.values()) / max(n, 1), "per_kind": per_kind}
    if excerpt_author:
        report["title_items_author_named"] = sum(excerpt_author) / len(excerpt_author)
    return report


def _pick_items(items: list[dict], limit: int) -> list[dict]:
    """Up to `limit` items with every kind represented in proportion (deterministic)."""
    if len(items) <= limit:
        return items
    step = len(items) / limit
    return [items[int(i * step)] for i in range(limit)]


@click.command()
@click.option("--base", required=True, type=RUN_DIR, help="Pre-trained run (or checkpoint) folder.")
@click.option(
    "--data",
    required=True,
    help="JSONL of {prompt, response} or {messages} rows, or `builtin` for the corpus's own instruction set.",
)
@click.option("--run", "run_dir", required=True, type=click.Path(file_okay=False, path_type=Path))
@click.option("--val-data", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None)
@click.option("--corpus", "corpus_dir", type=RUN_DIR, default=None, help="For builtin: the corpus.")
@click.option("--max-steps", type=click.IntRange(min=1), default=SFTConfig.max_steps, show_default=True)
@click.option("--batch-size", type=click.IntRange(min=1), default=SFTConfig.batch_size, show_default=True)
@click.option("--lr", type=click.FloatRange(min=0, min_open=True), default=SFTConfig.lr, show_default=True)
@click.option("--warmup-steps", type=click.IntRange(min=0), default=SFTConfig.warmup_steps, show_default=True)
@click.option(
    "--checkpoint-every", type=click.IntRange(min=1), default=SFTConfig.checkpoint_every, show_default=True
)
@click.option("--eval-every", type=click.IntRange(min=0), default=SFTConfig.eval_every, show_default=True)
@click.option("--log-every", type=click.IntRange(min=1), default=SFTConfig.log_every, show_default=True)
@click.option("--device", default=SFTConfig.device, show_default=True)
@click.option("--threads", type=click.IntRange(min=1), default=None)
@click.option(
    "--score-items",
    type=click.IntRange(min=0),
    default=200,
    show_default=True,
    help="builtin: held-out items answered by the base and the tuned model (0: skip).",
)
@click.option("--quiet", is_flag=True, help="No progress bar.")
def sft(
    base: Path,
    data: str,
    run_dir: Path,
    val_data: Path | None,
    corpus_dir: Path | None,
    max_steps: int,
    batch_size: int,
    lr: float,
    warmup_steps: int,
    checkpoint_every: int,
    eval_every: int,
    log_every: int,
    device: str,
    threads: int | None,
    score_items: int,
    quiet: bool,
) -> None:
    """Instruction fine-tuning: loss on the assistant's tokens only; rerun to resume.

    With `--data builtin` the instruction set is made from the base run's corpus into
    RUN/instructions/, trained on, and held-out items are answered by the base and the tuned model.
    """
    from training.sft import sft as run_sft

    heldout = None
    if data == "builtin":
        from corpus.instructions import InstructionConfig, write_instructions

        folder = run_dir / "instructions"
        if not (folder / "train.jsonl").is_file():  # made once: a resumed run trains on the same rows
            counts = write_instructions(corpus_dir or _corpus_of(base), folder, InstructionConfig())
            click.echo(f"built-in instructions in {folder}: {json.dumps(counts, ensure_ascii=False)}")
        data, heldout = str(folder / "train.jsonl"), folder / "heldout.jsonl"
        val_data = val_data or heldout
    config = SFTConfig(
        base=str(base),
        data=data,
        run_dir=str(run_dir),
        val_data=str(val_data) if val_data else None,
        max_steps=max_steps,
        batch_size=batch_size,
        lr=lr,
        warmup_steps=warmup_steps,
        checkpoint_every=checkpoint_every,
        eval_every=eval_every,
        log_every=log_every,
        device=device,
        threads=threads,
        progress=not quiet,
    )
    summary = run_sft(config)
    click.echo(
        f"sft: step {summary['step']}, loss {summary['final_loss']}, checkpoint {summary['checkpoint']}"
    )
    if heldout is not None and score_items > 0:
        report = heldout_report(base, run_dir, heldout, score_items)
        click.echo(format_report(report))


def heldout_report(base: Path, run_dir: Path, heldout: Path, limit: int) -> dict:
    """Accuracy of the base and the tuned model on held-out items; written to RUN/heldout_scores.json."""
    from common.files import write_json_atomic
    from training.chat import load_chat_session
    from training.sft import load_base

    items = _pick_items(
        [json.loads(line) for line in heldout.read_text(encoding="utf-8").splitlines()], limit
    )
    base_model, tok, _ = load_base(base, "cpu")
    tuned = load_chat_session(run_dir)
    report = {
        "items": len(items),
        "base": score_heldout(base_model, tok, items),
        "tuned": score_heldout(tuned.model, tok, items),
    }
    write_json_atomic(run_dir / "heldout_scores.json", report)
    return report


def format_report(report: dict) -> str:
    lines = [f"held-out instructions ({report['items']} items, greedy replies):"]
    for name in ("base", "tuned"):
        r = report[name]
        kinds = ", ".join(f"{k} {v['accuracy']:.1%} of {v['n']}" for k, v in r["per_kind"].items())
        if "title_items_author_named" in r:
            kinds += f"; title items naming the right author {r['title_items_author_named']:.1%}"
        lines.append(f"  {name:5s} {r['accuracy']:.1%}  ({kinds})")
    return "\n".join(lines)


def demo_chat(base: Path, run_dir: Path, max_steps: int, score_items: int = 60) -> None:
    """The end of `ptgpt demo`: SFT on the built-in instructions, the held-out scores, one exchange."""
    from corpus.instructions import InstructionConfig, write_instructions
    from training.chat import SamplingConfig, load_chat_session
    from training.sft import sft as run_sft

    folder = run_dir / "instructions"
    if not (folder / "train.jsonl").is_file():
        write_instructions(_corpus_of(base), folder, InstructionConfig())
    click.echo(f"\ninstruction tuning on {folder / 'train.jsonl'} for {max_steps} steps")
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
    click.echo(format_report(heldout_report(base, run_dir, folder / "heldout.jsonl", score_items)))
    heldout = [
        json.loads(line) for line in (folder / "heldout.jsonl").read_text(encoding="utf-8").splitlines()
    ]
    question = next((i["prompt"] for i in heldout if i["kind"] == "author"), heldout[0]["prompt"])
    session = load_chat_session(run_dir)
    reply = session.reply([{"role": "user", "content": question}], SamplingConfig(64, 0.7, top_k=40, seed=0))
    click.echo(f"\nchat with {run_dir} (a held-out question):\n> {question}\n{reply.text}")


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
    from training.chat import Reply, SamplingConfig, load_chat_session

    session = load_chat_session(run_dir)
    sampling = SamplingConfig(max_new_tokens, temperature, top_k, top_p, seed)
    start = [{"role": "system", "content": system}] if system else []
    history = list(start)

    def answer(message: str) -> None:
        nonlocal history
        history.append({"role": "user", "content": message})
        reserve = min(max_new_tokens, session.context // 2)
        try:
            prompt_ids, dropped = session.chat_prompt(history, reserve)
        except ValueError as e:  # this one message does not fit: say so, keep chatting
            history.pop()
            click.echo(f"[{e}]", err=True)
            return
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
        answer(prompt)
        return
    click.echo(f"chatting with {run_dir} ({session.context}-token context); /reset, /quit", err=True)
    while True:
        try:
            line = input("> ")
        except (EOFError, KeyboardInterrupt):
            click.echo()
            return
        if line.strip() in ("/quit", "/exit"):
            return
        if line.strip() == "/reset":
            history = list(start)
            click.echo("[conversation reset]", err=True)
            continue
        if line.strip():
            answer(line)


# -----------------------------------------------------------------------------------------------
# serve-model


@click.command("serve-model")
@click.option("--run", "run_dir", required=True, type=RUN_DIR, help="An SFT run (or a chat checkpoint).")
@click.option("--host", default="127.0.0.1", show_default=True, help="0.0.0.0 exposes it to the network.")
@click.option("--port", type=click.IntRange(min=0, max=65535), default=8000, show_default=True)
@click.option("--device", default="cpu", show_default=True)
def serve_model(run_dir: Path, host: str, port: int, device: str) -> None:
    """OpenAI-compatible HTTP API (/v1/chat/completions, /v1/completions) and a chat page at /."""
    from training.chat import load_chat_session
    from training.serve import ModelServer

    server = ModelServer(load_chat_session(run_dir, device=device), host, port)
    click.echo(f"serving {run_dir} at {server.url} (chat page at {server.url}/); Ctrl-C stops", err=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.close()


# -----------------------------------------------------------------------------------------------
# classify


@click.command()
@click.option("--base", required=True, type=RUN_DIR, help="Pre-trained run (or checkpoint) folder.")
@click.option(
    "--task",
    required=True,
    help="`authors` (author attribution on the base's corpus) or a CSV / JSONL file of text,label rows.",
)
@click.option("--run", "run_dir", required=True, type=click.Path(file_okay=False, path_type=Path))
@click.option("--corpus", "corpus_dir", type=RUN_DIR, default=None, help="For authors: the corpus.")
@click.option("--n-authors", type=click.IntRange(min=2), default=5, show_default=True)
@click.option(
    "--test-frac", type=click.FloatRange(0, 1, min_open=True, max_open=True), default=0.2, show_default=True
)
@click.option("--pool", type=click.Choice(["last", "mean"]), default="mean", show_default=True)
@click.option("--train-layers", type=click.Choice(["head", "last", "all"]), default="all", show_default=True)
@click.option("--epochs", type=click.IntRange(min=1), default=3, show_default=True)
@click.option("--batch-size", type=click.IntRange(min=1), default=16, show_default=True)
@click.option("--lr", type=click.FloatRange(min=0, min_open=True), default=5e-4, show_default=True)
@click.option("--max-len", type=click.IntRange(min=2), default=128, show_default=True)
@click.option("--threads", type=click.IntRange(min=1), default=None)
def classify(
    base: Path,
    task: str,
    run_dir: Path,
    corpus_dir: Path | None,
    n_authors: int,
    test_frac: float,
    pool: str,
    train_layers: str,
    epochs: int,
    batch_size: int,
    lr: float,
    max_len: int,
    threads: int | None,
) -> None:
    """Classification fine-tuning: a head on the final hidden state, scored against the majority class
    and a bag-of-words naive Bayes baseline. `authors`: train and test paragraphs of each author come
    from different books."""
    from training.classify import ClassifyConfig, read_labelled, split_rows, train_classifier

    config = ClassifyConfig(
        base=str(base),
        run_dir=str(run_dir),
        pool=pool,
        train_layers=train_layers,
        max_len=max_len,
        epochs=epochs,
        batch_size=batch_size,
        lr=lr,
        threads=threads,
    )
    if task == "authors":
        from corpus.instructions import AuthorTaskConfig, author_attribution, read_paragraphs

        paragraphs = read_paragraphs(corpus_dir or _corpus_of(base))
        train, test, described = author_attribution(paragraphs, AuthorTaskConfig(n_authors=n_authors))
        for name, books in described.items():
            click.echo(f"  {name}: train books {books['train_books']}, test books {books['test_books']}")
    else:
        train, test = split_rows(read_labelled(task), test_frac, config.seed)
    click.echo(f"{len(train)} training and {len(test)} test texts, {len({y for _, y in train})} classes")
    report = train_classifier(config, train, test)
    click.echo(format_classify_report(report))


def format_classify_report(report: dict) -> str:
    lines = [f"test set: {report['n_test']} texts, {len(report['labels'])} classes", "  accuracy  macro-F1"]
    for name in ("majority", "bag_of_words", "model"):
        r = report[name]
        lines.append(f"  {r['accuracy']:8.3f}  {r['macro_f1']:8.3f}  {name.replace('_', '-')}")
    return "\n".join(lines)
