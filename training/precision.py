"""Precision, device and memory: how a run computes on the hardware it has (free Colab/Kaggle GPUs too).

Three number formats, chosen by the hardware unless forced with --precision:

    bf16  autocast to bfloat16. Same exponent range as fp32, so gradients never overflow and no loss
          scaling is needed. Fast only on GPUs with bf16 tensor cores: compute capability >= 8.0
          (A100, L4, RTX 30xx, H100). `torch.cuda.is_bf16_supported()` is not that test: it also says
          True on a T4 (7.5), where bf16 is emulated and slow.
    fp16  autocast to float16 with a gradient scaler, for GPUs without bf16 (T4, V100, P100). fp16 stops
          at 65504 and flushes below ~6e-8, so small gradients would round to zero: the loss is
          multiplied by a scale S before backward and the gradients divided by S before the optimizer
          step. When a gradient comes out inf or NaN, that step is skipped (weights and AdamW moments
          untouched) and S is halved; after `growth_interval` clean steps S doubles. The skipped
          steps are counted, and the scaler state is saved in checkpoints so a resume continues with
          the same S.
    fp32  no autocast: the CPU default (CPU autocast is slower than fp32 for these small models),
          and Apple's MPS (its autocast is still young; force --precision fp16 to try it).

Devices: "auto" picks cuda, then mps (Apple silicon), then cpu.

Memory: `estimate_memory` is a rule of thumb for the bytes a training step needs (weights, gradients,
AdamW moments, saved activations, logits), `fit_batch` uses it to pick the largest micro-batch that fits
a GPU (with gradient accumulation keeping the tokens per step), and `explain_out_of_memory` turns a CUDA
out-of-memory error into one line that names the fix. `enable_activation_checkpointing` trades compute
for memory: each block's activations are recomputed in backward instead of stored.

    python -m training.precision --preset base --gpu-gb 15      # what fits a 15 GB T4
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import math
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import torch

from common.errors import UserError
from training.config import ConfigError
from training.model import GPT, ModelConfig

PRECISIONS = ("auto", "bf16", "fp16", "fp32")
DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


# -----------------------------------------------------------------------------------------------
# Device and precision choice


def mps_available() -> bool:
    return hasattr(torch.backends, "mps") and torch.backends.mps.is_available()


def pick_device(name: str = "auto", local_rank: int = 0) -> torch.device:
    """The device for --device: auto picks cuda, then mps, then cpu; a named one that is missing is an
    error, not a silent fallback to a slower device."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "mps" if mps_available() else "cpu"
    if name == "cuda" or name.startswith("cuda:"):
        if not torch.cuda.is_available():
            raise ConfigError(f"--device {name} asked for, but torch sees no GPU: use --device cpu (or auto)")
        return torch.device("cuda", local_rank) if name == "cuda" else torch.device(name)
    if name == "mps":
        if not mps_available():
            raise ConfigError("--device mps asked for, but this torch has no MPS (Apple silicon) backend")
        return torch.device("mps")
    if name == "cpu":
        return torch.device("cpu")
    raise ConfigError(f"unknown device {name!r}: use auto, cuda, mps or cpu")


def cuda_capability(device: torch.device) -> tuple[int, int] | None:
    if device.type != "cuda" or not torch.cuda.is_available():
        return None
    return torch.cuda.get_device_capability(device)


def choose_precision(requested: str, device_type: str, capability: tuple[int, int] | None = None) -> str:
    """The precision a run uses: `requested` checked against the device, or chosen for it ("auto").

    A pure function of its arguments (capability: the CUDA compute capability) so every case is testable
    on a CPU. bf16 on a CUDA GPU older than Ampere is refused: it would run emulated, many times slower.
    """
    if requested not in PRECISIONS:
        raise ConfigError(f"unknown precision {requested!r}: use one of {', '.join(PRECISIONS)}")
    has_bf16 = capability is not None and capability >= (8, 0)
    if requested == "auto":
        if device_type == "cuda":
            return "bf16" if has_bf16 else "fp16"
        return "fp32"
    if requested == "bf16" and device_type == "cuda" and not has_bf16:
        raise ConfigError(
            f"--precision bf16: this GPU (compute capability {capability[0]}.{capability[1]}) has no bf16 "
            "tensor cores; use --precision fp16 (or auto)"
            if capability
            else "--precision bf16 needs a CUDA GPU with compute capability >= 8.0"
        )
    return requested


