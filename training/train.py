"""The trainer: AdamW on the streaming Parquet loader, with exact resume, evaluation, DDP and logs.

    python -m training.train --corpus data/corpus --run runs/tiny --preset tiny --max-steps 2000
    torchrun --standalone --nproc_per_node=8 -m training.train --corpus ... --run-dir ... --preset base

(under torchrun spell the run folder --run-dir: torchrun takes --run for an abbreviation of its --run-path)

Read top to bottom: TrainConfig -> learning-rate schedule -> distributed setup -> train() -> main().

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
import sys
import threading
import time
import typing
import warnings
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist

from training import checkpoint as ckpt
from training.data import CorpusError, CorpusInfo, DevicePrefetcher, LoaderConfig, TokenWindowLoader
from training.evaluate import autocast_context, evaluate, generate_samples, load_tokenizer
from training.flops import mfu, peak_flops
from training.metrics import MetricsLogger, ProgressBar, plot_run
from training.model import GPT, ModelConfig
from training.optim import build_optimizer

RUN_CONFIG_FILE = "config.json"
SAMPLES_FILE = "samples.txt"


@dataclass
class TrainConfig:
    """Everything about a training run except the network's shape (ModelConfig: preset + overrides)."""

    corpus: str  # corpus folder (docs/formats.md section 2)
    run_dir: str  # RUN folder: config, checkpoints, logs
    preset: str = "tiny"  # ModelConfig preset; vocab_size comes from the corpus tokenizer
    model_overrides: dict = field(default_factory=dict)  # ModelConfig fields replacing the preset's
    # -- optimisation
    max_steps: int = 1000  # total optimizer steps (a resumed run stops here too)
    batch_size: int = 16  # windows per micro-batch per process
    block_size: int | None = None  # tokens per window; None: the model's max_seq_len
    grad_accum: int | None = None  # micro-batches per step per process; None: from tokens_per_step, else 1
    tokens_per_step: int | None = None  # target tokens per optimizer step, over all processes
    lr: float = 1e-3  # peak learning rate
    min_lr_ratio: float = 0.1  # final learning rate = lr * min_lr_ratio
    warmup_steps: int = 100  # linear warmup from lr / warmup_steps to lr
    schedule: str = "cosine"  # after warmup: "cosine" decay, or "linear": constant then linear warmdown
    warmdown_frac: float = 0.2  # "linear": fraction of decay_steps spent decaying
    decay_steps: int | None = None  # steps the schedule spans; None: max_steps
    weight_decay: float = 0.1  # on matrices only (GPT.configure_param_groups)
    beta1: float = 0.9
    beta2: float = 0.95
    optimizer: str = "adamw"  # "adamw", or "muon" (hidden matrices; AdamW on the rest): training/optim.py
    grad_clip: float = 1.0  # max global gradient norm; 0 disables clipping
    seed: int = 1337  # model init and data order
    # -- data
    shuffle_buffer: int = 512  # windows mixed before batching (training/data.py)
    data_shards: int | None = None  # loader shards over all processes; None: world size ("virtual ranks")
    prefetch: int = 4  # batches read ahead per loader shard
    # -- evaluation
    eval_every: int = 250  # steps between evaluations (and at the last step); 0: never
    eval_batches: int | None = 50  # validation batches per process per evaluation; None: the whole split
    eval_batch_size: int | None = None  # None: batch_size
    samples: bool = True  # generate from fixed Portuguese prompts at each evaluation
    sample_tokens: int = 48
    # -- checkpoints
    checkpoint_every: int = 500  # steps between checkpoints (also at the end and on SIGTERM/SIGINT)
    keep_last: int = 3  # checkpoints kept; older ones are deleted
    resume: bool = True  # continue from RUN's newest valid checkpoint if there is one
    # -- logging
    log_every: int = 10  # steps between metrics.jsonl records (evaluation steps always log)
    tensorboard: bool = True
    progress: bool = True
    plot: bool = True
    # -- system
    device: str = "auto"  # "auto" (cuda if available), "cpu", "cuda"
    compile: bool = False  # torch.compile the model
    threads: int | None = None  # torch CPU threads (fixed for reproducibility); None: torch's default
    deterministic: bool = False  # torch.use_deterministic_algorithms (slower on CUDA)

    def __post_init__(self) -> None:
        if self.schedule not in ("cosine", "linear"):
            raise ValueError(f"schedule must be 'cosine' or 'linear', got {self.schedule!r}")
        for name in ("max_steps", "batch_size", "log_every", "checkpoint_every", "keep_last"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.eval_every < 0 or self.warmup_steps < 0:
            raise ValueError("eval_every and warmup_steps must be >= 0")


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
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda":
        if not torch.cuda.is_available():
            raise RuntimeError("device 'cuda' asked for, but torch sees no GPU")
        return torch.device("cuda", d.local_rank)
    return torch.device(name)


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
# Run folder and checkpoints


def write_json_atomic(path: Path, obj: dict) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(obj, indent=2) + "\n")
    os.replace(tmp, path)


