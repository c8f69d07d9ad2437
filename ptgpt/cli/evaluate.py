"""`ptgpt eval` and `ptgpt compare`: the evaluation suite of training/eval_tasks.py on a run, and runs
side by side. torch is imported inside the command bodies, so `ptgpt --help` stays fast."""

from __future__ import annotations

import json
from pathlib import Path

import click

from common.errors import UserError


def _checkpoint_of(run_dir: Path | None, checkpoint_dir: Path | None) -> Path:
    from training.checkpoint import newest_valid_checkpoint

    if (run_dir is None) == (checkpoint_dir is None):
        raise UserError("give exactly one of --run or --checkpoint")
    if checkpoint_dir is not None:
        return checkpoint_dir
    try:
        return newest_valid_checkpoint(run_dir)
    except FileNotFoundError as e:
        raise UserError(str(e)) from None  # says where it looked and what to do


def _names(value: str, allowed: tuple[str, ...], what: str) -> tuple[str, ...]:
    names = tuple(n.strip() for n in value.split(",") if n.strip())
    unknown = [n for n in names if n not in allowed]
    if unknown or not names:
        raise UserError(
            f"unknown {what} {', '.join(unknown) or repr(value)}: choose from {','.join(allowed)}"
        )
    return names


def _fmt(x: float | None, digits: int = 4) -> str:
    return "-" if x is None else f"{x:.{digits}f}"


def format_report(result: dict, worst_best: int = 3) -> str:
    """The table `ptgpt eval` prints: one row per figure, with chance and a trivial baseline beside it."""
    rows = [("figure", "model", "chance", "baseline", "items")]
    for split, bpb in result.get("bpb", {}).items():
        base = result["bpb_baselines"][split]
        rows.append(
            (f"bpb {split}", _fmt(bpb), _fmt(base["uniform"]), f"{_fmt(base['unigram'])} (unigram)", "")
        )
    if "lastword_acc" in result:
        b = result["lastword_baselines"]
        rows.append(
            (
                "lastword acc",
                _fmt(result["lastword_acc"], 3),
                _fmt(b.get("chance"), 3),
                f"{_fmt(b.get('most_frequent_context_word'), 3)} (context word)",
                str(result["lastword_n"]),
            )
        )
    if "choice_acc" in result:
        b = result["choice_baselines"]
        rows.append(
            (
                "choice acc",
                _fmt(result["choice_acc"], 3),
                _fmt(b.get("chance"), 3),
                f"{_fmt(b.get('unigram'), 3)} (unigram)",
                str(result["choice_n"]),
            )
        )
    widths = [max(len(r[i]) for r in rows) for i in range(5)]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(r, widths, strict=True)).rstrip() for r in rows]
    for split, books in result.get("bpb_per_book", {}).items():
        ranked = list(books.items())
        if ranked:
            best = ", ".join(f"{b} {v:.3f}" for b, v in ranked[:worst_best])
            worst = ", ".join(f"{b} {v:.3f}" for b, v in ranked[::-1][:worst_best])
            lines.append(f"{split} books ({len(ranked)}): best {best}; worst {worst}")
    return "\n".join(lines)