# -----------------------------------------------------------------------------------------------
# Autocast, loss scaling and the optimizer step


class Precision:
    """Autocast for the forward pass, and (fp16) loss scaling for backward and the optimizer step.

    Use in a training step:

        with precision.autocast():
            loss = model(x, y).total_loss() / grad_accum
        precision.backward(loss)
        ...                                      # more micro-batches
        grad_norm = precision.step(optimizer, model.parameters(), grad_clip)
        optimizer.zero_grad(set_to_none=True)
    """

    def __init__(
        self,
        kind: str,
        device: torch.device | str,
        init_scale: float = 2.0**16,
        growth_interval: int = 2000,
    ) -> None:
        if kind not in DTYPES:
            raise ValueError(
                f"Precision kind must be bf16, fp16 or fp32 (resolve 'auto' first), got {kind!r}"
            )
        self.kind = kind
        self.device = torch.device(device)
        self.scaler = (
            torch.amp.GradScaler(self.device.type, init_scale=init_scale, growth_interval=growth_interval)
            if kind == "fp16"
            else None
        )
        # On the device, so counting a skipped step costs no GPU->CPU sync; read with .skipped_steps
        self._skipped = torch.zeros((), dtype=torch.int64, device=self.device)

    @property
    def dtype(self) -> torch.dtype:
        return DTYPES[self.kind]

    def autocast(self) -> contextlib.AbstractContextManager:
        if self.kind == "fp32":
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.dtype)

    def backward(self, loss: torch.Tensor) -> None:
        (self.scaler.scale(loss) if self.scaler is not None else loss).backward()

    def step(
        self, optimizer: torch.optim.Optimizer, parameters: Iterable[torch.Tensor], grad_clip: float = 0.0
    ) -> torch.Tensor:
        """Unscale (fp16), clip to `grad_clip` (0: no clipping), step; returns the gradient norm.

        fp16: a step whose gradients hold inf or NaN is skipped by the scaler and counted here. The norm
        is computed after unscaling, and is non-finite exactly when some gradient is, so the count agrees
        with the scaler's decision without reading its private state or waiting for the GPU.
        """
        parameters = [p for p in parameters if p.grad is not None]
        if self.scaler is not None:
            self.scaler.unscale_(optimizer)
        grad_norm = torch.nn.utils.clip_grad_norm_(parameters, grad_clip if grad_clip > 0 else math.inf)
        if self.scaler is None:
            optimizer.step()
            return grad_norm
        self._skipped += (~torch.isfinite(grad_norm)).to(torch.int64)
        self.scaler.step(optimizer)
        self.scaler.update()
        return grad_norm

    @property
    def skipped_steps(self) -> int:
        """Optimizer steps skipped because of inf/NaN gradients (fp16 only; always 0 otherwise)."""
        return int(self._skipped.item())

    @property
    def loss_scale(self) -> float | None:
        return self.scaler.get_scale() if self.scaler is not None else None

    def state_dict(self) -> dict:
        """JSON-serialisable: the kind, the skipped-step count and the scaler's scale and growth tracker."""
        state: dict = {"kind": self.kind, "skipped_steps": self.skipped_steps}
        if self.scaler is not None:
            state["scaler"] = self.scaler.state_dict()
        return state

    def load_state_dict(self, state: dict) -> None:
        """Continue from a checkpoint. A run resumed in another precision keeps the skip count only:
        a loss scale means nothing outside fp16 (and fp16 after bf16 starts from the initial scale)."""
        self._skipped.fill_(int(state.get("skipped_steps", 0)))
        if self.scaler is not None and state.get("kind") == "fp16" and state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])


# -----------------------------------------------------------------------------------------------
# Activation checkpointing


def enable_activation_checkpointing(model: GPT) -> None:
    """Recompute each block's activations in backward instead of keeping them: only the block inputs stay
    in memory (about a tenth of the activations of a block) for about a third more compute.

    Wraps each block's forward on the instance, so parameter names, state dicts and checkpoints are
    unchanged. Generation (a KV cache) and no-grad evaluation run the plain forward.
    """
    from torch.utils.checkpoint import checkpoint

    for block in model.blocks:
        plain = block.forward

        def forward(x, cos, sin, kv_cache=None, _plain=plain, _block=block):
            if kv_cache is None and _block.training and torch.is_grad_enabled():
                return checkpoint(_plain, x, cos, sin, None, use_reentrant=False)
            return _plain(x, cos, sin, kv_cache)

        block.forward = forward