def loader_shards(c: TrainConfig, d: Dist) -> tuple[int, list[int]]:
    """(number of data shards, the shards this process reads)."""
    n = c.data_shards or d.world_size
    if n % d.world_size:
        raise ValueError(f"data_shards={n} must be a multiple of the world size {d.world_size}")
    return n, list(range(d.rank, n, d.world_size))


def resolve_grad_accum(c: TrainConfig, d: Dist, block_size: int, shards_here: int) -> int:
    if c.grad_accum is not None:
        accum = c.grad_accum
    elif c.tokens_per_step is not None:
        per_micro = c.batch_size * block_size * d.world_size
        if c.tokens_per_step % per_micro:
            raise ValueError(
                f"tokens_per_step={c.tokens_per_step} is not a multiple of batch_size * block_size * "
                f"world_size = {per_micro}"
            )
        accum = c.tokens_per_step // per_micro
    else:
        accum = shards_here
    if accum < 1 or accum % shards_here:
        raise ValueError(
            f"grad_accum={accum} must be a positive multiple of the {shards_here} data shards here"
        )
    return accum


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
        raise ValueError(
            f"the checkpoint has no loader state for data shard {shard} (it has {sorted(trainer['loaders'])}): "
            "resume with the same data_shards"
        )
    state = dict(trainer["loaders"][str(shard)])
    prefix = f"loader.{shard}."
    for key, value in tensors.items():
        if key.startswith(prefix):
            state[key[len(prefix) :]] = value.numpy()
    return state


def save_checkpoint(
    c: TrainConfig,
    d: Dist,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    prefetchers: dict[int, DevicePrefetcher],
    step: int,
    tokens_seen: int,
    extra: dict,
    device: torch.device,
) -> Path | None:
    """Every rank hands its loaders' states to rank 0, which writes the checkpoint."""
    states = {shard: p.state_dict() for shard, p in prefetchers.items()}
    if d.world_size > 1:
        gathered: list = [None] * d.world_size
        dist.all_gather_object(gathered, states)  # in-memory between our own processes
        states = {shard: s for part in gathered for shard, s in part.items()}
    path = None
    if d.is_main:
        json_state, tensors = training_state(step, tokens_seen, states, device)
        json_state["schedule"] = {"kind": c.schedule, "lr": lr_at(max(step - 1, 0), c)}
        path = ckpt.save_training_checkpoint(
            c.run_dir, step, model, optimizer, json_state, tensors, extra=extra, keep_last=c.keep_last
        )
    if d.world_size > 1:
        dist.barrier()
    return path


# -----------------------------------------------------------------------------------------------
# Training


def build_model_config(c: TrainConfig, info: CorpusInfo) -> ModelConfig:
    overrides = dict(c.model_overrides)
    overrides.setdefault("vocab_size", info.vocab_size)
    config = ModelConfig.preset(c.preset, **overrides)
    if config.vocab_size < info.vocab_size:
        raise ValueError(
            f"vocab_size={config.vocab_size} is smaller than the corpus tokenizer's {info.vocab_size}"
        )
    return config


