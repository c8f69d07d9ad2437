"""The trainer: AdamW on the streaming Parquet loader, with exact resume, evaluation, DDP and logs.

    python -m training.train --corpus data/corpus --run runs/tiny --preset tiny --max-steps 2000
    torchrun --standalone --nproc_per_node=8 -m training.train --corpus ... --run-dir ... --preset base

(under torchrun spell the run folder --run-dir: torchrun takes --run for an abbreviation of its --run-path)

Read top to bottom: learning-rate schedule -> processes and devices -> setting up a run (resume
decision, model, build_optimizer, loaders) -> one step (train_step) -> periodic work (log_step,
periodic_evaluation, save_checkpoint) -> the loop (train) -> command line (main, run_torchrun).
TrainConfig, every knob and its default, is in training/config.py.

One optimizer step = `grad_accum` micro-batches of `batch_size` windows of `block_size` tokens on each
of `world_size` processes. Data are cut into `data_shards` disjoint loader shards (default: one per
process); a process that holds several shards ("virtual ranks") takes its micro-batches from them in
turn. So a run on one process with data_shards=2, grad_accum=2 sees exactly the windows of a run on two
processes with grad_accum=1, and computes the same update up to float summation order.

The RUN folder:

    RUN/config.json                   train + model config, corpus, tokenizer path and sha256
    RUN/checkpoints/step_NNNNNNN/     training checkpoints (training/checkpoint.py), the last keep_last
    RUN/metrics.jsonl                 one JSON object per logged step (training/metrics.py)
    RUN/tb/                           TensorBoard events
    RUN/loss.png                      train/validation curves, refreshed at each evaluation
    RUN/samples.txt                   text generated from fixed prompts at each evaluation

Before the first step the shards are checked against the corpus manifest (row groups and rows from the
Parquet footers, and sha256 unless verify_shards is off). A NaN or infinite loss or gradient norm stops
training with an error before anything is saved, so the newest checkpoint stays the last good one.

Rerunning the same command continues from the newest checkpoint that verifies (a damaged newest one is
skipped with a warning); `max_steps` is the total target, not a number of further steps. SIGTERM or
SIGINT: the current step finishes, a checkpoint is written, and `main` exits with 128 + the signal
number (143 / 130) so that a job scheduler sees an interruption, not success; rerun to continue.

Resume is bit-exact on CPU: weights, AdamW moments, loader positions (including the batches the
prefetch thread had read ahead) and RNG states are all restored, and the schedule is a pure function of
the step. Under torchrun only rank 0 logs and writes checkpoints; all ranks read them on resume.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import signal
import subprocess
import sys
import threading
import time
import typing
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist

from common.errors import UserError
from common.files import write_json_atomic
from training import checkpoint as ckpt
from training import optim
from training.config import ConfigError, TrainConfig
from training.data import CorpusInfo, DevicePrefetcher, LoaderConfig, TokenWindowLoader, verify_shards
from training.eval_tasks import quick_eval
from training.evaluate import evaluate, generate_samples, load_tokenizer
from training.flops import mfu, peak_flops
from training.metrics import MetricsLogger, ProgressBar, plot_run
from training.model import GPT, ModelConfig
from training.precision import (
    Precision,
    choose_precision,
    cuda_capability,
    enable_activation_checkpointing,
    explain_out_of_memory,
)
from training.precision import pick_device as pick_any_device

RUN_CONFIG_FILE = "config.json"
SAMPLES_FILE = "samples.txt"


# -----------------------------------------------------------------------------------------------
# Learning rate: a pure function of the step, so resuming needs no scheduler state


def lr_at(step: int, c: TrainConfig) -> float:
    """Learning rate for optimizer step `step` (0-based): linear warmup, then cosine or linear warmdown."""
    total = c.decay_steps or c.max_steps
    min_lr = c.lr * c.min_lr_ratio
    if step < c.warmup_steps:
        return c.lr * (step + 1) / c.warmup_steps
    if c.schedule == "cosine":
        progress = min(1.0, (step - c.warmup_steps) / max(1, total - c.warmup_steps))
        return min_lr + 0.5 * (c.lr - min_lr) * (1 + math.cos(math.pi * progress))
    warmdown = max(1, round(c.warmdown_frac * total))
    if step < total - warmdown:
        return c.lr
    return min_lr + (c.lr - min_lr) * max(0.0, (total - step) / warmdown)


# -----------------------------------------------------------------------------------------------
# Processes and devices


@dataclass
class Dist:
    rank: int = 0
    local_rank: int = 0
    world_size: int = 1
    owns_group: bool = False  # this train() call initialised the process group (and destroys it)

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def setup_distributed(device_kind: str) -> Dist:
    """Join the torchrun process group when launched by torchrun (nccl on CUDA, gloo on CPU)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Dist()
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    owns = not dist.is_initialized()
    if owns:
        backend = "nccl" if device_kind == "cuda" else "gloo"
        if device_kind == "cuda":
            torch.cuda.set_device(local_rank)
        dist.init_process_group(backend=backend)
    return Dist(rank, local_rank, world, owns)


