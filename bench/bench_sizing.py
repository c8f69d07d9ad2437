"""The sweep the sizing rule (training/sizing.py) is fitted on: time budgets x shapes of the ladder.

    .venv/bin/python bench/bench_sizing.py --budgets 5m,15m --shapes 3x128,4x192,5x256 --threads 1 --parallel 2
    .venv/bin/python bench/bench_sizing.py --report-only      # table, fit and plot from the runs already there

Each (budget, shape[, lr multiple]) is one `python -m training.train` run with that shape, a 256-token
window and the rule's batch and learning rate for it, its own time budget and one evaluation at the end
(the first --eval-batches validation batches, the same windows for every run). --parallel N runs N at
once with --threads each (on a 2-core machine: 2 runs of 1 thread, so a sweep takes half the time; the
rule's ratio is a property of the data and the model, not of the thread count). A run folder that already
holds a finished run is read, not rerun.

Printed: per budget, each shape's parameters (those a token passes through), tokens trained, tokens per
parameter and validation bpb beside the corpus's Kneser-Ney n-gram; then the loss law
bpb = E + A / N^alpha + B / D^beta fitted on all runs (least squares for E, A, B on a grid of
exponents), which is what training/sizing.LAW is set from. Writes
data/bench-sizing/sizing.json and sizing.png (bpb against parameters, one curve per budget, the n-gram's
line).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from training import sizing  # noqa: E402
from training.config import parse_duration  # noqa: E402
from training.data import CorpusInfo  # noqa: E402
from training.metrics import read_metrics  # noqa: E402

CORPUS = REPO / "data" / "bench-recipe" / "corpus-8k"
OUT = REPO / "data" / "bench-sizing"
SHAPES = {s.name: s for s in sizing.LADDER}
#: recipe options measured at the rule's shape, batch and learning rate (--variants): extra flags each
VARIANTS = {
    "base": {},
    "relu2": {"mlp": "relu2"},  # at 1.5x the hidden size: SwiGLU's parameters (command() scales it)
    "qk-norm": {"qk-norm": "true"},
    "muon": {"optimizer": "muon"},
    "all3": {"mlp": "relu2", "qk-norm": "true", "optimizer": "muon"},
}


def run_dir(out: Path, budget: float, shape: str, lr_mult: float, variant: str = "base") -> Path:
    name = f"{budget / 60:g}m-{shape}" + ("" if lr_mult == 1 else f"-lr{lr_mult:g}")
    return out / (name if variant == "base" else f"{name}-{variant}")


def command(
    corpus: Path, run: Path, budget: float, shape: sizing.Shape, lr: float, args, variant: str = "base"
) -> list[str]:
    """The run the rule would make of this shape, at a fixed shape instead of a probed one."""
    shape_flags = {k.replace("_", "-"): v for k, v in shape.overrides().items()}
    if VARIANTS[variant].get("mlp") == "relu2":
        shape_flags["mlp-hidden"] = shape.mlp_hidden * 3 // 2
    flags = {
        "corpus": corpus,
        "run": run,
        "max-steps": "none",
        "time-budget": f"{budget:g}s",
        "block-size": 256,
        "max-seq-len": 256,
        "batch-size": sizing.MICRO_BATCH["cpu"],
        "tokens-per-step": args.tokens_per_step,
        "lr": lr,
        "warmup-steps": args.warmup,
        "eval-every": 1_000_000,  # only the evaluation at the end
        "eval-batches": args.eval_batches,
        "checkpoint-every": 1_000_000,
        "keep-last": 1,
        "threads": args.threads,
        "samples": "false",
        "eval-tasks": "false",
        "tensorboard": "false",
        "progress": "false",
        "plot": "false",
        **shape_flags,
        **VARIANTS[variant],
    }
    argv = [sys.executable, "-m", "training.train"]
    for k, v in flags.items():
        argv += [f"--{k}", str(v)]
    return argv


def finished(run: Path) -> dict | None:
    """The run's figures if it evaluated at its end."""
    records = [r for r in read_metrics(run) if "val_bpb" in r]
    if not records or not (run / "config.json").is_file():
        return None
    meta = json.loads((run / "config.json").read_text())
    last = records[-1]
    return {
        "val_bpb": last["val_bpb"],
        "step": last["step"],
        "tokens": last.get("tokens_seen", last["step"] * meta["tokens_per_step"]),
        "train_seconds": last.get("train_seconds"),
    }