def train(c: TrainConfig) -> dict:
    """Train (or continue training) the run in c.run_dir up to c.max_steps; returns a summary dict:
    run_dir, start_step, step, losses [(step, loss) logged by this call], final_loss, val_loss,
    val_bpb, interrupted (the signal number or None), checkpoint (the last one written)."""
    device_kind = (
        "cuda" if c.device == "cuda" or (c.device == "auto" and torch.cuda.is_available()) else "cpu"
    )
    d = setup_distributed(device_kind)
    device = pick_device(c.device, d)
    # Process-wide torch settings are put back afterwards, and the RNG is forked, so that train() can be
    # called several times in one process (tests, a Prefect flow) without one call leaking into the next.
    previous = (
        torch.get_num_threads(),
        torch.are_deterministic_algorithms_enabled(),
        torch.backends.cuda.matmul.allow_tf32,
        torch.backends.cudnn.allow_tf32,
    )
    if c.threads is not None:
        torch.set_num_threads(c.threads)
    if c.deterministic:
        torch.use_deterministic_algorithms(True)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    try:
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []), StopSignal() as stop:
            return _train(c, d, device, stop)
    finally:
        torch.set_num_threads(previous[0])
        torch.use_deterministic_algorithms(previous[1])
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = previous[2:]
        if d.owns_group:
            dist.destroy_process_group()


