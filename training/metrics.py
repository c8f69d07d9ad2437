"""Training logs: RUN/metrics.jsonl, TensorBoard events, a live progress bar and RUN/loss.png.

metrics.jsonl is the record of a run (one JSON object per line, `step` first); TensorBoard, the bar
and the plot are views of it. TensorBoard, tqdm and matplotlib are optional: when one is missing its
view is skipped with a one-line warning and training goes on.

On resume the log is rewound to the checkpoint's step (lines of later steps, written by a process that
died before its next checkpoint, are dropped; TensorBoard purges them too), so the file always describes
exactly the steps that the model weights went through.
"""

from __future__ import annotations

import json
import math
import sys
import warnings
from pathlib import Path

from common.files import atomic_write, write_text_atomic

METRICS_FILE = "metrics.jsonl"
PLOT_FILE = "loss.png"
TB_DIR = "tb"


def read_metrics(run_dir: str | Path) -> list[dict]:
    """Every record of RUN/metrics.jsonl (a torn last line, from a killed process, is skipped)."""
    path = Path(run_dir) / METRICS_FILE
    if not path.is_file():
        return []
    records = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return records


def rewind_metrics(run_dir: str | Path, step: int) -> None:
    """Keep only the records of steps <= step (atomically)."""
    path = Path(run_dir) / METRICS_FILE
    if not path.is_file():
        return
    kept = [r for r in read_metrics(run_dir) if r.get("step", 0) <= step]
    write_text_atomic(path, "".join(json.dumps(r) + "\n" for r in kept))


def _warn_once(what: str, error: Exception) -> None:
    warnings.warn(f"{what} unavailable ({error.__class__.__name__}: {error}); skipping it", stacklevel=3)