@click.command("eval")
@click.option("--run", "run_dir", type=click.Path(file_okay=False, path_type=Path), help="Run folder.")
@click.option(
    "--checkpoint",
    "checkpoint_dir",
    type=click.Path(file_okay=False, path_type=Path),
    help="A checkpoint folder instead of the run's newest.",
)
@click.option(
    "--corpus", type=click.Path(file_okay=False, path_type=Path), help="Corpus folder [default: the run's]."
)
@click.option(
    "--tasks", default=None, help="Comma-separated: bpb,lastword,choice [default: all the corpus allows]."
)
@click.option(
    "--split", "splits", default=None, help="Splits for bpb [default: validation,test, those there are]."
)
@click.option("--quick", is_flag=True, help="The small item counts the trainer uses (64 items per task).")
@click.option(
    "--json",
    "json_path",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Also write the figures here.",
)
@click.option("--block-size", type=int, default=None, help="Tokens per bpb window [default: the run's].")
@click.option("--batch-size", type=int, default=8, show_default=True)
@click.option("--max-batches", type=int, default=None, help="bpb on only this many batches per split.")
@click.option(
    "--device", default="auto", show_default=True, help="auto (cuda, then mps, then cpu), cuda, mps or cpu."
)
@click.option("--threads", type=int, default=None, help="torch CPU threads [default: torch's].")
@click.option(
    "--lm-eval-tasks",
    type=click.Path(file_okay=False, path_type=Path),
    help="Write the lastword and choice items as lm-evaluation-harness tasks into this folder (no scoring).",
)
def eval_command(
    run_dir: Path | None,
    checkpoint_dir: Path | None,
    corpus: Path | None,
    tasks: str | None,
    splits: str | None,
    quick: bool,
    json_path: Path | None,
    block_size: int | None,
    batch_size: int,
    max_batches: int | None,
    device: str,
    threads: int | None,
    lm_eval_tasks: Path | None,
) -> None:
    """Bits per byte (validation, test, per book), last-word completion and next-sentence choice on the
    corpus's held-out test books; prints a table, and JSON with --json."""
    if lm_eval_tasks is not None:
        from export.lm_eval_tasks import write_tasks_for_eval

        checkpoint = _checkpoint_of(run_dir, checkpoint_dir) if run_dir or checkpoint_dir else None
        names = write_tasks_for_eval(lm_eval_tasks, corpus, checkpoint, quick)
        click.echo(
            f"wrote {', '.join(names)} to {lm_eval_tasks}: lm_eval --include_path {lm_eval_tasks} --tasks ptgpt"
        )
        return
    from training.eval_tasks import EVAL_SPLITS, QUICK, TASKS, SuiteConfig

    names = _names(tasks, TASKS, "task") if tasks else TASKS
    for name, value in (
        ("--batch-size", batch_size),
        ("--block-size", block_size),
        ("--max-batches", max_batches),
        ("--threads", threads),
    ):
        if value is not None and value < 1:
            raise UserError(f"{name} must be >= 1, got {value}")
    checkpoint = _checkpoint_of(run_dir, checkpoint_dir)

    from training.checkpoint import load_model, read_checkpoint_config
    from training.data import CorpusError, CorpusInfo, check_tokenizer
    from training.eval_tasks import run_suite
    from training.evaluate import load_tokenizer
    from training.precision import pick_device

    try:
        meta = read_checkpoint_config(checkpoint)
    except (FileNotFoundError, ValueError) as e:
        raise UserError(f"{checkpoint}: {e}") from None
    corpus = corpus or (Path(meta["corpus"]) if meta.get("corpus") else None)
    if corpus is None:
        raise UserError(f"{checkpoint} records no corpus: pass --corpus")
    try:
        info = CorpusInfo.from_dir(corpus)
        if meta.get("tokenizer_sha256"):
            check_tokenizer(corpus, meta["tokenizer_sha256"])
        present = tuple(info.manifest["splits"])
        split_names = (
            _names(splits, present, "split") if splits else tuple(s for s in EVAL_SPLITS if s in present)
        )
        if "test" not in present and not tasks:
            names = ("bpb",)  # the lastword and choice items come from the test split
        elif "test" not in present and {"lastword", "choice"} & set(names):
            raise UserError(f"{corpus} has no test split: the lastword and choice items come from it")
    except CorpusError as e:
        raise UserError(str(e)) from None
    block_size = block_size or meta.get("train", {}).get("block_size") or meta["model"]["max_seq_len"]
    if threads is not None:
        import torch

        torch.set_num_threads(threads)
    model = load_model(checkpoint, device=pick_device(device))
    try:
        result = run_suite(
            model,
            load_tokenizer(info.tokenizer_path),
            corpus,
            names,
            QUICK if quick else SuiteConfig(),
            split_names,
            block_size,
            batch_size,
            max_batches,
        )
    except CorpusError as e:
        raise UserError(str(e)) from None
    trainer_json = checkpoint / "trainer.json"
    tokens_seen = json.loads(trainer_json.read_text()).get("tokens_seen") if trainer_json.is_file() else None
    result = {"checkpoint": str(checkpoint), "step": meta.get("step"), "tokens_seen": tokens_seen, **result}
    click.echo(f"# {checkpoint} (step {meta.get('step')})")
    click.echo(format_report(result))
    if json_path is not None:
        from common.files import write_json_atomic

        write_json_atomic(json_path, result)