def _train(c: TrainConfig, d: Dist, device: torch.device, stop: StopSignal) -> dict:
    run_dir = Path(c.run_dir)
    info = CorpusInfo.from_dir(c.corpus)
    model_config = build_model_config(c, info)
    block_size = c.block_size or model_config.max_seq_len
    if block_size > model_config.max_seq_len:
        raise ValueError(
            f"block_size={block_size} exceeds the model's max_seq_len={model_config.max_seq_len}"
        )
    n_shards, my_shards = loader_shards(c, d)
    grad_accum = resolve_grad_accum(c, d, block_size, len(my_shards))
    tokens_per_step = c.batch_size * block_size * grad_accum * d.world_size

    # -- resume or start
    if not c.resume and ckpt.list_step_dirs(run_dir):
        raise ValueError(f"{run_dir} already holds checkpoints and resume is off: use a new run folder")
    resume_dir = ckpt.latest_valid_training_checkpoint(run_dir) if c.resume else None
    tokenizer_sha256 = info.tokenizer_sha256
    if resume_dir is not None:
        saved = ckpt.read_checkpoint_config(resume_dir)
        if ModelConfig.from_dict(saved["model"]) != model_config:
            raise ValueError(
                f"{resume_dir} holds a model with another config than the one asked for: "
                "use the same preset and overrides to continue, or a new --run"
            )
        tokenizer_sha256 = saved.get("tokenizer_sha256", tokenizer_sha256)
    extra = {
        "tokenizer_path": str(info.tokenizer_path.resolve()),
        "tokenizer_sha256": tokenizer_sha256,
        "corpus": str(Path(c.corpus).resolve()),
        "train": asdict(c),
    }

    torch.manual_seed(c.seed)
    model = GPT(model_config)  # initialised on the CPU, so the weights do not depend on the device
    start_step, tokens_seen = 0, 0
    resume_state = None
    if resume_dir is not None:
        weights, trainer, opt_tensors, trainer_tensors = ckpt.load_training_checkpoint(resume_dir)
        if model_config.tie_embeddings:
            weights["lm_head.weight"] = weights["tok_emb.weight"]
        model.load_state_dict(weights, strict=True)
        resume_state = (trainer, opt_tensors, trainer_tensors)
        start_step, tokens_seen = int(trainer["step"]), int(trainer["tokens_seen"])
    model.to(device)
    fused = True if device.type == "cuda" else None
    optimizer = build_optimizer(model, c.optimizer, c.lr, c.weight_decay, (c.beta1, c.beta2), fused=fused)
    if resume_state is not None:
        trainer, opt_tensors, trainer_tensors = resume_state
        optimizer.load_state_dict(ckpt.optimizer_state_from_tensors(opt_tensors, trainer["optimizer"]))
        torch.set_rng_state(trainer_tensors["rng.torch_cpu"])
        if device.type == "cuda" and "rng.torch_cuda" in trainer_tensors:
            torch.cuda.set_rng_state(trainer_tensors["rng.torch_cuda"], device)

    # -- data: one loader per data shard this process reads, each behind a prefetch thread
    prefetchers: dict[int, DevicePrefetcher] = {}
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
        if resume_state is not None:
            loader.load_state_dict(loader_state_from_checkpoint(resume_state[0], resume_state[2], shard))
        prefetchers[shard] = DevicePrefetcher(loader, device, depth=c.prefetch)

    raw_model = model
    flops_per_token = raw_model.flops_per_token(block_size)
    peak = peak_flops(device)
    is_moe = model_config.n_experts > 0
    if c.compile:
        model = torch.compile(model)
    if d.world_size > 1:
        from torch.nn.parallel import DistributedDataParallel as DDP

        model = DDP(
            model,
            device_ids=[device.index] if device.type == "cuda" else None,
            find_unused_parameters=is_moe,  # an expert that got no token has no gradient
        )

    # -- logs (rank 0)
    logger = bar = None
    if d.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        write_json_atomic(
            run_dir / RUN_CONFIG_FILE,
            {
                "train": asdict(c),
                "model": model_config.to_dict(),
                "corpus": extra["corpus"],
                "tokenizer_path": extra["tokenizer_path"],
                "tokenizer_sha256": tokenizer_sha256,
                "world_size": d.world_size,
                "data_shards": n_shards,
                "grad_accum": grad_accum,
                "block_size": block_size,
                "tokens_per_step": tokens_per_step,
                "n_params": raw_model.num_params(),
                "n_params_active": raw_model.num_params(active=True),
                "device": str(device),
            },
        )
        logger = MetricsLogger(run_dir, resume_step=start_step, tensorboard=c.tensorboard)
        bar = ProgressBar(start_step, c.max_steps, enabled=c.progress)
        where = f"resuming from {resume_dir}" if resume_dir is not None else "starting from scratch"
        bar.write(
            f"{where}: {raw_model.num_params() / 1e6:.2f}M params ({raw_model.num_params(active=True) / 1e6:.2f}M "
            f"active), {tokens_per_step:,} tokens/step = {d.world_size} proc x {grad_accum} micro x "
            f"{c.batch_size} x {block_size}, device {device}"
        )
    tokenizer = None
    if c.samples and d.is_main:
        try:
            tokenizer = load_tokenizer(info.tokenizer_path)
        except Exception as e:  # noqa: BLE001 - samples are a nicety; never fail a run for them
            warnings.warn(f"samples disabled: cannot load {info.tokenizer_path} ({e})", stacklevel=1)

    # -- the loop
    summary: dict = {"run_dir": str(run_dir), "start_step": start_step, "losses": [], "interrupted": None}
    last_checkpoint = resume_dir
    val: dict | None = None
    step = start_step
    shard_cycle = [prefetchers[s] for s in my_shards]
    t_last, tokens_since, data_wait = time.perf_counter(), 0, 0.0
    try:
        while step < c.max_steps:
            lr = lr_at(step, c)
            for group in optimizer.param_groups:
                group["lr"] = lr
            loss_sum = torch.zeros((), device=device)
            load_sum = None
            for micro in range(grad_accum):
                t0 = time.perf_counter()
                x, y = next(shard_cycle[micro % len(shard_cycle)])
                data_wait += time.perf_counter() - t0
                # DDP all-reduces gradients in the backward of the last micro-batch only
                skip_sync = d.world_size > 1 and micro < grad_accum - 1
                with model.no_sync() if skip_sync else contextlib.nullcontext():
                    with autocast_context(device):
                        out = model(x, y)
                        loss = out.total_loss() / grad_accum
                    loss.backward()
                loss_sum += out.loss.detach()
                if is_moe:
                    load = out.stats["expert_load"]
                    load_sum = load if load_sum is None else load_sum + load
            grad_norm = (
                torch.nn.utils.clip_grad_norm_(raw_model.parameters(), c.grad_clip)
                if c.grad_clip > 0
                else torch.zeros((), device=device)
            )
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            step += 1
            tokens_seen += tokens_per_step
            tokens_since += tokens_per_step

            # agree on stopping: a signal may reach the ranks at different steps
            stopping = stop.signum is not None
            if d.world_size > 1:
                flag = torch.tensor([float(stopping)], device=device)
                dist.all_reduce(flag, op=dist.ReduceOp.MAX)
                stopping = bool(flag.item())
            last = step == c.max_steps or stopping
            evaluating = c.eval_every > 0 and (step % c.eval_every == 0 or step == c.max_steps)

            if step % c.log_every == 0 or evaluating or last:
                loss_mean = loss_sum / grad_accum
                if d.world_size > 1:
                    dist.all_reduce(loss_mean, op=dist.ReduceOp.AVG)
                loss_value = loss_mean.item()  # also waits for the GPU, so the timing below is real
                elapsed = time.perf_counter() - t_last
                tok_s = tokens_since / elapsed
                record = {
                    "step": step,
                    "loss": loss_value,
                    "lr": lr,
                    "grad_norm": grad_norm.item(),
                    "tokens": tokens_seen,
                    "tokens_per_s": tok_s,
                    "data_wait_frac": data_wait / elapsed,
                    "epoch": prefetchers[my_shards[0]].loader.epoch,
                }
                achieved = mfu(tok_s / d.world_size, flops_per_token, peak)
                if achieved is not None:
                    record["mfu"] = achieved
                if is_moe and load_sum is not None:
                    record["expert_load"] = (load_sum / grad_accum).tolist()
                    record["aux_loss"] = out.aux_loss.item()
                t_last, tokens_since, data_wait = time.perf_counter(), 0, 0.0
                if evaluating:
                    val = evaluate(
                        raw_model,
                        c.corpus,
                        "validation",
                        block_size,
                        c.eval_batch_size or c.batch_size,
                        c.eval_batches,
                        device,
                    )
                    record.update(val_loss=val["loss"], val_ppl=val["perplexity"], val_bpb=val["bpb"])
                summary["losses"].append((step, loss_value))
                if d.is_main:
                    logger.log(record)
                    bar.update(step, loss_value, tok_s)
                    if evaluating:
                        bar.write(
                            f"step {step}: val loss {val['loss']:.4f}, ppl {val['perplexity']:.2f}, "
                            f"bpb {val['bpb']:.4f}"
                        )
                        if tokenizer is not None:
                            write_samples(raw_model, tokenizer, info, c, step, device, logger, run_dir)
                        if c.plot:
                            plot_run(run_dir)
                t_last = time.perf_counter()  # evaluation and logging do not count as training time

            if step % c.checkpoint_every == 0 or last:
                last_checkpoint = save_checkpoint(
                    c, d, raw_model, optimizer, prefetchers, step, tokens_seen, extra, device
                )
                t_last = time.perf_counter()
            if stopping:
                summary["interrupted"] = int(stop.signum if stop.signum is not None else signal.SIGTERM)
                if bar is not None:
                    bar.write(f"stopped by signal at step {step}; checkpoint written, rerun to continue")
                break
    finally:
        for p in prefetchers.values():
            p.close()
        if logger is not None:
            logger.close()
        if bar is not None:
            bar.close()
    if d.is_main and c.plot and summary["losses"]:
        plot_run(run_dir)
    summary.update(
        step=step,
        final_loss=summary["losses"][-1][1] if summary["losses"] else None,
        val_loss=val["loss"] if val else None,
        val_bpb=val["bpb"] if val else None,
        checkpoint=str(last_checkpoint) if last_checkpoint is not None else None,
        tokens_seen=tokens_seen,
    )
    return summary