# -----------------------------------------------------------------------------------------------
# Memory: a rule of thumb, the batch that fits, and an out-of-memory error that names the fix

GiB = 1024**3


@dataclass
class MemoryEstimate:
    """Bytes of one training step on one GPU, by part (all in GiB)."""

    states: float  # fp32 weights + gradients + AdamW moments (+ the half-precision weight copies)
    activations: float  # tensors the blocks save for backward
    logits: float  # the (tokens x vocab) logits, their fp32 copy for the loss, and its gradient
    overhead: float  # CUDA context, allocator fragmentation, kernels' workspaces

    @property
    def total(self) -> float:
        return self.states + self.activations + self.logits + self.overhead


def estimate_memory(
    config: ModelConfig,
    batch_size: int,
    block_size: int,
    precision: str = "fp16",
    activation_checkpointing: bool = False,
) -> MemoryEstimate:
    """A rule of thumb, not a measurement: per parameter 16 bytes (fp32 weight, gradient, two AdamW
    moments) + 2 under autocast; per token and layer about 34 bytes per model width and 8 per feed-forward
    unit under autocast (norms, q/k/v, attention output, SwiGLU's gate, up and product; 1.5x that in fp32,
    as the norms are fp32 either way); 14 bytes per token and vocabulary entry for the logits and the
    loss; 0.75 GiB overhead. On the CPU, the tensors saved for backward of `small` match it within 1.5x."""
    n_params = count_params(config)
    half = precision in ("bf16", "fp16")
    states = n_params * (18 if half else 16)
    tokens = batch_size * block_size
    act_scale = 1.0 if half else 1.5
    h, kv = config.n_embd, config.n_kv_head * config.head_dim
    per_layer = []
    for layer in range(config.n_layer):
        ffn = config.top_k * config.expert_hidden if config.is_moe_layer(layer) else config.mlp_hidden
        per_layer.append(act_scale * (34 * h + 4 * kv + 8 * ffn))
    if activation_checkpointing:  # block inputs (fp32 residual) + one block recomputed at a time
        act_per_token = 4 * h * config.n_layer + max(per_layer)
    else:
        act_per_token = sum(per_layer)
    logits_per_token = config.vocab_size * (14 if half else 12)
    return MemoryEstimate(
        states=states / GiB,
        activations=tokens * act_per_token / GiB,
        logits=tokens * logits_per_token / GiB,
        overhead=0.75,
    )


def count_params(config: ModelConfig) -> int:
    """Parameters of a model with this config, built once on the meta device (no memory)."""
    return _count_params(json.dumps(config.to_dict(), sort_keys=True))


@functools.lru_cache(maxsize=64)
def _count_params(config_json: str) -> int:
    with torch.device("meta"):
        return GPT(ModelConfig.from_dict(json.loads(config_json))).num_params()


def _largest_batch(
    config: ModelConfig,
    block_size: int,
    budget_gib: float,
    max_batch: int,
    precision: str,
    checkpointing: bool,
) -> int | None:
    batch = 1 << int(math.log2(max_batch))
    while batch >= 1:
        if estimate_memory(config, batch, block_size, precision, checkpointing).total <= budget_gib:
            return batch
        batch //= 2
    return None