def pick_device(name: str, d: Dist) -> torch.device:
    return pick_any_device(name, d.local_rank)  # auto: cuda, then mps, then cpu


class StopSignal:
    """SIGTERM/SIGINT set a flag; the loop finishes its step, checkpoints and stops. Restored on exit."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self._previous: dict[int, object] = {}

    def __enter__(self) -> StopSignal:
        if threading.current_thread() is threading.main_thread():  # handlers can only be set there
            for sig in (signal.SIGTERM, signal.SIGINT):
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum: int, frame) -> None:
        if self.signum is not None:  # a second signal: stop now
            raise KeyboardInterrupt
        self.signum = signum

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


# -----------------------------------------------------------------------------------------------
# Setting up a run: resume decision, model, optimizer, data


class TrainingDiverged(UserError):
    """The loss or the gradient norm became NaN or infinite; no checkpoint is written after it."""


def build_model_config(c: TrainConfig, info: CorpusInfo) -> ModelConfig:
    overrides = dict(c.model_overrides)
    overrides.setdefault("vocab_size", info.vocab_size)
    config = ModelConfig.preset(c.preset, **overrides)
    if config.vocab_size < info.vocab_size:
        raise ConfigError(
            f"vocab_size={config.vocab_size} is smaller than the corpus tokenizer's {info.vocab_size}"
        )
    return config


def loader_shards(c: TrainConfig, d: Dist) -> tuple[int, list[int]]:
    """(number of data shards, the shards this process reads)."""
    n = c.data_shards or d.world_size
    if n % d.world_size:
        raise ConfigError(f"data_shards={n} must be a multiple of the world size {d.world_size}")
    return n, list(range(d.rank, n, d.world_size))


def resolve_grad_accum(c: TrainConfig, d: Dist, block_size: int, shards_here: int) -> int:
    if c.grad_accum is not None:
        accum = c.grad_accum
    elif c.tokens_per_step is not None:
        per_micro = c.batch_size * block_size * d.world_size
        if c.tokens_per_step % per_micro:
            raise ConfigError(
                f"tokens_per_step={c.tokens_per_step} is not a multiple of batch_size * block_size * "
                f"world_size = {per_micro}"
            )
        accum = c.tokens_per_step // per_micro
    else:
        accum = shards_here
    if accum < 1 or accum % shards_here:
        raise ConfigError(
            f"grad_accum={accum} must be a positive multiple of the {shards_here} data shards here"
        )
    return accum


def find_resume_checkpoint(c: TrainConfig, model_config: ModelConfig) -> Path | None:
    """The checkpoint this run continues from (None: a fresh start), refused if it is another model."""
    run_dir = Path(c.run_dir)
    if not c.resume:
        if ckpt.list_step_dirs(run_dir):
            raise ConfigError(f"{run_dir} already holds checkpoints and resume is off: use a new run folder")
        return None
    resume_dir = ckpt.latest_valid_training_checkpoint(run_dir)
    if resume_dir is not None:
        saved = ModelConfig.from_dict(ckpt.read_checkpoint_config(resume_dir)["model"])
        if saved != model_config:
            raise ConfigError(
                f"{resume_dir} holds a model with another config than the one asked for: "
                "use the same preset and overrides to continue, or a new --run"
            )
    return resume_dir


def build_optimizer(model: GPT, c: TrainConfig) -> torch.optim.Optimizer:
    """The one place the optimizer is made (training/optim.py): AdamW, or Muon + AdamW; AdamW fused
    wherever torch has the kernel (CPU, CUDA)."""
    return optim.build_optimizer(model, c.optimizer, c.lr, c.weight_decay, (c.beta1, c.beta2))


def build_loaders(
    c: TrainConfig,
    d: Dist,
    device: torch.device,
    block_size: int,
    tokenizer_sha256: str,
    resume: tuple[dict, dict[str, torch.Tensor]] | None,
) -> dict[int, DevicePrefetcher]:
    """One loader per data shard this process reads, each behind a prefetch thread, at its saved position."""
    n_shards, my_shards = loader_shards(c, d)
    prefetchers = {}
    for shard in my_shards:
        loader = TokenWindowLoader(
            c.corpus,
            LoaderConfig(
                block_size=block_size,
                batch_size=c.batch_size,
                seed=c.seed,
                shuffle_buffer=c.shuffle_buffer,
                rank=shard,
                world_size=n_shards,
            ),
            tokenizer_sha256=tokenizer_sha256,
        )
        if resume is not None:
            loader.load_state_dict(loader_state_from_checkpoint(*resume, shard))
        prefetchers[shard] = DevicePrefetcher(loader, device, depth=c.prefetch)
    return prefetchers


def check_corpus_and_model(c: TrainConfig, verify: bool = True) -> tuple[CorpusInfo, ModelConfig, int]:
    """The corpus (its shards verified against the manifest), the model config, the block size."""
    info = CorpusInfo.from_dir(c.corpus)
    if verify:
        splits = ["train", "validation"] if c.eval_every > 0 else ["train"]
        verify_shards(info, splits, checksums=c.verify_shards)
    model_config = build_model_config(c, info)
    block_size = c.block_size or model_config.max_seq_len
    if block_size > model_config.max_seq_len:
        raise ConfigError(
            f"block_size={block_size} exceeds the model's max_seq_len={model_config.max_seq_len}"
        )
    return info, model_config, block_size


def check_before_launch(c: TrainConfig) -> None:
    """What setup_run would refuse, checked without building a model: for a launcher before torchrun,
    whose report of a failed rank is pages long."""
    device = pick_device(c.device, Dist())
    choose_precision(c.precision, device.type, cuda_capability(device))
    _, model_config, _ = check_corpus_and_model(c)
    find_resume_checkpoint(c, model_config)


@dataclass
class Run:
    """What one train() call works on: the model, optimizer and loaders, and where the loop stands."""

    c: TrainConfig
    d: Dist
    device: torch.device
    info: CorpusInfo
    model_config: ModelConfig
    raw_model: GPT  # the bare GPT: checkpoints, evaluation, samples
    model: torch.nn.Module  # raw_model, compiled and/or DDP-wrapped: the training forward
    optimizer: torch.optim.Optimizer
    precision: Precision  # autocast, and fp16's loss scaling (training/precision.py)
    prefetchers: dict[int, DevicePrefetcher]  # loader shard -> its prefetcher
    block_size: int
    grad_accum: int
    tokens_per_step: int
    checkpoint_extra: dict  # written into every checkpoint's config.json
    step: int  # optimizer steps done
    tokens_seen: int
    last_checkpoint: Path | None  # the newest checkpoint of this run (written, or resumed from)
    logger: MetricsLogger | None = None  # rank 0 only, like bar and tokenizer
    bar: ProgressBar | None = None
    tokenizer: object | None = None  # SentencePiece, for samples
    on_log: Callable[[dict], None] | None = None
    flops_per_token: float = 0.0  # for MFU
    device_peak_flops: float | None = None  # None: unknown (CPU, an unlisted GPU)
    # throughput since the last logged step
    t_last: float = 0.0
    tokens_since: int = 0
    data_wait: float = 0.0
    # what train() returns
    losses: list[tuple[int, float]] = field(default_factory=list)
    val: dict | None = None

    @property
    def shard_cycle(self) -> list[DevicePrefetcher]:
        return list(self.prefetchers.values())


def setup_run(
    c: TrainConfig, d: Dist, device: torch.device, on_log: Callable[[dict], None] | None = None
) -> Run:
    """Read the corpus, decide where to start, build model, optimizer and loaders, open the logs."""
    info, model_config, block_size = check_corpus_and_model(c, verify=d.is_main)
    n_shards, my_shards = loader_shards(c, d)
    grad_accum = resolve_grad_accum(c, d, block_size, len(my_shards))
    tokens_per_step = c.batch_size * block_size * grad_accum * d.world_size

    resume_dir = find_resume_checkpoint(c, model_config)
    tokenizer_sha256 = info.tokenizer_sha256
    if resume_dir is not None:  # the model was built for the tokenizer it was saved with
        tokenizer_sha256 = ckpt.read_checkpoint_config(resume_dir).get("tokenizer_sha256", tokenizer_sha256)

    # The order of what draws from the RNG (init, then restored states) is what makes resume bit-exact.
    torch.manual_seed(c.seed)
    model = GPT(model_config)  # initialised on the CPU, so the weights do not depend on the device
    start_step, tokens_seen, resume = 0, 0, None
    if resume_dir is not None:
        trainer, opt_tensors, trainer_tensors = ckpt.load_training_checkpoint(resume_dir, model)
        resume = (trainer, trainer_tensors)
        start_step, tokens_seen = int(trainer["step"]), int(trainer["tokens_seen"])
    model.to(device)
    precision = Precision(choose_precision(c.precision, device.type, cuda_capability(device)), device)
    if c.activation_checkpointing:
        enable_activation_checkpointing(model)
    optimizer = build_optimizer(model, c)
    if resume_dir is not None:
        optimizer.load_state_dict(ckpt.optimizer_state_from_tensors(opt_tensors, trainer["optimizer"]))
        precision.load_state_dict(trainer.get("precision", {}))
        torch.set_rng_state(trainer_tensors["rng.torch_cpu"])
        if device.type == "cuda" and "rng.torch_cuda" in trainer_tensors:
            torch.cuda.set_rng_state(trainer_tensors["rng.torch_cuda"], device)
    prefetchers = build_loaders(c, d, device, block_size, tokenizer_sha256, resume)

    wrapped: torch.nn.Module = torch.compile(model) if c.compile else model
    if d.world_size > 1:
        from torch.nn.parallel import DistributedDataParallel as DDP

        wrapped = DDP(
            wrapped,
            device_ids=[device.index] if device.type == "cuda" else None,
            find_unused_parameters=model_config.n_experts > 0,  # an expert that got no token has no gradient
        )
    run = Run(
        c=c,
        d=d,
        device=device,
        info=info,
        model_config=model_config,
        raw_model=model,
        model=wrapped,
        optimizer=optimizer,
        precision=precision,
        prefetchers=prefetchers,
        block_size=block_size,
        grad_accum=grad_accum,
        tokens_per_step=tokens_per_step,
        checkpoint_extra={
            "tokenizer_path": str(info.tokenizer_path.resolve()),
            "tokenizer_sha256": tokenizer_sha256,
            "corpus": str(Path(c.corpus).resolve()),
            "train": asdict(c),
        },
        step=start_step,
        tokens_seen=tokens_seen,
        last_checkpoint=resume_dir,
        on_log=on_log,
        flops_per_token=model.flops_per_token(block_size),
        device_peak_flops=peak_flops(device),
    )
    if d.is_main:
        try:
            open_logs(run, n_shards, resume_dir)
        except BaseException:  # e.g. a full disk: stop the prefetch threads before passing it on
            close_run(run)
            raise
    return run


def open_logs(run: Run, n_shards: int, resume_dir: Path | None) -> None:
    """Rank 0: RUN/config.json, the metrics log, the progress bar, and the tokenizer for samples."""
    c, d, model = run.c, run.d, run.raw_model
    run_dir = Path(c.run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    write_json_atomic(
        run_dir / RUN_CONFIG_FILE,
        {
            "train": asdict(c),
            "model": run.model_config.to_dict(),
            "corpus": run.checkpoint_extra["corpus"],
            "tokenizer_path": run.checkpoint_extra["tokenizer_path"],
            "tokenizer_sha256": run.checkpoint_extra["tokenizer_sha256"],
            "world_size": d.world_size,
            "data_shards": n_shards,
            "grad_accum": run.grad_accum,
            "block_size": run.block_size,
            "tokens_per_step": run.tokens_per_step,
            "n_params": model.num_params(),
            "n_params_active": model.num_params(active=True),
            "device": str(run.device),
        },
    )
    run.logger = MetricsLogger(run_dir, resume_step=run.step, tensorboard=c.tensorboard)
    run.bar = ProgressBar(run.step, c.max_steps, enabled=c.progress)
    where = f"resuming from {resume_dir}" if resume_dir is not None else "starting from scratch"
    run.bar.write(
        f"{where}: {model.num_params() / 1e6:.2f}M params ({model.num_params(active=True) / 1e6:.2f}M "
        f"active), {run.tokens_per_step:,} tokens/step = {d.world_size} proc x {run.grad_accum} micro x "
        f"{c.batch_size} x {run.block_size}, device {run.device}, {run.precision.kind}"
    )
    if c.samples or c.eval_tasks:
        try:
            run.tokenizer = load_tokenizer(run.info.tokenizer_path)
        except Exception as e:  # noqa: BLE001 - samples are a nicety; never fail a run for them
            warnings.warn(
                f"samples and eval tasks disabled: cannot load {run.info.tokenizer_path} ({e})", stacklevel=1
            )


def close_run(run: Run) -> None:
    for p in run.prefetchers.values():
        p.close()
    if run.logger is not None:
        run.logger.close()
    if run.bar is not None:
        run.bar.close()


# -----------------------------------------------------------------------------------------------
# One optimizer step


@dataclass
class StepResult:
    """What one step leaves on the device; read (with a GPU sync) only when something is logged."""

    lr: float
    loss_sum: torch.Tensor  # summed over the micro-batches of this process
    grad_norm: torch.Tensor
    expert_load: torch.Tensor | None  # MoE: summed over the micro-batches
    aux_loss: torch.Tensor | None
    _loss: float | None = None  # the mean over all processes, once computed

    def loss(self, run: Run) -> float:
        """The step's loss averaged over micro-batches and processes (every rank must call it)."""
        if self._loss is None:
            mean = self.loss_sum / run.grad_accum
            if run.d.world_size > 1:
                dist.all_reduce(mean, op=dist.ReduceOp.AVG)
            self._loss = mean.item()
        return self._loss


