"""What a time budget buys, through the product path, and its report card.

    .venv/bin/python bench/bench_budget.py --budget 60m                 # train, evaluate, write the card
    .venv/bin/python bench/bench_budget.py --budget 60m --card-only     # the card from a finished run

1. `ptgpt train --corpus C --run R --time-budget B --max-steps none`: nothing else, so the sizing rule
   (training/sizing.py) picks shape, window, batch and learning rate after its probe, as for a user.
2. `ptgpt eval --run R --json R/eval.json`: bits per byte on validation and test, last-word and
   next-sentence choice on the test books, each beside its baselines (the corpus's Kneser-Ney n-gram,
   the overlap heuristic, the most frequent word, unigram, chance).
3. R/report_card.md and R/report_card.png: validation bpb against training wall-clock with the
   n-gram's line (and the minute the model crosses it, if it does), and each task against its baselines.

The corpus is the shared books at an 8k vocabulary (bench/bench_recipe.py builds and caches it).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from ptgpt.cli.evaluate import baseline_rows, format_report  # noqa: E402
from training.config import parse_duration  # noqa: E402
from training.metrics import read_metrics  # noqa: E402

CORPUS = REPO / "data" / "bench-recipe" / "corpus-8k"


def train_and_evaluate(corpus: Path, run: Path, budget: str, threads: int | None, extra: list[str]) -> None:
    ptgpt = Path(sys.executable).with_name("ptgpt")
    train = [ptgpt, "train", "--corpus", corpus, "--run", run, "--time-budget", budget, "--max-steps", "none"]
    if threads:
        train += ["--threads", str(threads)]
    subprocess.run([str(x) for x in train + extra], check=True, cwd=REPO)
    evaluate = [ptgpt, "eval", "--run", run, "--json", run / "eval.json"]
    if threads:
        evaluate += ["--threads", str(threads)]
    subprocess.run([str(x) for x in evaluate], check=True, cwd=REPO)


def crossing(curve: list[tuple[float, float]], line: float) -> float | None:
    """Training seconds at which validation bpb first goes below `line` (linear between evaluations)."""
    for (t0, b0), (t1, b1) in zip(curve, curve[1:], strict=False):
        if b0 >= line > b1:
            return t0 + (t1 - t0) * (b0 - line) / (b0 - b1)
    return curve[0][0] if curve and curve[0][1] < line else None


def report_card(run: Path) -> str:
    meta = json.loads((run / "config.json").read_text())
    result = json.loads((run / "eval.json").read_text())
    evals = [r for r in read_metrics(run) if "val_bpb" in r]
    curve = [(r["train_seconds"], r["val_bpb"]) for r in evals if "train_seconds" in r]
    ngram_val = next((r["ngram_val_bpb"] for r in evals if "ngram_val_bpb" in r), None)
    budget = meta["train"]["time_budget"]
    sizing = meta.get("sizing")
    last = evals[-1] if evals else {}
    lines = [
        f"# Report card: {run.name} ({budget / 60:g}-minute budget)",
        "",
        f"- model: {meta['n_params'] / 1e6:.2f}M parameters, {meta['model']['n_layer']} layers x "
        f"{meta['model']['n_embd']} wide, window {meta['block_size']}, {meta['tokens_per_step']:,} tokens/step, "
        f"lr {meta['train']['lr']:.2g}, {meta['device']} ({meta['precision']}), "
        f"{meta['train'].get('threads') or 'default'} threads",
    ]
    if sizing:
        lines.append(f"- chosen by the sizing rule: {sizing['choice']['reason']}")
        lines.append(f"- probe: {sizing['probe']['seconds']:.1f} s (not counted in the budget)")
    if last:
        lines.append(
            f"- trained {last.get('train_seconds', 0) / 60:.1f} min, {last['step']} steps, "
            f"{last.get('tokens', 0) / 1e6:.1f}M tokens; evaluation {last.get('eval_seconds', 0) / 60:.1f} min "
            "more (not counted)"
        )
    if ngram_val is not None and curve:
        t = crossing(curve, ngram_val)
        lines.append(
            f"- validation bpb crosses the n-gram's {ngram_val:.4f} at {t / 60:.1f} min of training"
            if t is not None
            else f"- validation bpb never crosses the n-gram's {ngram_val:.4f} (best {min(b for _, b in curve):.4f})"
        )
    lines += ["", "```text", format_report(result), "```", "", "![report card](report_card.png)", ""]
    plot(run, curve, ngram_val, result)
    return "\n".join(lines)


def plot(run: Path, curve, ngram_val: float | None, result: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in baseline_rows(result) if r[1] is not None]
    fig, axes = plt.subplots(1, 1 + len(rows), figsize=(4.2 * (1 + len(rows)), 4))
    ax = axes[0]
    ax.plot([t / 60 for t, _ in curve], [b for _, b in curve], "o-", label="model (validation)")
    if ngram_val is not None:
        ax.axhline(ngram_val, color="k", ls="--", label="n-gram KN (validation)")
    ax.set_xlabel("training minutes")
    ax.set_ylabel("bits per byte")
    ax.set_title("validation bpb")
    ax.legend()
    for ax, (figure, value, _, named, lower, _) in zip(axes[1:], rows, strict=True):
        labels = ["model"] + [k for k, _ in named]
        values = [value] + [x for _, x in named]
        colors = ["tab:blue"] + ["tab:gray"] * len(named)
        ax.bar(range(len(values)), values, color=colors)
        ax.set_xticks(range(len(values)), labels, rotation=30, ha="right", fontsize=8)
        ax.set_title(f"{figure} ({'lower' if lower else 'higher'} is better)", fontsize=9)
    fig.tight_layout()
    fig.savefig(run / "report_card.png", dpi=100)
    plt.close(fig)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--corpus", type=Path, default=CORPUS)
    p.add_argument("--budget", default="60m")
    p.add_argument("--run", type=Path, help="run folder [default: data/bench-budget/<budget>]")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--card-only", action="store_true")
    args, extra = p.parse_known_args()  # anything else goes to `ptgpt train` (an override to measure)
    parse_duration(args.budget)
    run = args.run or REPO / "data" / "bench-budget" / args.budget
    if not args.card_only:
        train_and_evaluate(args.corpus, run, args.budget, args.threads, extra)
    card = report_card(run)
    (run / "report_card.md").write_text(card)
    print(card)
    print(f"wrote {run / 'report_card.md'} and {run / 'report_card.png'}")


if __name__ == "__main__":
    main()