class MetricsLogger:
    """Appends records to metrics.jsonl and mirrors the scalars to TensorBoard. Rank 0 only."""

    def __init__(self, run_dir: str | Path, resume_step: int = 0, tensorboard: bool = True):
        self.run_dir = Path(run_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        rewind_metrics(self.run_dir, resume_step)
        self._file = open(self.run_dir / METRICS_FILE, "a", encoding="utf-8")  # noqa: SIM115 - closed in close()
        self._tb = None
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                # purge_step drops events of steps after the checkpoint we resume from
                self._tb = SummaryWriter(str(self.run_dir / TB_DIR), purge_step=resume_step + 1)
            except Exception as e:  # noqa: BLE001 - tensorboard missing or broken: log without it
                _warn_once("TensorBoard", e)

    def log(self, record: dict) -> None:
        self._file.write(json.dumps(record) + "\n")
        self._file.flush()
        if self._tb is not None:
            step = record["step"]
            for key, value in record.items():
                if key != "step" and isinstance(value, (int, float)) and math.isfinite(value):
                    self._tb.add_scalar(key, value, step)
            for layer, load in enumerate(record.get("expert_load") or []):
                self._tb.add_scalars(
                    f"expert_load/layer{layer}", {str(e): v for e, v in enumerate(load)}, step
                )

    def add_text(self, tag: str, text: str, step: int) -> None:
        if self._tb is not None:
            self._tb.add_text(tag, text, step)

    def close(self) -> None:
        self._file.close()
        if self._tb is not None:
            self._tb.close()


def stderr_is_terminal() -> bool:
    """Bars only for a person watching: in a log file or a pipe each frame would be one more line."""
    try:
        return sys.stderr.isatty()
    except (AttributeError, ValueError):  # replaced or closed stderr
        return False


class ProgressBar:
    """tqdm bar over steps with loss and tokens/s on a terminal; elsewhere (not a terminal, disabled, or no
    tqdm) only the messages print."""

    def __init__(self, start: int, total: int, enabled: bool = True):
        self.bar = None
        self.enabled = enabled
        if not enabled or not stderr_is_terminal():
            return
        try:
            from tqdm import tqdm

            self.bar = tqdm(initial=start, total=total, unit="step", dynamic_ncols=True, file=sys.stderr)
        except ImportError as e:
            _warn_once("tqdm progress bar", e)

    def update(self, step: int, loss: float, tokens_per_s: float) -> None:
        if self.bar is not None:
            self.bar.set_postfix(loss=f"{loss:.4f}", tok_s=f"{tokens_per_s:,.0f}", refresh=False)
            self.bar.update(step - self.bar.n)

    def write(self, message: str) -> None:
        if self.bar is not None:
            self.bar.write(message, file=sys.stderr)
        else:  # no bar: the messages (start, evaluations, stop) still go to stderr
            print(message, file=sys.stderr, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def _smooth(values: list[float], window: int) -> list[float]:
    out, total = [], 0.0
    for i, v in enumerate(values):
        total += v
        if i >= window:
            total -= values[i - window]
        out.append(total / min(i + 1, window))
    return out


def plot_run(run_dir: str | Path) -> Path | None:
    """Draw RUN/loss.png from metrics.jsonl: train and validation loss, then a panel for each thing the run
    logged: validation bits per byte beside the n-gram's, and for an MoE the latest expert load per layer.
    Returns the path, or None without matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except Exception as e:  # noqa: BLE001
        _warn_once("matplotlib (loss.png)", e)
        return None
    records = read_metrics(run_dir)
    train = [(r["step"], r["loss"]) for r in records if "loss" in r]
    val = [(r["step"], r["val_loss"]) for r in records if "val_loss" in r]
    bpb = [(r["step"], r["val_bpb"]) for r in records if r.get("val_bpb") is not None]
    ngram = next((r for r in reversed(records) if r.get("ngram_val_bpb") is not None), None)
    loads = [(r["step"], r["expert_load"]) for r in records if r.get("expert_load")]
    n_panels = 1 + bool(bpb) + bool(loads)  # an SFT run logs no bits per byte: no empty panel for them
    fig, axes = plt.subplots(1, n_panels, figsize=(5.5 * n_panels, 4.2), squeeze=False)
    axes = list(axes[0])
    ax = axes.pop(0)
    if train:
        steps, losses = zip(*train, strict=True)
        ax.plot(steps, losses, color="tab:blue", alpha=0.3, lw=0.8, label="train")
        ax.plot(
            steps,
            _smooth(list(losses), max(1, len(losses) // 20)),
            color="tab:blue",
            label="train (smoothed)",
        )
    if val:
        ax.plot([v[0] for v in val], [v[1] for v in val], "o-", color="tab:orange", label="validation")
    ax.set(xlabel="step", ylabel="loss (nats/token)", title="loss")
    ax.grid(alpha=0.3)
    if train or val:
        ax.legend()
    if bpb:
        ax = axes.pop(0)
        ax.plot([b[0] for b in bpb], [b[1] for b in bpb], "o-", color="tab:green", label="model")
        ax.annotate(f"{bpb[-1][1]:.3f}", bpb[-1], textcoords="offset points", xytext=(-10, 8))
        if ngram is not None:
            order = int(ngram.get("ngram_order") or 0)
            ax.axhline(ngram["ngram_val_bpb"], color="gray", ls="--", lw=1, label=f"{order}-gram baseline")
        ax.set(xlabel="step", ylabel="bits per byte (lower is better)", title="validation bits per byte")
        ax.grid(alpha=0.3)
        ax.legend()
    if loads:
        # Load imbalance per MoE layer: the busiest expert's share of routed tokens times the number of
        # experts. 1.0 is perfectly balanced; n_experts means one expert takes everything.
        ax = axes.pop(0)
        steps = [s for s, _ in loads]
        for layer in range(len(loads[0][1])):
            ax.plot(steps, [max(load[layer]) * len(load[layer]) for _, load in loads], label=f"layer {layer}")
        ax.axhline(1.0, color="gray", lw=0.8, ls="--")
        ax.set(xlabel="step", ylabel="max expert load x n_experts", title="MoE load imbalance (1 = balanced)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize="small", ncol=2)
    fig.tight_layout()
    path = Path(run_dir) / PLOT_FILE
    atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=110, format="png"))
    plt.close(fig)
    return path