def train_step(run: Run) -> StepResult:
    """grad_accum micro-batches forward and backward, clip, one optimizer step."""
    c = run.c
    lr = lr_at(run.step, c)
    for group in run.optimizer.param_groups:
        group["lr"] = lr
    loss_sum = torch.zeros((), device=run.device)
    load_sum = None
    shard_cycle = run.shard_cycle
    for micro in range(run.grad_accum):
        t0 = time.perf_counter()
        x, y = next(shard_cycle[micro % len(shard_cycle)])
        run.data_wait += time.perf_counter() - t0
        # DDP all-reduces gradients in the backward of the last micro-batch only
        skip_sync = run.d.world_size > 1 and micro < run.grad_accum - 1
        with run.model.no_sync() if skip_sync else contextlib.nullcontext():
            with run.precision.autocast():
                out = run.model(x, y)
                loss = out.total_loss() / run.grad_accum
            run.precision.backward(loss)
        loss_sum += out.loss.detach()
        if run.model_config.n_experts > 0:
            load = out.stats["expert_load"]
            load_sum = load if load_sum is None else load_sum + load
    grad_norm = run.precision.step(run.optimizer, run.raw_model.parameters(), c.grad_clip)
    run.optimizer.zero_grad(set_to_none=True)
    run.step += 1
    run.tokens_seen += run.tokens_per_step
    run.tokens_since += run.tokens_per_step
    aux = out.aux_loss if load_sum is not None else None
    return StepResult(lr, loss_sum, grad_norm, load_sum, aux)


