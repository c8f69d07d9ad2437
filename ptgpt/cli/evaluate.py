"""`ptgpt eval` and `ptgpt compare`: the evaluation suite of training/eval_tasks.py on a run, and runs
side by side. torch is imported inside the command bodies, so `ptgpt --help` stays fast."""

from __future__ import annotations

import json
import os
from pathlib import Path

import click

from common.errors import UserError
from ptgpt.cli.options import checkpoint_of


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


EVAL_KIND = "ptgpt-eval"  # marks a file `eval --json` wrote, the only kind it overwrites


def baseline_rows(result: dict) -> list[tuple[str, float | None, str, list[tuple[str, float]], bool, str]]:
    """(figure, model value, items, [(baseline, value)], lower is better, note) for every figure of a
    result of run_suite; baselines without a value (not computable on this corpus) are left out."""
    order = result.get("ngram_order")
    ngram = f"{order}-gram KN" if order else "n-gram"
    rows = []
    for split, bpb in result.get("bpb", {}).items():
        b = result["bpb_baselines"][split]
        named = [("uniform", b.get("uniform")), ("unigram", b.get("unigram")), (ngram, b.get("ngram"))]
        rows.append((f"bpb {split}", bpb, "", named, True, ""))
    if "lastword_n" in result:
        b = result["lastword_baselines"]
        named = [
            ("chance", b.get("chance")),
            ("most frequent word", b.get("most_frequent_word")),
            ("context word", b.get("most_frequent_context_word")),
            (ngram, b.get("ngram")),
        ]
        rows.append(
            (
                "lastword acc",
                result["lastword_acc"],
                str(result["lastword_n"]),
                named,
                False,
                result.get("lastword_note", ""),
            )
        )
    if "choice_n" in result:
        b = result["choice_baselines"]
        common = [
            ("chance", b.get("chance")),
            ("word unigram", b.get("unigram")),
            ("overlap", b.get("overlap")),
        ]
        note = result.get("choice_note", "")
        rows.append(
            (
                "choice acc (PMI)",
                result["choice_acc"],
                str(result["choice_n"]),
                common + [(ngram, b.get("ngram"))],
                False,
                note,
            )
        )
        rows.append(
            (
                "choice acc (per byte)",
                result.get("choice_acc_per_byte"),
                str(result["choice_n"]),
                common + [(ngram, b.get("ngram_per_byte"))],
                False,
                note,
            )
        )
    return [
        (f, v, n, [(k, x) for k, x in named if x is not None], low, note)
        for f, v, n, named, low, note in rows
    ]


def verdicts(result: dict) -> dict:
    """Per figure, the baselines the model beats (strictly) and those it does not, for --json."""
    out = {}
    for figure, value, _, named, lower, _ in baseline_rows(result):
        if value is None:
            continue
        beats = [k for k, x in named if (value < x if lower else value > x)]
        out[figure] = {"beats": beats, "loses_to": [k for k, _ in named if k not in beats]}
    return out


def _fmt(x: float | None, digits: int = 4) -> str:
    return "-" if x is None else f"{x:.{digits}f}"


def format_report(result: dict, worst_best: int = 3) -> str:
    """The table `ptgpt eval` prints: each figure beside every baseline, split into those the model beats
    and those it loses to (a tie is not a win), then one sentence that says so."""
    rows = [("figure", "model", "items", "beats", "loses to")]
    notes, lost = [], []
    wins = total = 0
    for figure, value, items, named, lower, note in baseline_rows(result):
        digits = 4 if figure.startswith("bpb") else 3
        if value is None:
            rows.append((figure, "-", items, "", ""))
            notes.append(f"{figure}: {note}")
            continue
        beats = [(k, x) for k, x in named if (value < x if lower else value > x)]
        loses = [(k, x) for k, x in named if (k, x) not in beats]
        cells = [", ".join(f"{k} {_fmt(x, digits)}" for k, x in group) for group in (beats, loses)]
        rows.append((figure, _fmt(value, digits), items, cells[0], cells[1]))
        wins, total = wins + len(beats), total + len(named)
        if loses:
            lost.append(f"{', '.join(k for k, _ in loses)} on {figure}")
    widths = [max(len(r[i]) for r in rows) for i in range(5)]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(r, widths, strict=True)).rstrip() for r in rows]
    lines += notes
    if total:
        verdict = f"The model beats {wins} of {total} baselines"
        lines.append(verdict + (f"; it loses to {'; '.join(lost)}." if lost else ": all of them."))
    for split, books in result.get("bpb_per_book", {}).items():
        ranked = list(books.items())
        if ranked:
            best = ", ".join(f"{b} {v:.3f}" for b, v in ranked[:worst_best])
            worst = ", ".join(f"{b} {v:.3f}" for b, v in ranked[::-1][:worst_best])
            lines.append(f"{split} books ({len(ranked)}): best {best}; worst {worst}")
    return "\n".join(lines)