# -----------------------------------------------------------------------------
# compare


def _run_summary(run_dir: Path) -> tuple[dict, list[tuple[int, float]]]:
    """A run's last logged figures and its (tokens seen, val_bpb) curve from metrics.jsonl."""
    from training.metrics import read_metrics

    records = read_metrics(run_dir)
    if not records:
        raise UserError(f"{run_dir} has no metrics.jsonl records: not a training run, or not started")
    curve = [(r.get("tokens", r["step"]), r["val_bpb"]) for r in records if r.get("val_bpb") is not None]
    last = records[-1]
    evals = [r for r in records if r.get("val_bpb") is not None]
    summary = {
        "run": str(run_dir),
        "step": last.get("step"),
        "tokens": last.get("tokens"),
        "loss": last.get("loss"),
        "val_bpb": evals[-1]["val_bpb"] if evals else None,
        "best_val_bpb": min(r["val_bpb"] for r in evals) if evals else None,
        "lastword_acc": next((r["lastword_acc"] for r in reversed(records) if "lastword_acc" in r), None),
        "choice_acc": next((r["choice_acc"] for r in reversed(records) if "choice_acc" in r), None),
    }
    return summary, curve


@click.command("compare")
@click.argument("runs", nargs=-1, required=True, type=click.Path(file_okay=False, path_type=Path))
@click.option(
    "--plot",
    "plot_path",
    type=click.Path(dir_okay=False, path_type=Path),
    default=Path("compare.png"),
    show_default=True,
    help="PNG of validation bits per byte against tokens seen.",
)
def compare(runs: tuple[Path, ...], plot_path: Path) -> None:
    """Runs side by side: a table of their last figures and one plot of val bpb against tokens seen."""
    for run in runs:
        if not (run / "metrics.jsonl").is_file():
            raise UserError(f"{run}/metrics.jsonl not found: give run folders written by `ptgpt train`")
    summaries, curves = zip(*(_run_summary(r) for r in runs), strict=True)
    cols = ["run", "step", "tokens", "loss", "val_bpb", "best_val_bpb", "lastword_acc", "choice_acc"]
    cell = lambda v: "-" if v is None else (f"{v:.4f}" if isinstance(v, float) else str(v))  # noqa: E731
    rows = [cols] + [[cell(s[c]) for c in cols] for s in summaries]
    widths = [max(len(r[i]) for r in rows) for i in range(len(cols))]
    for r in rows:
        click.echo("  ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)).rstrip())

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    names = [run.name for run in runs]
    for run, curve in zip(runs, curves, strict=True):
        if curve:
            xs, ys = zip(*curve, strict=True)
            label = run.name if names.count(run.name) == 1 else str(run)  # two "run" folders: full paths
            ax.plot(xs, ys, marker="o", markersize=3, label=label)
    ax.set_xlabel("tokens seen")
    ax.set_ylabel("validation bits per byte")
    ax.set_xscale("log")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    plot_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = plot_path.with_name(f".{plot_path.name}.tmp.png")
    fig.savefig(tmp, dpi=120)
    plt.close(fig)
    tmp.replace(plot_path)
    click.echo(f"plot: {plot_path}")