def sweep(args, corpus: Path, out: Path) -> None:
    jobs = []
    for budget in args.budgets:
        for name in args.shapes:
            for mult in args.lr_mults:
                for variant in args.variants:
                    run = run_dir(out, budget, name, mult, variant)
                    if finished(run) is None:
                        lr = sizing.peak_lr(SHAPES[name].n_embd) * mult
                        argv = command(corpus, run, budget, SHAPES[name], lr, args, variant)
                        jobs.append((run, argv))
    running: list[tuple[Path, subprocess.Popen, float]] = []
    while jobs or running:
        while jobs and len(running) < args.parallel:
            run, argv = jobs.pop(0)
            run.mkdir(parents=True, exist_ok=True)
            log = open(run / "bench.log", "w")  # noqa: SIM115 - closed with the process
            print(f"start {run.name}", flush=True)
            running.append((run, subprocess.Popen(argv, cwd=REPO, stdout=log, stderr=log), time.time()))
        time.sleep(2)
        for item in list(running):
            run, proc, started = item
            if proc.poll() is not None:
                running.remove(item)
                status = "done" if proc.returncode == 0 else f"FAILED ({proc.returncode}, see bench.log)"
                print(f"{status} {run.name} in {time.time() - started:.0f} s", flush=True)


def fit_law(rows: list[dict]) -> tuple[sizing.LossLaw, float] | None:
    """Least squares for E, A, B on a grid of exponents (0.1-0.6): the law with the smallest residual."""
    import numpy as np

    if len(rows) < 4:
        return None
    n = np.array([r["params"] for r in rows], dtype=float)
    d = np.array([r["tokens"] for r in rows], dtype=float)
    bpb = np.array([r["val_bpb"] for r in rows])
    best = None
    grid = [x / 20 for x in range(2, 13)]
    for alpha in grid:
        for beta in grid:
            design = np.stack([np.ones_like(n), n**-alpha, d**-beta], axis=1)
            (e, a, b), *_ = np.linalg.lstsq(design, bpb, rcond=None)
            if e <= 0 or a <= 0 or b <= 0:  # an irreducible loss below zero bits is no law
                continue
            rms = float(np.sqrt(np.mean((design @ [e, a, b] - bpb) ** 2)))
            if best is None or rms < best[1]:
                best = (sizing.LossLaw(float(e), float(a), alpha, float(b), beta), rms)
    return best