def _check_json_target(path: Path) -> None:
    """Refuse to overwrite anything but an earlier `eval --json` output (a run's config.json, say)."""
    if path.is_dir():
        raise UserError(f"--json {path} is a folder: give a file name, e.g. {path / 'eval.json'}")
    if path.exists():
        try:
            kind = json.loads(path.read_text()).get("kind")
        except (OSError, ValueError, AttributeError):
            kind = None
        if kind != EVAL_KIND:
            raise UserError(
                f"--json {path} exists and is not a `ptgpt eval` output: refusing to overwrite it; "
                "give another file name"
            )


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
@click.option("--batch-size", type=int, default=8, show_default=True, help="Windows per forward pass.")
@click.option("--max-batches", type=int, default=None, help="bpb on only this many batches per split.")
@click.option(
    "--device", default="auto", show_default=True, help="auto (cuda, then mps, then cpu), cuda, mps or cpu."
)
@click.option("--threads", type=int, default=None, help="torch CPU threads [default: torch's].")
@click.option(
    "--ngram-order",
    type=click.IntRange(2, 5),
    default=None,
    help="Order of the Kneser-Ney baseline [default: the best on validation].",
)
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
    ngram_order: int | None,
    lm_eval_tasks: Path | None,
) -> None:
    """Bits per byte (validation, test, per book), last-word completion and next-sentence choice on the
    corpus's held-out test books, each beside its baselines (uniform, unigram, a Kneser-Ney n-gram of the
    corpus, the overlap heuristic, the most frequent word); prints a table, and JSON with --json.
    With --lm-eval-tasks DIR, writes the items as lm-evaluation-harness tasks instead."""
    if lm_eval_tasks is not None:
        from export.lm_eval_tasks import write_tasks_for_eval

        checkpoint = checkpoint_of(run_dir, checkpoint_dir) if run_dir or checkpoint_dir else None
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
    if json_path is not None:
        _check_json_target(json_path)
    checkpoint = checkpoint_of(run_dir, checkpoint_dir)

    from training.checkpoint import read_checkpoint_config
    from training.data import CorpusError, CorpusInfo, check_tokenizer
    from training.eval_tasks import run_suite
    from training.precision import choose_precision, cuda_capability, pick_device
    from training.runs import load_run

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
    torch_device = pick_device(device)
    precision = meta.get("train", {}).get("precision", "auto")  # the run's own, not always "auto"
    try:
        precision = choose_precision(precision, torch_device.type, cuda_capability(torch_device))
    except UserError as e:
        raise UserError(f"the run trained in {precision}, which this device cannot: {e}") from None
    loaded = load_run(checkpoint, str(torch_device))
    from training.ngram import cached_fit

    if info.manifest["splits"].get("train", {}).get("shards") and cached_fit(corpus) is None:
        click.echo(
            f"fitting the n-gram baseline on {corpus}'s training split (once: cached in its cache/)", err=True
        )
    try:
        result = run_suite(
            loaded.model,
            loaded.tokenizer.sp,
            corpus,
            names,
            QUICK if quick else SuiteConfig(),
            split_names,
            block_size,
            batch_size,
            max_batches,
            precision,
            ngram_order,
        )
    except CorpusError as e:
        raise UserError(str(e)) from None
    trainer_json = checkpoint / "trainer.json"
    tokens_seen = json.loads(trainer_json.read_text()).get("tokens_seen") if trainer_json.is_file() else None
    result = {
        "kind": EVAL_KIND,
        "checkpoint": str(checkpoint),
        "step": meta.get("step"),
        "tokens_seen": tokens_seen,
        "precision": precision,
        **result,
        "verdicts": verdicts(result),
    }
    click.echo(f"# {checkpoint} (step {meta.get('step')}, {precision})")
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
    kind = _run_kind(run_dir)
    if not curve and kind != "pretrain":  # an SFT run: its validation loss is on assistant tokens, no bpb
        curve = [
            (r.get("tokens", r["step"]), r["val_loss"]) for r in records if r.get("val_loss") is not None
        ]
    summary = {
        "run": str(run_dir),
        "kind": kind,
        "step": last.get("step"),
        "tokens": last.get("tokens"),
        "loss": last.get("loss"),
        "val_bpb": evals[-1]["val_bpb"] if evals else None,
        "best_val_bpb": min(r["val_bpb"] for r in evals) if evals else None,
        "val_loss": next((r["val_loss"] for r in reversed(records) if r.get("val_loss") is not None), None),
        "lastword_acc": next((r["lastword_acc"] for r in reversed(records) if "lastword_acc" in r), None),
        "choice_acc": next((r["choice_acc"] for r in reversed(records) if "choice_acc" in r), None),
    }
    return summary, curve