def check_finite(run: Run, result: StepResult, weights: bool = False) -> None:
    """Stop at a NaN/inf loss or gradient norm (and, before a checkpoint, weights), so none is saved."""
    loss, grad_norm = result.loss(run), result.grad_norm.item()
    skipped_by_fp16 = run.precision.scaler is not None  # an inf/NaN fp16 step is skipped and counted
    finite = math.isfinite(loss) and (math.isfinite(grad_norm) or skipped_by_fp16)
    if finite and weights:
        finite = bool(torch.stack([p.isfinite().all() for p in run.raw_model.parameters()]).all())
    if finite:
        return
    kept = run.last_checkpoint if run.last_checkpoint is not None else "none (no checkpoint yet)"
    raise TrainingDiverged(
        f"training diverged at step {run.step} of {run.c.run_dir}: loss {loss}, gradient norm {grad_norm} "
        f"(lr {result.lr:.3g}); nothing was saved after it, the last good checkpoint is {kept}; "
        "lower --lr or raise --warmup-steps, then rerun to continue from that checkpoint"
    )


# -----------------------------------------------------------------------------------------------
# Periodic work: log, evaluate, samples, checkpoint


def log_step(run: Run, result: StepResult, evaluating: bool) -> None:
    """A metrics.jsonl record (with the evaluation's figures on evaluation steps), bar and callback."""
    c, d = run.c, run.d
    loss = result.loss(run)  # also waits for the GPU, so the timing below is real
    check_finite(run, result)
    elapsed = time.perf_counter() - run.t_last
    tok_s = run.tokens_since / elapsed
    record = {
        "step": run.step,
        "loss": loss,
        "lr": result.lr,
        "grad_norm": result.grad_norm.item(),
        "tokens": run.tokens_seen,
        "tokens_per_s": tok_s,
        "data_wait_frac": run.data_wait / elapsed,
        "epoch": run.shard_cycle[0].loader.epoch,
    }
    achieved = mfu(tok_s / d.world_size, run.flops_per_token, run.device_peak_flops)
    if achieved is not None:
        record["mfu"] = achieved
    if run.precision.scaler is not None:
        record.update(loss_scale=run.precision.loss_scale, skipped_steps=run.precision.skipped_steps)
    if result.expert_load is not None:
        record["expert_load"] = (result.expert_load / run.grad_accum).tolist()
        record["aux_loss"] = result.aux_loss.item()
    if evaluating:
        record.update(periodic_evaluation(run))
    run.losses.append((run.step, loss))
    if d.is_main:
        run.logger.log(record)
        run.bar.update(run.step, loss, tok_s)
        if run.on_log is not None:
            run.on_log(record)
        if evaluating and c.plot:
            plot_run(c.run_dir)
    run.t_last, run.tokens_since, run.data_wait = time.perf_counter(), 0, 0.0