def report(args, corpus: Path, out: Path) -> None:
    from training.eval_tasks import baseline_figures

    info = CorpusInfo.from_dir(corpus)
    ngram = baseline_figures(corpus, 256)
    rows = []
    for budget in args.budgets:
        for name in args.shapes:
            for mult in args.lr_mults:
                for variant in args.variants:
                    result = finished(run_dir(out, budget, name, mult, variant))
                    if result is None:
                        continue
                    params = sizing.matmul_params(SHAPES[name], info.vocab_size)
                    row = {"budget_s": budget, "shape": name, "lr_mult": mult, "variant": variant}
                    row.update(params=params, **result, tokens_per_param=result["tokens"] / params)
                    rows.append(row)
    base = [r for r in rows if r["variant"] == "base"]
    fitted = fit_law([r for r in base if r["lr_mult"] == 1])
    print(
        f"\nn-gram ({ngram.get('ngram_order', 0):.0f}-gram) val bpb {ngram.get('ngram_val_bpb', float('nan')):.4f}"
    )
    print(
        f"{'budget':>7} {'shape':>7} {'lr x':>5} {'variant':>8} {'params':>8} {'tokens':>8} {'tok/par':>7} "
        f"{'steps':>6} {'val bpb':>8} {'vs base':>8}"
    )
    for r in rows:
        same = [
            b
            for b in base
            if (b["budget_s"], b["shape"], b["lr_mult"]) == (r["budget_s"], r["shape"], r["lr_mult"])
        ]
        delta = f"{r['val_bpb'] - same[0]['val_bpb']:+8.4f}" if same and r["variant"] != "base" else ""
        print(
            f"{r['budget_s'] / 60:6g}m {r['shape']:>7} {r['lr_mult']:5g} {r['variant']:>8} "
            f"{r['params'] / 1e6:7.2f}M {r['tokens'] / 1e6:7.2f}M {r['tokens_per_param']:7.2f} {r['step']:6d} "
            f"{r['val_bpb']:8.4f} {delta}"
        )
    law = None
    if fitted is not None:
        law, rms = fitted
        print(
            f"fitted: bpb = {law.E:.3f} + {law.A:.2f} / N^{law.alpha:g} + {law.B:.2f} / D^{law.beta:g} "
            f"(rms {rms:.4f} bpb over {len(rows)} runs); training/sizing.LAW is {sizing.LAW}"
        )
    out.mkdir(parents=True, exist_ok=True)
    law_dict = None if law is None else {**law.__dict__, "rms": fitted[1]}
    (out / "sizing.json").write_text(json.dumps({"runs": rows, "law": law_dict, "ngram": ngram}, indent=1))
    plot(rows, ngram, out / "sizing.png")


def plot(rows: list[dict], ngram: dict, path: Path) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for budget in sorted({r["budget_s"] for r in rows}):
        pts = sorted(
            (r["params"], r["val_bpb"])
            for r in rows
            if r["budget_s"] == budget and r["lr_mult"] == 1 and r["variant"] == "base"
        )
        if pts:
            ax.plot([p / 1e6 for p, _ in pts], [b for _, b in pts], "o-", label=f"{budget / 60:g} min")
    if "ngram_val_bpb" in ngram:
        ax.axhline(ngram["ngram_val_bpb"], color="k", ls="--", label=f"{ngram['ngram_order']:.0f}-gram KN")
    ax.set_xscale("log")
    ax.set_xlabel("parameters a token passes through (M)")
    ax.set_ylabel("validation bits per byte")
    ax.set_title("ptgpt: the model a time budget buys (2-core CPU)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    print(f"wrote {path}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--corpus", type=Path, default=CORPUS)
    p.add_argument("--out", type=Path, default=OUT)
    p.add_argument("--budgets", default="5m,15m", help="comma-separated durations")
    p.add_argument("--shapes", default="3x128,4x192,5x256", help=f"of {', '.join(SHAPES)}")
    p.add_argument("--lr-mults", default="1", help="multiples of the rule's learning rate")
    p.add_argument("--variants", default="base", help=f"comma-separated, of {', '.join(VARIANTS)}")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--parallel", type=int, default=2)
    p.add_argument("--tokens-per-step", type=int, default=4096)
    p.add_argument("--warmup", type=int, default=50)
    p.add_argument("--eval-batches", type=int, default=50)
    p.add_argument("--report-only", action="store_true")
    args = p.parse_args()
    args.budgets = [parse_duration(b) for b in args.budgets.split(",")]
    args.shapes = args.shapes.split(",")
    args.lr_mults = [float(m) for m in args.lr_mults.split(",")]
    args.variants = args.variants.split(",")
    if set(args.variants) - set(VARIANTS):
        sys.exit(
            f"unknown variants {sorted(set(args.variants) - set(VARIANTS))}: choose from {', '.join(VARIANTS)}"
        )
    unknown = [s for s in args.shapes if s not in SHAPES]
    if unknown:
        sys.exit(f"unknown shapes {unknown}: choose from {', '.join(SHAPES)}")
    if not args.report_only:
        sweep(args, args.corpus, args.out)
    report(args, args.corpus, args.out)


if __name__ == "__main__":
    main()