def _run_kind(run_dir: Path) -> str:
    """The run kind in RUN/config.json: pretrain, sft or classify (none recorded: pretrain)."""
    try:
        return json.loads((run_dir / "config.json").read_text()).get("kind") or "pretrain"
    except (OSError, ValueError, AttributeError):
        return "pretrain"


def default_plot_path(runs: tuple[Path, ...]) -> Path:
    """compare.png next to the runs (their common parent folder), never wherever the shell happens to be."""
    parents = [str(run.resolve().parent) for run in runs]
    return Path(os.path.commonpath(parents)) / "compare.png"


# (figure in a run's summary, baseline key of baseline_figures, its name, lower is better)
RUN_BASELINES = (
    ("val_bpb", "ngram_val_bpb", "{order}-gram KN", True),
    ("lastword_acc", "ngram_lastword_acc", "{order}-gram KN", False),
    ("lastword_acc", "most_frequent_word_acc", "most frequent word", False),
    ("choice_acc", "overlap_choice_acc", "overlap", False),
    ("choice_acc", "ngram_choice_acc", "{order}-gram KN", False),
)


def _run_baselines(run_dir: Path) -> tuple[str | None, dict]:
    """The corpus a run trained on (from its config.json) and that corpus's baseline_figures ({} when the
    corpus is not there: the table is still shown, without baselines)."""
    from training.data import CorpusError
    from training.eval_tasks import baseline_figures

    config_path = run_dir / "config.json"
    try:
        config = json.loads(config_path.read_text()) if config_path.is_file() else {}
    except ValueError:
        config = {}
    corpus = config.get("corpus")
    if not corpus or not (Path(corpus) / "manifest.json").is_file():
        return corpus, {}
    block_size = (config.get("train") or {}).get("block_size") or 256
    try:
        return corpus, baseline_figures(corpus, block_size)
    except CorpusError:
        return corpus, {}


def run_verdict(summary: dict, baselines: dict) -> dict:
    """Which baselines a run's last figures beat and which they lose to (a tie is not a win)."""
    order = int(baselines.get("ngram_order", 0))
    beats, loses = [], []
    for figure, key, name, lower in RUN_BASELINES:
        value, base = summary.get(figure), baselines.get(key)
        if value is None or base is None:
            continue
        label = f"{name.format(order=order)} {figure} {base:.4f}"
        (beats if (value < base if lower else value > base) else loses).append(label)
    return {"beats": beats, "loses_to": loses}