def periodic_evaluation(run: Run) -> dict:
    """Every eval_every steps and at the end: what is measured, as fields of the metrics record.

    Validation loss on every rank (each evaluates its share); samples on rank 0.
    """
    c = run.c
    val = evaluate(
        run.raw_model,
        c.corpus,
        "validation",
        run.block_size,
        c.eval_batch_size or c.batch_size,
        c.eval_batches,
        run.device,
    )
    run.val = val
    if run.d.is_main:
        run.bar.write(
            f"step {run.step}: val loss {val['loss']:.4f}, ppl {val['perplexity']:.2f}, bpb {val['bpb']:.4f}"
        )
        if run.tokenizer is not None and c.samples:
            write_samples(run)
    record = {"val_loss": val["loss"], "val_ppl": val["perplexity"], "val_bpb": val["bpb"]}
    if run.d.is_main and run.tokenizer is not None and c.eval_tasks:
        record.update(quick_eval(run.raw_model, run.tokenizer, c.corpus))
    return record


def write_samples(run: Run) -> None:
    c = run.c
    texts = generate_samples(
        run.raw_model,
        run.tokenizer,
        max_new_tokens=c.sample_tokens,
        bos_id=run.info.bos_id,
        device=run.device,
    )
    block = "\n".join(f"[step {run.step}] {t!r}" for t in texts)
    with open(Path(c.run_dir) / SAMPLES_FILE, "a", encoding="utf-8") as f:
        f.write(block + "\n")
    run.logger.add_text("samples", "\n\n".join(texts), run.step)


