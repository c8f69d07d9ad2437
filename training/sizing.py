"""The model a time budget buys on this machine: a short throughput probe, then a rule fitted on a sweep.

`ptgpt train --time-budget 30m` with no shape of its own (`--preset auto`, the default, and no
--n-layer, --n-embd, ...) times a few training steps of each shape of LADDER on the run's device and
threads (`probe_throughput`), then `choose_size` picks, from those figures alone (the same probe gives
the same choice):

- the shape: the one for which a loss law fitted on a sweep (LAW: bpb = E + A/N^alpha + B/D^beta,
  Hoffmann et al. 2022's form, fitted by bench/bench_sizing.py on this project's 2-core CPU; see
  docs/benchmarks.md, "Sizing for a time budget") predicts the lowest validation bpb, N being the
  parameters a token passes through (the output head included, the embedding lookup not) and D the
  tokens its measured speed buys in the budget, counted at their worth when the corpus repeats
  (Muennighoff et al. 2023, "Scaling Data-Constrained Language Models": repeated epochs are worth less
  and less, with a half-life of about R* = 15 repetitions);
- the window: 256 tokens on a CPU (attention is a small share there), 1024 on a GPU;
- tokens per optimizer step: about STEPS_TARGET steps in the budget, a power of two between 2k and
  512k tokens, made of micro-batches of at most MICRO_BATCH windows (the rest is gradient accumulation);
- the peak learning rate: GPT-3's 6e-4 at width 768 (Brown et al. 2020, table 2.1), scaled as 1/width
  (narrow models take larger steps), capped at 4e-3.

Every choice can be overridden by its own flag (--preset or a shape field, --block-size, --batch-size,
--tokens-per-step / --grad-accum, --lr). The choice, and why, is printed and recorded in RUN/config.json
("sizing"), and a rerun of the same run reuses it, so a larger budget continues the same model.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass


@dataclass(frozen=True)
class LossLaw:
    """Validation bits per byte ~ E + A / N**alpha + B / D**beta (the form of Hoffmann et al. 2022), with N
    the parameters a token passes through and D the effective training tokens."""

    E: float
    A: float
    alpha: float
    B: float
    beta: float

    def predict(self, params: float, tokens: float) -> float:
        return self.E + self.A / params**self.alpha + self.B / max(tokens, 1.0) ** self.beta


#: fitted by bench/bench_sizing.py on 8 runs of the shared books at an 8k vocabulary on this project's
#: 2-core CPU (0.2M-2.3M tokens, 0.6M-5.8M parameters; rms residual 0.021 bpb): docs/benchmarks.md
LAW = LossLaw(E=0.369, A=1.86, alpha=0.1, B=12.72, beta=0.15)
#: Muennighoff et al.'s R*: the number of repetitions after which extra epochs are worth 1 - 1/e less
REPEAT_HALF_LIFE = 15.4
STEPS_TARGET = 1500
MICRO_BATCH = {"cpu": 16, "gpu": 32}
#: the fields that make a shape: overriding any of them means the user chose the shape
SHAPE_FIELDS = ("n_layer", "n_embd", "n_head", "n_kv_head", "mlp_hidden", "n_experts", "expert_hidden")


@dataclass(frozen=True)
class Shape:
    """One rung of the ladder: a dense GQA decoder, head size 32-64, SwiGLU at ~8/3 of the width."""

    n_layer: int
    n_embd: int
    n_head: int
    n_kv_head: int
    mlp_hidden: int

    @property
    def name(self) -> str:
        return f"{self.n_layer}x{self.n_embd}"

    def overrides(self) -> dict:
        return asdict(self)


def _shape(n_layer: int, n_embd: int, n_head: int) -> Shape:
    hidden = 64 * max(1, round(8 * n_embd / 3 / 64))
    kv = next(k for k in range(max(1, n_head // 2), 0, -1) if n_head % k == 0)
    return Shape(n_layer, n_embd, n_head, kv, hidden)


#: from a few hundred thousand to ~85M parameters a token passes through (8k vocabulary)
LADDER: tuple[Shape, ...] = (
    _shape(2, 64, 2),
    _shape(2, 96, 3),
    _shape(3, 128, 4),
    _shape(4, 192, 4),
    _shape(5, 256, 4),
    _shape(6, 320, 4),
    _shape(6, 384, 6),
    _shape(8, 512, 8),
    _shape(10, 640, 10),
    _shape(12, 768, 12),
)


def matmul_params(shape: Shape, vocab_size: int) -> int:
    """Parameters a token passes through: attention, SwiGLU and the output head (norms are negligible)."""
    head_dim = shape.n_embd // shape.n_head
    attention = shape.n_embd * head_dim * (2 * shape.n_head + 2 * shape.n_kv_head)
    mlp = 3 * shape.n_embd * shape.mlp_hidden
    return shape.n_layer * (attention + mlp) + shape.n_embd * vocab_size


@dataclass(frozen=True)
class ProbeResult:
    """Training tokens per second of each shape measured, on one device with one setting of threads."""

    device: str  # "cpu" or "gpu"
    vocab_size: int
    block_size: int
    tokens_per_second: dict[str, float]  # Shape.name -> measured; shapes not reached are absent
    seconds: float  # the probe's own wall-clock
    processes: int = 1  # data-parallel processes the speeds are for (one probed, times this many)

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class SizeChoice:
    """What choose_size picked and the figures it picked from."""

    shape: Shape
    block_size: int
    micro_batch: int
    tokens_per_step: int
    lr: float
    params: int  # matmul_params of the shape
    tokens_per_second: float
    projected_tokens: int  # tokens the budget buys at that speed
    epochs: float  # projected passes over the training split
    predicted_bpb: float  # what LAW expects of it (validation bits per byte)
    reason: str

    def to_dict(self) -> dict:
        return {**asdict(self), "shape": self.shape.overrides(), "shape_name": self.shape.name}


def block_size_for(device: str) -> int:
    return 256 if device == "cpu" else 1024


def effective_tokens(tokens: float, unique: float, half_life: float = REPEAT_HALF_LIFE) -> float:
    """Tokens counted at their worth: the first epoch in full, repetitions decaying (Muennighoff et al.)."""
    if unique <= 0 or tokens <= unique:
        return tokens
    repeats = tokens / unique - 1
    return unique + unique * half_life * (1 - math.exp(-repeats / half_life))


def peak_lr(n_embd: int) -> float:
    return min(4e-3, 6e-4 * 768 / n_embd)


def tokens_per_step_for(projected_tokens: float, block_size: int) -> int:
    """A power of two near projected / STEPS_TARGET, at least two windows, between 2k and 512k."""
    target = max(projected_tokens / STEPS_TARGET, 1.0)
    power = 2 ** math.floor(math.log2(target))
    return int(min(max(power, 2048, 2 * block_size), 2**19))


def choose_size(
    probe: ProbeResult, budget_seconds: float, train_tokens: int, law: LossLaw = LAW
) -> SizeChoice:
    """The measured shape whose budget (its tokens/s x the seconds, repeats counted at their worth) the
    law predicts lowest in bits per byte; a pure function of its arguments."""
    measured = [s for s in LADDER if s.name in probe.tokens_per_second]
    if not measured:
        raise ValueError("the probe measured no shape")

    def predicted(shape: Shape) -> float:
        tokens = effective_tokens(probe.tokens_per_second[shape.name] * budget_seconds, train_tokens)
        return law.predict(matmul_params(shape, probe.vocab_size), tokens)

    pick = min(measured, key=predicted)
    speed = probe.tokens_per_second[pick.name]
    projected = speed * budget_seconds
    params = matmul_params(pick, probe.vocab_size)
    epochs = projected / max(train_tokens, 1)
    per_step = tokens_per_step_for(projected, probe.block_size)
    micro = min(MICRO_BATCH[probe.device], per_step // probe.block_size)
    others = ", ".join(f"{s.name} {predicted(s):.3f}" for s in measured if s != pick)
    reason = (
        f"{pick.name} ({params / 1e6:.2f}M params a token passes through) at {speed:,.0f} tokens/s "
        f"trains on {projected / 1e6:.1f}M tokens in {budget_seconds:.0f} s ({epochs:.2f} epochs of the "
        f"{train_tokens / 1e6:.1f}M-token train split): predicted {predicted(pick):.3f} bpb, the lowest of "
        f"the measured shapes (" + (others or "no other measured") + ")"
    )
    return SizeChoice(
        shape=pick,
        block_size=probe.block_size,
        micro_batch=micro,
        tokens_per_step=per_step,
        lr=peak_lr(pick.n_embd),
        params=params,
        tokens_per_second=speed,
        projected_tokens=int(projected),
        epochs=epochs,
        predicted_bpb=predicted(pick),
        reason=reason,
    )


def probe_seconds(budget_seconds: float) -> float:
    """What a run may spend probing: 3% of its budget, at most a minute."""
    return min(0.03 * budget_seconds, 60.0)


def probe_throughput(
    vocab_size: int,
    device,
    limit_seconds: float,
    precision: str = "fp32",  # resolved: "fp32", "bf16" or "fp16"
    shapes: tuple[Shape, ...] = LADDER,
) -> ProbeResult:
    """Time forward + backward + AdamW on random tokens for each shape, smallest first, until the next
    would take the probe past limit_seconds; larger shapes are left unmeasured (the smallest always is)."""
    import torch

    from training.model import GPT, ModelConfig
    from training.precision import Precision

    kind = "gpu" if device.type == "cuda" else "cpu"
    block = block_size_for(kind)
    batch = MICRO_BATCH[kind]
    start = time.perf_counter()
    measured: dict[str, float] = {}
    amp = Precision(precision, device)
    generator = torch.Generator().manual_seed(0)
    last_step = 0.0
    for shape in shapes:
        # the next shape costs about its params / the last one's as much per step
        if measured and time.perf_counter() - start + 3 * last_step * 2 > limit_seconds:
            break
        config = ModelConfig(vocab_size=vocab_size, max_seq_len=block, **shape.overrides())
        model = GPT(config).to(device)
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
        x = torch.randint(0, vocab_size, (batch, block + 1), generator=generator).to(device)
        times = []
        # the first steps warm caches, allocators and the thread pool (longer for the first shape); the
        # best of the others counts
        for _ in range(3 if measured else 6):
            t = time.perf_counter()
            with amp.autocast():
                loss = model(x[:, :-1], x[:, 1:]).loss
            amp.backward(loss)
            amp.step(optimizer, model.parameters(), 1.0)
            optimizer.zero_grad(set_to_none=True)
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            times.append(time.perf_counter() - t)
        last_step = min(times[-2:])
        measured[shape.name] = batch * block / last_step
        del model, optimizer
    return ProbeResult(kind, vocab_size, block, measured, time.perf_counter() - start)