@click.command("compare")
@click.argument("runs", nargs=-1, required=True, type=click.Path(file_okay=False, path_type=Path))
@click.option(
    "--plot",
    "plot_path",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="PNG of validation bits per byte (SFT runs: validation loss) against tokens seen "
    "(default: compare.png in the runs' common parent folder).",
)
@click.option(
    "--json",
    "json_path",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Also write the runs' figures, their corpora's baselines and the verdicts here.",
)
def compare(runs: tuple[Path, ...], plot_path: Path | None, json_path: Path | None) -> None:
    """Runs side by side: a table of their last figures, each run against its corpus's baselines (n-gram,
    overlap heuristic, most frequent word), and a plot of val bpb against tokens seen (SFT runs, which
    have no bpb, in a panel of their own: validation loss on assistant tokens)."""
    plot_path = plot_path if plot_path is not None else default_plot_path(runs)
    for run in runs:
        if not (run / "metrics.jsonl").is_file():
            raise UserError(f"{run}/metrics.jsonl not found: give run folders written by `ptgpt train`")
    if json_path is not None:
        _check_json_target(json_path)
    summaries, curves = zip(*(_run_summary(r) for r in runs), strict=True)
    cols = ["run", "step", "tokens", "loss", "val_bpb", "best_val_bpb", "val_loss", "lastword_acc"]
    cols += ["choice_acc", "kind"]
    cell = lambda v: "-" if v is None else (f"{v:.4f}" if isinstance(v, float) else str(v))  # noqa: E731
    rows = [cols] + [[cell(s[c]) for c in cols] for s in summaries]
    widths = [max(len(r[i]) for r in rows) for i in range(len(cols))]
    for r in rows:
        click.echo("  ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)).rstrip())

    corpora: dict[str, dict] = {}
    run_verdicts = {}
    for run, summary in zip(runs, summaries, strict=True):
        if summary["kind"] != "pretrain":
            click.echo(
                f"{run}: kind {summary['kind']} (its val_loss is on its own held-out data; no baselines)"
            )
            continue
        corpus, figures = _run_baselines(run)
        if corpus is None or not figures:
            click.echo(f"{run}: no baselines (its corpus {corpus or '(not recorded)'} is not there)")
            continue
        if corpus not in corpora:
            corpora[corpus] = figures
            listed = ", ".join(f"{k} {v:.4f}" for k, v in figures.items() if k != "ngram_order")
            click.echo(f"baselines of {corpus} ({int(figures['ngram_order'])}-gram, quick items): {listed}")
        run_verdicts[str(run)] = verdict = run_verdict(summary, figures)
        click.echo(
            f"{run}: beats {', '.join(verdict['beats']) or 'none'}; "
            f"loses to {', '.join(verdict['loses_to']) or 'none'}"
        )

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tuned = [s["kind"] != "pretrain" and not s["val_bpb"] for s in summaries]
    panels = [p for p in (False, True) if p in tuned]
    fig, axes = plt.subplots(1, len(panels), figsize=(7 * len(panels), 4.5), squeeze=False)
    names = [run.name for run in runs]
    for ax, panel in zip(axes[0], panels, strict=True):
        for run, curve, is_tuned in zip(runs, curves, tuned, strict=True):
            if curve and is_tuned == panel:
                xs, ys = zip(*curve, strict=True)
                label = run.name if names.count(run.name) == 1 else str(run)  # two "run" folders: full paths
                ax.plot(xs, ys, marker="o", markersize=3, label=label)
        if not panel:
            for corpus, figures in corpora.items():
                if "ngram_val_bpb" in figures:
                    label = f"{int(figures['ngram_order'])}-gram KN ({Path(corpus).name})"
                    ax.axhline(figures["ngram_val_bpb"], color="gray", linestyle="--", lw=1, label=label)
        ax.set_xlabel("tokens seen")
        ax.set_ylabel("validation loss on assistant tokens" if panel else "validation bits per byte")
        ax.set_title("instruction-tuned runs" if panel else "pre-training runs")
        ax.set_xscale("log")
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend()
    fig.tight_layout()
    plot_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = plot_path.with_name(f".{plot_path.name}.tmp.png")
    fig.savefig(tmp, dpi=120)
    plt.close(fig)
    tmp.replace(plot_path)
    click.echo(f"plot: {plot_path}")
    if json_path is not None:
        from common.files import write_json_atomic

        write_json_atomic(
            json_path,
            {"kind": EVAL_KIND, "runs": list(summaries), "baselines": corpora, "verdicts": run_verdicts},
        )