def training_state(
    step: int, tokens_seen: int, loader_states: dict[int, dict], device: torch.device
) -> tuple[dict, dict[str, torch.Tensor]]:
    """The trainer's JSON and tensor state for a checkpoint: step, loaders, RNG states."""
    json_state: dict = {"tokens_seen": tokens_seen, "loaders": {}}
    tensors = {"rng.torch_cpu": torch.get_rng_state()}
    if device.type == "cuda":
        tensors["rng.torch_cuda"] = torch.cuda.get_rng_state(device)
    for shard, state in loader_states.items():
        json_state["loaders"][str(shard)] = {k: v for k, v in state.items() if not isinstance(v, np.ndarray)}
        for k, v in state.items():
            if isinstance(v, np.ndarray):
                tensors[f"loader.{shard}.{k}"] = torch.from_numpy(np.ascontiguousarray(v))
    return json_state, tensors


def loader_state_from_checkpoint(trainer: dict, tensors: dict[str, torch.Tensor], shard: int) -> dict:
    if str(shard) not in trainer["loaders"]:
        raise ConfigError(
            f"the checkpoint has no loader state for data shard {shard} (it has {sorted(trainer['loaders'])}): "
            "resume with the same data_shards"
        )
    state = dict(trainer["loaders"][str(shard)])
    prefix = f"loader.{shard}."
    for key, value in tensors.items():
        if key.startswith(prefix):
            state[key[len(prefix) :]] = value.numpy()
    return state


def save_checkpoint(run: Run) -> None:
    """Every rank hands its loaders' states to rank 0, which writes RUN/checkpoints/step_N/."""
    c, d = run.c, run.d
    states = {shard: p.state_dict() for shard, p in run.prefetchers.items()}
    if d.world_size > 1:
        gathered: list = [None] * d.world_size
        dist.all_gather_object(gathered, states)  # in-memory between our own processes
        states = {shard: s for part in gathered for shard, s in part.items()}
    if d.is_main:
        json_state, tensors = training_state(run.step, run.tokens_seen, states, run.device)
        json_state["schedule"] = {"kind": c.schedule, "lr": lr_at(max(run.step - 1, 0), c)}
        json_state["precision"] = run.precision.state_dict()  # fp16: loss scale and skipped steps
        run.last_checkpoint = ckpt.save_training_checkpoint(
            c.run_dir,
            run.step,
            run.raw_model,
            run.optimizer,
            json_state,
            tensors,
            extra=run.checkpoint_extra,
            keep_last=c.keep_last,
        )
    if d.world_size > 1:
        dist.barrier()


# -----------------------------------------------------------------------------------------------
# The loop