def write_samples(
    model: GPT,
    tokenizer,
    info: CorpusInfo,
    c: TrainConfig,
    step: int,
    device: torch.device,
    logger: MetricsLogger,
    run_dir: Path,
) -> None:
    texts = generate_samples(
        model, tokenizer, max_new_tokens=c.sample_tokens, bos_id=info.bos_id, device=device
    )
    block = "\n".join(f"[step {step}] {t!r}" for t in texts)
    with open(run_dir / SAMPLES_FILE, "a", encoding="utf-8") as f:
        f.write(block + "\n")
    logger.add_text("samples", "\n\n".join(texts), step)


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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
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


def main(argv: list[str] | None = None) -> int:
    """Train; rank 0 prints the summary as one JSON line (the last line of stdout) for launchers."""
    config = config_from_args(argv)
    try:
        summary = train(config)
    except (CorpusError, ValueError, FileNotFoundError) as e:  # bad input: a message, not a traceback
        print(f"training.train: error: {e}", file=sys.stderr)
        return 2
    if int(os.environ.get("RANK", "0")) == 0:
        keys = SUMMARY_KEYS
        print(json.dumps({k: summary.get(k) for k in keys}), flush=True)
    return 128 + summary["interrupted"] if summary["interrupted"] else 0


if __name__ == "__main__":
    sys.exit(main())