def fit_batch(
    config: ModelConfig,
    block_size: int,
    gpu_gb: float,
    tokens_per_step: int | None = None,
    precision: str = "fp16",
    headroom: float = 0.9,
) -> dict:
    """Trainer flags for a GPU of `gpu_gb` GiB: the largest power-of-two micro-batch whose estimate fits
    `headroom * gpu_gb`, and the gradient accumulation that keeps `tokens_per_step` (default: 64 windows).
    Activation checkpointing is switched on only when a micro-batch of 8 (or the whole step) does not
    fit without it. Raises ValueError when not even one window fits."""
    windows = max(1, (tokens_per_step or 64 * block_size) // block_size)
    budget = headroom * gpu_gb
    batch = _largest_batch(config, block_size, budget, windows, precision, False)
    checkpointing = batch is None or batch < min(8, windows)
    if checkpointing:
        batch = _largest_batch(config, block_size, budget, windows, precision, True)
    if batch is None:
        need = estimate_memory(config, 1, block_size, precision, True).total
        raise ValueError(
            f"one window of {block_size} tokens needs ~{need:.1f} GiB, more than {budget:.1f} GiB: "
            "use a smaller --preset or --block-size"
        )
    estimate = estimate_memory(config, batch, block_size, precision, checkpointing).total
    return {
        "batch_size": batch,
        "grad_accum": math.ceil(windows / batch),
        "activation_checkpointing": checkpointing,
        "estimate_gib": round(estimate, 2),
    }


def out_of_memory_message(
    config: ModelConfig,
    batch_size: int,
    grad_accum: int,
    block_size: int,
    precision: str,
    activation_checkpointing: bool,
    gpu_gb: float | None,
) -> str:
    """One line: what ran out, and flags that should fit with the same tokens per step (from fit_batch,
    but never the batch that just failed or a larger one, whatever the estimate says)."""
    where = f"a {gpu_gb:.0f} GiB GPU" if gpu_gb else "the GPU"
    msg = (
        f"CUDA ran out of memory on {where} with --batch-size {batch_size} --block-size {block_size} "
        f"({precision}, activation checkpointing {'on' if activation_checkpointing else 'off'})"
    )
    if batch_size == 1 and activation_checkpointing:
        return msg + ": not even one window fits; use a smaller --preset or --block-size"
    windows = batch_size * grad_accum
    try:
        fit = fit_batch(config, block_size, gpu_gb or 15.0, windows * block_size, precision)
    except ValueError:
        return msg + ": use a smaller --preset or --block-size"
    batch = min(fit["batch_size"], max(1, batch_size // 2))
    # fit_batch's rule (checkpointing when a micro-batch of 8 does not fit), with the batch that failed
    checkpointing = activation_checkpointing or batch_size == 1 or batch < min(8, windows)
    flags = f"--batch-size {batch} --grad-accum {math.ceil(windows / batch)}"
    if checkpointing:
        flags += " --activation-checkpointing true"
    return f"{msg}: rerun with {flags} (same tokens per step); the run resumes from its last checkpoint"


@contextlib.contextmanager
def explain_out_of_memory(message: str | None = None, **context) -> Iterator[None]:
    """Turn torch.OutOfMemoryError into a UserError carrying out_of_memory_message(**context): the CLI
    prints it as one line instead of a traceback ending in an allocator dump."""
    try:
        yield
    except torch.OutOfMemoryError as e:
        if message is None:
            gpu_gb = None
            if torch.cuda.is_available():
                gpu_gb = torch.cuda.get_device_properties(torch.cuda.current_device()).total_memory / GiB
            message = out_of_memory_message(gpu_gb=gpu_gb, **context)
        raise UserError(message) from e


# -----------------------------------------------------------------------------------------------
# Command line: what fits a given GPU


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m training.precision", description="Trainer flags that fit a model on a GPU."
    )
    parser.add_argument("--preset", default="small")
    parser.add_argument("--gpu-gb", type=float, default=15.0, help="GPU memory (a T4 has 15)")
    parser.add_argument("--block-size", type=int, default=None, help="default: the preset's max_seq_len")
    parser.add_argument("--vocab-size", type=int, default=None, help="default: the preset's")
    parser.add_argument("--tokens-per-step", type=int, default=None, help="default: 64 windows")
    parser.add_argument("--precision", default="fp16", choices=["bf16", "fp16", "fp32"])
    args = parser.parse_args(argv)
    overrides = {"vocab_size": args.vocab_size} if args.vocab_size else {}
    config = ModelConfig.preset(args.preset, **overrides)
    block = args.block_size or config.max_seq_len
    try:
        fit = fit_batch(config, block, args.gpu_gb, args.tokens_per_step, args.precision)
    except ValueError as e:
        raise SystemExit(f"Error: {e}") from None
    flags = f"--batch-size {fit['batch_size']} --grad-accum {fit['grad_accum']} --block-size {block}"
    if fit["activation_checkpointing"]:
        flags += " --activation-checkpointing true"
    print(
        f"{args.preset} on {args.gpu_gb:g} GiB ({args.precision}): {flags}  (estimate {fit['estimate_gib']} GiB)"
    )


if __name__ == "__main__":
    main()