def train(c: TrainConfig, on_log: Callable[[dict], None] | None = None) -> dict:
    """Train (or continue training) the run in c.run_dir up to c.max_steps; returns a summary dict:
    run_dir, start_step, step, losses [(step, loss) logged by this call], final_loss, val_loss,
    val_bpb, interrupted (the signal number or None), checkpoint (the last one written).

    on_log(record) is called on rank 0 with every metrics.jsonl record as it is written: a caller's
    progress report (the Prefect flow's). Under torchrun, main() passes it on as stdout lines.
    """
    device_kind = (
        "cuda" if c.device == "cuda" or (c.device == "auto" and torch.cuda.is_available()) else "cpu"
    )
    d = setup_distributed(device_kind)
    # Process-wide torch settings are put back afterwards, and the RNG is forked, so that train() can be
    # called several times in one process (tests, a Prefect flow) without one call leaking into the next.
    previous = (
        torch.get_num_threads(),
        torch.are_deterministic_algorithms_enabled(),
        torch.backends.cuda.matmul.allow_tf32,
        torch.backends.cudnn.allow_tf32,
    )
    try:
        device = pick_device(c.device, d)
        if c.threads is not None:
            torch.set_num_threads(c.threads)
        if c.deterministic:
            torch.use_deterministic_algorithms(True)
        if device.type == "cuda":
            torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []), StopSignal() as stop:
            return train_loop(setup_run(c, d, device, on_log), stop)
    finally:
        torch.set_num_threads(previous[0])
        torch.use_deterministic_algorithms(previous[1])
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = previous[2:]
        if d.owns_group:
            dist.destroy_process_group()


def train_loop(run: Run, stop: StopSignal) -> dict:
    """Step until max_steps or a signal; log, evaluate and checkpoint on their schedules."""
    c, d = run.c, run.d
    summary: dict = {"run_dir": str(c.run_dir), "start_step": run.step, "interrupted": None}
    run.t_last = time.perf_counter()
    memory = dict(  # for a CUDA out-of-memory error that names the flags that fit
        config=run.model_config,
        batch_size=c.batch_size,
        grad_accum=run.grad_accum,
        block_size=run.block_size,
        precision=run.precision.kind,
        activation_checkpointing=c.activation_checkpointing,
    )
    try:
        while run.step < c.max_steps:
            with explain_out_of_memory(**memory):
                result = train_step(run)
            stopping = agree_to_stop(stop, d, run.device)  # a signal may reach the ranks at different steps
            last = run.step == c.max_steps or stopping
            evaluating = c.eval_every > 0 and (run.step % c.eval_every == 0 or run.step == c.max_steps)
            if run.step % c.log_every == 0 or evaluating or last:
                log_step(run, result, evaluating)
            if run.step % c.checkpoint_every == 0 or last:
                check_finite(run, result, weights=True)
                save_checkpoint(run)
                run.t_last = time.perf_counter()  # checkpoints do not count as training time
            if stopping:
                summary["interrupted"] = int(stop.signum if stop.signum is not None else signal.SIGTERM)
                if run.bar is not None:
                    run.bar.write(
                        f"stopped by signal at step {run.step}; checkpoint written, rerun to continue"
                    )
                break
    finally:
        close_run(run)
    if d.is_main and c.plot and run.losses:
        plot_run(c.run_dir)
    summary.update(
        losses=run.losses,
        step=run.step,
        final_loss=run.losses[-1][1] if run.losses else None,
        val_loss=run.val["loss"] if run.val else None,
        val_bpb=run.val["bpb"] if run.val else None,
        checkpoint=str(run.last_checkpoint) if run.last_checkpoint is not None else None,
        tokens_seen=run.tokens_seen,
    )
    return summary


def agree_to_stop(stop: StopSignal, d: Dist, device: torch.device) -> bool:
    stopping = stop.signum is not None
    if d.world_size > 1:
        flag = torch.tensor([float(stopping)], device=device)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        stopping = bool(flag.item())
    return stopping


# -----------------------------------------------------------------------------------------------
# Command line: every TrainConfig field is a --flag, and every ModelConfig field a model override


def _parse_bool(text: str) -> bool:
    if text.lower() in ("1", "true", "yes", "on"):
        return True
    if text.lower() in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected a boolean, got {text!r}")


def _arg_type(hint) -> typing.Callable[[str], object]:
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    base = args[0] if args else hint
    if base is bool:
        return _parse_bool
    if base in (int, float, str):
        if args:  # Optional[...]: "none" means None
            return lambda s: None if s.lower() == "none" else base(s)
        return base
    raise TypeError(f"no command-line type for {hint}")


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> typing.NoReturn:
        """A bad flag is a user error (one line from the CLI), not argparse's usage dump and exit."""
        raise ConfigError(f"{message} (python -m training.train --help lists every option)")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="python -m training.train",
        description="Train a GPT on a ptgpt corpus (rerun the same command to resume).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    hints = typing.get_type_hints(TrainConfig)
    for f in fields(TrainConfig):
        if f.name == "model_overrides":
            continue
        flags = ["--" + f.name.replace("_", "-")]
        if f.name == "run_dir":  # --run as in `ptgpt train`; torchrun mistakes it for its --run-path
            flags.append("--run")
        if f.name in ("corpus", "run_dir"):
            parser.add_argument(*flags, dest=f.name, required=True)
        else:
            parser.add_argument(*flags, dest=f.name, type=_arg_type(hints[f.name]), default=f.default)
    model = parser.add_argument_group("model overrides (replace the preset's ModelConfig fields)")
    for name, hint in typing.get_type_hints(ModelConfig).items():
        if name == "vocab_size":
            help_text = "default: the corpus tokenizer's"
        else:
            help_text = None
        model.add_argument(
            "--" + name.replace("_", "-"), dest=f"model.{name}", type=_arg_type(hint), help=help_text
        )
    return parser


def config_from_args(argv: list[str] | None = None) -> TrainConfig:
    args = vars(build_parser().parse_args(argv))
    overrides = {k.split(".", 1)[1]: v for k, v in args.items() if k.startswith("model.") and v is not None}
    train_args = {k: v for k, v in args.items() if not k.startswith("model.")}
    return TrainConfig(**train_args, model_overrides=overrides)


def config_to_args(c: TrainConfig) -> list[str]:
    """The command line that config_from_args turns back into `c`: how a launcher hands a config to
    `torchrun -m training.train`."""
    argv: list[str] = []

    def text(value: object) -> str:
        if value is None:
            return "none"
        return str(value).lower() if isinstance(value, bool) else str(value)

    for f in fields(TrainConfig):
        if f.name != "model_overrides":
            argv += ["--" + f.name.replace("_", "-"), text(getattr(c, f.name))]
    for name, value in c.model_overrides.items():
        argv += ["--" + name.replace("_", "-"), text(value)]
    return argv


def torchrun_command(nproc: int, argv: list[str]) -> list[str]:
    """`torchrun --standalone --nproc_per_node=N -m training.train ARGV`, with this interpreter."""
    return [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc_per_node={nproc}",
        "-m",
        "training.train",
        *argv,
    ]


SUMMARY_KEYS = (
    "run_dir",
    "start_step",
    "step",
    "final_loss",
    "val_loss",
    "val_bpb",
    "checkpoint",
    "tokens_seen",
    "interrupted",
)
PROGRESS_ENV = "PTGPT_PROGRESS_LINES"  # set to 1: rank 0 prints each metrics record on stdout
PROGRESS_PREFIX = "ptgpt-progress "


def print_progress(record: dict) -> None:
    print(PROGRESS_PREFIX + json.dumps(record), flush=True)


def exit_code(summary: dict) -> int:
    """0 when training reached max_steps; 128 + the signal number when a signal stopped it."""
    return 128 + summary["interrupted"] if summary["interrupted"] else 0


def main(argv: list[str] | None = None) -> int:
    """Train; rank 0 prints the summary as one JSON line (the last line of stdout) for launchers.

    A user error (bad flag, corpus, settings, divergence) prints `Error: ...` and exits 2.
    """
    try:
        config = config_from_args(argv)
        on_log = print_progress if os.environ.get(PROGRESS_ENV) == "1" else None
        summary = train(config, on_log=on_log)
    except UserError as e:
        print(f"Error: {e}", file=sys.stderr, flush=True)
        return 2
    if int(os.environ.get("RANK", "0")) == 0:
        print(json.dumps({k: summary.get(k) for k in SUMMARY_KEYS}), flush=True)
    return exit_code(summary)


def run_torchrun(
    nproc: int, argv: list[str], on_log: Callable[[dict], None] | None = None, stderr=None
) -> tuple[int, dict | None]:
    """Run `torchrun ... -m training.train ARGV` on this machine; returns (exit code, rank 0's summary).

    Training then lives in other processes, so a progress callback cannot be handed to train(): rank 0
    prints each metrics record as a `ptgpt-progress {...}` line and this function calls on_log with it.
    Other stdout lines pass through; stderr goes to `stderr` (default: this process's).
    """
    env = {**os.environ, PROGRESS_ENV: "1"}
    summary = None
    with subprocess.Popen(
        torchrun_command(nproc, argv), stdout=subprocess.PIPE, stderr=stderr, text=True, env=env
    ) as proc:
        for line in proc.stdout:
            if line.startswith(PROGRESS_PREFIX):
                if on_log is not None:
                    on_log(json.loads(line[len(PROGRESS_PREFIX) :]))
            elif line.startswith("{"):
                summary = json.loads(line)
            else:
                sys.stdout.write(line)
    return proc.returncode, summary


if __name__ == "__main__":
    sys.exit(main())
