"""The one training loop. Pre-training, SFT and classification each supply a Task (their data, loss,
evaluation and what to save); everything else comes from here: devices and torchrun/DDP, precision,
the optimizer factory, the learning-rate schedule (in steps or in time), gradient accumulation, the
NaN guard, the SIGTERM checkpoint, metrics, checkpoints and exact resume.

Read top to bottom: schedule -> processes and devices -> the Task a run kind supplies -> setting up a
run (resume decision, model, optimizer, data) -> one step -> periodic work (log, evaluate, checkpoint)
-> the loop (run_task). Command lines and torchrun launching are training/launch.py.

A checkpoint (training/checkpoint.py) holds the model, the optimizer, the loop's state (step, tokens,
training seconds, RNG, fp16 loss scale, the run kind) and the task's data positions, so rerunning the
same command continues bit-exactly on CPU from the newest checkpoint that verifies. With a time budget
the learning rate follows the training seconds instead of the step, so such a run resumes exactly but
is not repeatable step for step across machines.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist

from common.errors import UserError
from common.files import write_json_atomic
from training import checkpoint as ckpt
from training import optim
from training.config import ConfigError, LoopConfig
from training.flops import mfu, peak_flops
from training.metrics import MetricsLogger, ProgressBar, plot_run
from training.model import GPT
from training.precision import (
    Precision,
    choose_precision,
    cuda_capability,
    enable_activation_checkpointing,
    explain_out_of_memory,
)
from training.precision import pick_device as pick_any_device

RUN_CONFIG_FILE = "config.json"


# -----------------------------------------------------------------------------------------------
# Learning rate: a pure function of the step (or of the training seconds under a time budget), so
# resuming needs no scheduler state


def lr_at(step: int, c: LoopConfig, progress: float | None = None) -> float:
    """Learning rate for optimizer step `step` (0-based): linear warmup, then cosine or linear warmdown.

    progress: the share of the time budget spent (0..1); when given, the decay after warmup follows
    it instead of the step count, so the run ends at its lowest learning rate when the time is up.
    """
    min_lr = c.lr * c.min_lr_ratio
    if step < c.warmup_steps:
        return c.lr * (step + 1) / c.warmup_steps
    if progress is None:
        total = c.decay_steps or c.max_steps
        progress = (step - c.warmup_steps) / max(1, total - c.warmup_steps)
    progress = min(1.0, max(0.0, progress))
    if c.schedule == "cosine":
        return min_lr + 0.5 * (c.lr - min_lr) * (1 + math.cos(math.pi * progress))
    if progress < 1 - c.warmdown_frac:
        return c.lr
    return min_lr + (c.lr - min_lr) * (1 - progress) / max(c.warmdown_frac, 1e-9)


# -----------------------------------------------------------------------------------------------
# Processes and devices


@dataclass
class Dist:
    rank: int = 0
    local_rank: int = 0
    world_size: int = 1
    owns_group: bool = False  # this run_task() call initialised the process group (and destroys it)

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


class TrainingDiverged(UserError):
    """The loss or the gradient norm became NaN or infinite; no checkpoint is written after it."""


# -----------------------------------------------------------------------------------------------
# What a run kind supplies


@dataclass
class Loss:
    """One micro-batch's forward: what to backpropagate, and what to log."""

    total: torch.Tensor  # the loss to backpropagate (auxiliary losses included)
    value: torch.Tensor  # the loss to log (detached)
    tokens: int  # examples' tokens (or rows) this micro-batch trained on
    expert_load: torch.Tensor | None = None  # MoE: tokens per expert
    aux_loss: torch.Tensor | None = None


class Task:
    """A kind of run. The loop calls, in order: prepare, build_model, (load_state on resume),
    start_data, then next_batch/loss each micro-batch and evaluate/data_state periodically."""

    kind = "task"  # recorded in every checkpoint: a run folder holds one kind of run
    c: LoopConfig

    def prepare(self, d: Dist) -> None:
        """Read and check inputs (data, base model) before any model is built; set max_steps if derived."""

    def build_model(self) -> torch.nn.Module:
        """The trained module on the CPU: fresh (the loop has seeded torch) or from a base checkpoint."""
        raise NotImplementedError

    def checkpoint_model(self, module: torch.nn.Module) -> GPT:
        """The GPT a checkpoint stores; other trained tensors go in extra_tensors."""
        return module

    def extra_tensors(self, module: torch.nn.Module) -> dict[str, torch.Tensor]:
        return {}

    def load_extra_tensors(self, module: torch.nn.Module, tensors: dict[str, torch.Tensor]) -> None:
        """Put back what extra_tensors saved (called on resume, before the module moves to its device)."""

    def check_resume(self, meta: dict) -> None:
        """Refuse a checkpoint of another model (meta is its config.json)."""

    def optimizer_groups(self, module: torch.nn.Module) -> list[dict]:
        """Extra parameter groups ("params", "lr_scale", "weight_decay") besides the GPT's own."""
        return []

    def default_grad_accum(self, d: Dist) -> int:
        return 1

    def start_data(self, run: Run, states: dict[str, dict] | None) -> None:
        """Open the data at the saved positions (states: data_state()'s keys of every rank)."""
        raise NotImplementedError

    def next_batch(self, run: Run, micro: int):
        raise NotImplementedError

    def loss(self, model: torch.nn.Module, batch) -> Loss:
        raise NotImplementedError

    def epoch(self) -> int:
        return 0

    def data_state(self) -> dict[str, dict]:
        """This process's data positions by key (numpy arrays allowed); keys are unique over ranks."""
        return {}

    def evaluate(self, run: Run) -> dict:
        """Figures for the metrics record at an evaluation step (rank 0 prints what it wants)."""
        return {}

    def due_for_evaluation(self, run: Run) -> bool:
        every = self.c.eval_every
        return every > 0 and (run.step % every == 0 or run.finishing)

    def checkpoint_extra(self) -> dict:
        """Written into every checkpoint's config.json (tokenizer, corpus, base, chat template...)."""
        return {}

    def run_config(self, run: Run) -> dict:
        """RUN/config.json besides the loop's own fields."""
        return {}

    def summary(self, run: Run) -> dict:
        """Extra fields of run_task's summary."""
        return {}

    def finish(self, run: Run) -> None:
        """After the last checkpoint (rank 0): final files (e.g. a classifier's model folder)."""

    def close(self) -> None:
        """Stop data threads."""


# -----------------------------------------------------------------------------------------------
# Setting up a run


@dataclass
class Run:
    """What one run_task() call works on: the model, optimizer and data, and where the loop stands."""

    c: LoopConfig
    task: Task
    d: Dist
    device: torch.device
    raw_model: torch.nn.Module  # the bare module: checkpoints, evaluation, samples
    model: torch.nn.Module  # raw_model, compiled and/or DDP-wrapped: the training forward
    optimizer: torch.optim.Optimizer
    precision: Precision  # autocast, and fp16's loss scaling (training/precision.py)
    grad_accum: int
    step: int  # optimizer steps done
    tokens_seen: int
    train_seconds: float  # time spent in steps over the whole run (resumes add to it)
    last_checkpoint: Path | None  # the newest checkpoint of this run (written, or resumed from)
    logger: MetricsLogger | None = None  # rank 0 only, like bar
    bar: ProgressBar | None = None
    on_log: Callable[[dict], None] | None = None
    flops_per_token: float = 0.0  # for MFU (GPT runs)
    device_peak_flops: float | None = None  # None: unknown (CPU, an unlisted GPU)
    finishing: bool = False  # this step is the last one (max_steps, time up or a signal)
    # throughput since the last logged step
    t_last: float = 0.0
    tokens_since: int = 0
    tokens_pending: int = 0  # this process's tokens since the last sync_tokens
    data_wait: float = 0.0
    eval_seconds: float = 0.0
    # what run_task() returns
    losses: list[tuple[int, float]] = field(default_factory=list)
    val: dict | None = None

    @property
    def gpt(self) -> GPT:
        return self.task.checkpoint_model(self.raw_model)

    @property
    def time_left(self) -> float | None:
        return None if self.c.time_budget is None else self.c.time_budget - self.train_seconds

    def write(self, message: str) -> None:
        if self.bar is not None:
            self.bar.write(message)


def find_resume_checkpoint(c: LoopConfig, task: Task) -> Path | None:
    """The checkpoint this run continues from (None: a fresh start), refused if it is another run."""
    run_dir = Path(c.run_dir)
    if not c.resume:
        if ckpt.list_step_dirs(run_dir):
            raise ConfigError(f"{run_dir} already holds checkpoints and resume is off: use a new run folder")
        return None
    resume_dir = ckpt.latest_valid_training_checkpoint(run_dir)
    if resume_dir is not None:
        trainer = json.loads((resume_dir / ckpt.TRAINER_JSON_FILE).read_text())
        kind = trainer.get("kind", "sft" if "sampler" in trainer else "pretrain")  # before kinds were kept
        if kind != task.kind:
            raise ConfigError(
                f"{run_dir} holds a {kind} run, not a {task.kind} run: give this one a new run folder"
            )
        task.check_resume(ckpt.read_checkpoint_config(resume_dir))
    return resume_dir


def build_optimizer(module: torch.nn.Module, task: Task, c: LoopConfig) -> torch.optim.Optimizer:
    """The one place the optimizer is made (training/optim.py), plus the task's extra groups."""
    return optim.build_optimizer(
        task.checkpoint_model(module),
        c.optimizer,
        c.lr,
        c.weight_decay,
        (c.beta1, c.beta2),
        extra_groups=task.optimizer_groups(module),
    )


def setup_run(task: Task, d: Dist, device: torch.device, on_log: Callable[[dict], None] | None) -> Run:
    """Decide where to start, build model, optimizer and data, open the logs."""
    task.prepare(d)
    c = task.c  # prepare may fill in what the config left open (training/sizing.py)
    resume_dir = find_resume_checkpoint(c, task)
    # The order of what draws from the RNG (init, then restored states) is what makes resume bit-exact.
    torch.manual_seed(c.seed)
    module = task.build_model()
    step, tokens_seen, train_seconds, trainer, data_states = 0, 0, 0.0, None, None
    if resume_dir is not None:
        trainer, opt_tensors, trainer_tensors = ckpt.load_training_checkpoint(
            resume_dir, task.checkpoint_model(module)
        )
        task.load_extra_tensors(
            module, {k[6:]: v for k, v in trainer_tensors.items() if k.startswith("extra.")}
        )
        step, tokens_seen = int(trainer["step"]), int(trainer.get("tokens_seen", 0))
        train_seconds = float(trainer.get("train_seconds", 0.0))
        data_states = data_states_from_checkpoint(trainer, trainer_tensors)
    module.to(device)
    precision = Precision(choose_precision(c.precision, device.type, cuda_capability(device)), device)
    if c.activation_checkpointing:
        enable_activation_checkpointing(task.checkpoint_model(module))
    optimizer = build_optimizer(module, task, c)
    if trainer is not None:
        optimizer.load_state_dict(ckpt.optimizer_state_from_tensors(opt_tensors, trainer["optimizer"]))
        precision.load_state_dict(trainer.get("precision", {}))
        torch.set_rng_state(trainer_tensors["rng.torch_cpu"])
        if device.type == "cuda" and "rng.torch_cuda" in trainer_tensors:
            torch.cuda.set_rng_state(trainer_tensors["rng.torch_cuda"], device)

    wrapped: torch.nn.Module = torch.compile(module) if c.compile else module
    if d.world_size > 1:
        from torch.nn.parallel import DistributedDataParallel as DDP

        gpt = task.checkpoint_model(module)
        wrapped = DDP(
            wrapped,
            device_ids=[device.index] if device.type == "cuda" else None,
            find_unused_parameters=gpt.config.n_experts > 0,  # an expert that got no token has no gradient
        )
    run = Run(
        c=c,
        task=task,
        d=d,
        device=device,
        raw_model=module,
        model=wrapped,
        optimizer=optimizer,
        precision=precision,
        grad_accum=c.grad_accum or task.default_grad_accum(d),
        step=step,
        tokens_seen=tokens_seen,
        train_seconds=train_seconds,
        last_checkpoint=resume_dir,
        on_log=on_log,
        device_peak_flops=peak_flops(device),
    )
    try:
        task.start_data(run, data_states)
        if d.is_main:
            open_logs(run, resume_dir)
    except BaseException:  # e.g. a full disk: stop the data threads before passing it on
        close_run(run)
        raise
    return run


def open_logs(run: Run, resume_dir: Path | None) -> None:
    """Rank 0: RUN/config.json, the metrics log and the progress bar."""
    c, d, gpt = run.c, run.d, run.gpt
    run_dir = Path(c.run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    config = {
        "kind": run.task.kind,
        run.task.kind if run.task.kind != "pretrain" else "train": asdict(c),
        "model": gpt.config.to_dict(),
        "world_size": d.world_size,
        "grad_accum": run.grad_accum,
        "n_params": gpt.num_params(),
        "n_params_active": gpt.num_params(active=True),
        "device": str(run.device),
        "precision": run.precision.kind,
        **run.task.run_config(run),
    }
    write_json_atomic(run_dir / RUN_CONFIG_FILE, config)
    run.logger = MetricsLogger(run_dir, resume_step=run.step, tensorboard=c.tensorboard)
    run.bar = ProgressBar(run.step, c.max_steps or 0, enabled=c.progress)


def close_run(run: Run) -> None:
    run.task.close()
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


def current_lr(run: Run) -> float:
    c = run.c
    progress = None if c.time_budget is None else run.train_seconds / c.time_budget
    return lr_at(run.step, c, progress)


def train_step(run: Run) -> StepResult:
    """grad_accum micro-batches forward and backward, clip, one optimizer step."""
    c, task = run.c, run.task
    lr = current_lr(run)
    for group in run.optimizer.param_groups:
        group["lr"] = lr * group.get("lr_scale", 1.0)
    loss_sum = torch.zeros((), device=run.device)
    load_sum, aux = None, None
    for micro in range(run.grad_accum):
        t0 = time.perf_counter()
        batch = task.next_batch(run, micro)
        run.data_wait += time.perf_counter() - t0
        # DDP all-reduces gradients in the backward of the last micro-batch only
        skip_sync = run.d.world_size > 1 and micro < run.grad_accum - 1
        with run.model.no_sync() if skip_sync else contextlib.nullcontext():
            with run.precision.autocast():
                out = task.loss(run.model, batch)
                loss = out.total / run.grad_accum
            run.precision.backward(loss)
        loss_sum += out.value
        run.tokens_pending += out.tokens
        if out.expert_load is not None:
            load_sum = out.expert_load if load_sum is None else load_sum + out.expert_load
            aux = out.aux_loss
    params = [p for p in run.raw_model.parameters() if p.requires_grad]
    grad_norm = run.precision.step(run.optimizer, params, c.grad_clip)
    run.optimizer.zero_grad(set_to_none=True)
    run.step += 1
    return StepResult(lr, loss_sum, grad_norm, load_sum, aux)


def sync_tokens(run: Run) -> None:
    """Add every process's tokens since the last call to tokens_seen (one all-reduce under DDP; called
    where every rank logs or checkpoints, so the count stays exact for variable-length examples)."""
    pending = run.tokens_pending
    if run.d.world_size > 1:
        total = torch.tensor([pending], device=run.device, dtype=torch.float64)
        dist.all_reduce(total)
        pending = int(total.item())
    run.tokens_seen += pending
    run.tokens_since += pending
    run.tokens_pending = 0


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
# Periodic work: log, evaluate, checkpoint


def log_step(run: Run, result: StepResult, evaluating: bool) -> None:
    """A metrics.jsonl record (with the evaluation's figures on evaluation steps), bar and callback."""
    d = run.d
    loss = result.loss(run)  # also waits for the GPU, so the timing below is real
    check_finite(run, result)
    sync_tokens(run)
    elapsed = max(time.perf_counter() - run.t_last, 1e-9)
    tok_s = run.tokens_since / elapsed
    record = {
        "step": run.step,
        "loss": loss,
        "lr": result.lr,
        "grad_norm": result.grad_norm.item(),
        "tokens": run.tokens_seen,
        "tokens_per_s": tok_s,
        "data_wait_frac": run.data_wait / elapsed,
        "epoch": run.task.epoch(),
        "train_seconds": run.train_seconds,
    }
    achieved = mfu(tok_s / d.world_size, run.flops_per_token, run.device_peak_flops)
    if achieved is not None and run.flops_per_token:
        record["mfu"] = achieved
    if run.precision.scaler is not None:
        record.update(loss_scale=run.precision.loss_scale, skipped_steps=run.precision.skipped_steps)
    if result.expert_load is not None:
        record["expert_load"] = (result.expert_load / run.grad_accum).tolist()
        record["aux_loss"] = result.aux_loss.item()
    if evaluating:
        t0 = time.perf_counter()
        record.update(run.task.evaluate(run))
        run.eval_seconds += time.perf_counter() - t0
        record["eval_seconds"] = run.eval_seconds
    run.losses.append((run.step, loss))
    if d.is_main:
        run.logger.log(record)
        run.bar.update(run.step, loss, tok_s)
        if run.on_log is not None:
            run.on_log(record)
        if evaluating and run.c.plot:
            plot_run(run.c.run_dir)
    run.t_last, run.tokens_since, run.data_wait = time.perf_counter(), 0, 0.0


def data_states_from_checkpoint(trainer: dict, tensors: dict[str, torch.Tensor]) -> dict[str, dict]:
    """The task's data positions by key: JSON parts from trainer.json, arrays from the tensors."""
    states = {key: dict(state) for key, state in trainer.get("loaders", {}).items()}
    for name, value in tensors.items():
        if name.startswith("loader."):
            key, _, field_name = name[len("loader.") :].partition(".")
            states.setdefault(key, {})[field_name] = value.numpy()
    if "sampler" in trainer:  # SFT checkpoints before the one loop
        states.setdefault("sampler", trainer["sampler"])
    return states


def save_checkpoint(run: Run) -> None:
    """Every rank hands its data positions to rank 0, which writes RUN/checkpoints/step_N/."""
    c, d, task = run.c, run.d, run.task
    sync_tokens(run)
    states = task.data_state()
    if d.world_size > 1:
        gathered: list = [None] * d.world_size
        dist.all_gather_object(gathered, states)  # in-memory between our own processes
        states = {key: s for part in gathered for key, s in part.items()}
    if d.is_main:
        json_state: dict = {
            "kind": task.kind,
            "tokens_seen": run.tokens_seen,
            "train_seconds": run.train_seconds,
            "loaders": {},
            "schedule": {"kind": c.schedule, "lr": lr_at(max(run.step - 1, 0), c) if c.max_steps else None},
            "precision": run.precision.state_dict(),  # fp16: loss scale and skipped steps
        }
        tensors = {"rng.torch_cpu": torch.get_rng_state()}
        if run.device.type == "cuda":
            tensors["rng.torch_cuda"] = torch.cuda.get_rng_state(run.device)
        for key, state in states.items():
            json_state["loaders"][key] = {k: v for k, v in state.items() if not isinstance(v, np.ndarray)}
            for k, v in state.items():
                if isinstance(v, np.ndarray):
                    tensors[f"loader.{key}.{k}"] = torch.from_numpy(np.ascontiguousarray(v))
        for name, value in task.extra_tensors(run.raw_model).items():
            tensors[f"extra.{name}"] = value
        run.last_checkpoint = ckpt.save_training_checkpoint(
            c.run_dir,
            run.step,
            run.gpt,
            run.optimizer,
            json_state,
            tensors,
            extra=task.checkpoint_extra(),
            keep_last=c.keep_last,
        )
    if d.world_size > 1:
        dist.barrier()


# -----------------------------------------------------------------------------------------------
# The loop


def run_task(task: Task, on_log: Callable[[dict], None] | None = None) -> dict:
    """Train (or continue training) task.c.run_dir until max_steps, the time budget or a signal;
    returns a summary dict: run_dir, start_step, step, losses [(step, loss) logged by this call],
    final_loss, val_loss, val_bpb, interrupted (the signal number or None), checkpoint (the last one
    written), tokens_seen, train_seconds, eval_seconds, and the task's own fields.

    on_log(record) is called on rank 0 with every metrics.jsonl record as it is written: a caller's
    progress report (the Prefect flow's). Under torchrun, main() passes it on as stdout lines.
    """
    c = task.c
    device_kind = (
        "cuda" if c.device == "cuda" or (c.device == "auto" and torch.cuda.is_available()) else "cpu"
    )
    d = setup_distributed(device_kind)
    # Process-wide torch settings are put back afterwards, and the RNG is forked, so that run_task() can
    # be called several times in one process (tests, a Prefect flow) without one call leaking into the next.
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
            return train_loop(setup_run(task, d, device, on_log), stop)
    finally:
        torch.set_num_threads(previous[0])
        torch.use_deterministic_algorithms(previous[1])
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = previous[2:]
        if d.owns_group:
            dist.destroy_process_group()


def steps_done(run: Run) -> bool:
    c = run.c
    return (c.max_steps is not None and run.step >= c.max_steps) or (
        c.time_budget is not None and run.train_seconds >= c.time_budget
    )


def train_loop(run: Run, stop: StopSignal) -> dict:
    """Step until max_steps, the time budget or a signal; log, evaluate and checkpoint on their schedules."""
    c, d = run.c, run.d
    summary: dict = {"run_dir": str(c.run_dir), "start_step": run.step, "interrupted": None}
    memory = dict(  # for a CUDA out-of-memory error that names the flags that fit
        config=run.gpt.config,
        batch_size=c.batch_size,
        grad_accum=run.grad_accum,
        block_size=getattr(c, "block_size", None) or run.gpt.config.max_seq_len,
        precision=run.precision.kind,
        activation_checkpointing=c.activation_checkpointing,
    )
    started = run.train_seconds
    try:
        if steps_done(run):
            run.write(
                f"{c.run_dir} is already at step {run.step}: nothing to train "
                "(raise --max-steps or --time-budget to continue)"
            )
        run.t_last = time.perf_counter()
        while not steps_done(run):
            t0 = time.perf_counter()
            with explain_out_of_memory(**memory):
                result = train_step(run)
            if c.time_budget is not None and run.device.type == "cuda":
                torch.cuda.synchronize(run.device)  # the budget counts finished work
            run.train_seconds += time.perf_counter() - t0
            stopping = agree_to_stop(stop, run)  # a signal or the clock may reach ranks at different steps
            run.finishing = steps_done(run)
            evaluating = run.task.due_for_evaluation(run)
            if run.step % c.log_every == 0 or evaluating or run.finishing or stopping:
                log_step(run, result, evaluating)
            if run.step % c.checkpoint_every == 0 or run.finishing or stopping:
                t0 = time.perf_counter()
                check_finite(run, result, weights=True)
                save_checkpoint(run)
                run.t_last += time.perf_counter() - t0  # checkpoints do not count as training time
            if stopping:
                summary["interrupted"] = int(stop.signum if stop.signum is not None else signal.SIGTERM)
                run.write(f"stopped by signal at step {run.step}; checkpoint written, rerun to continue")
                break
        if d.is_main and summary["interrupted"] is None:
            run.task.finish(run)
    finally:
        close_run(run)
    if d.is_main and c.plot and run.losses:
        plot_run(c.run_dir)
    summary.update(
        losses=run.losses,
        step=run.step,
        final_loss=run.losses[-1][1] if run.losses else None,
        val_loss=run.val["loss"] if run.val else None,
        val_bpb=run.val.get("bpb") if run.val else None,
        checkpoint=str(run.last_checkpoint) if run.last_checkpoint is not None else None,
        tokens_seen=run.tokens_seen,
        train_seconds=run.train_seconds,
        train_seconds_this_call=run.train_seconds - started,
        eval_seconds=run.eval_seconds,
        **run.task.summary(run),
    )
    return summary


def agree_to_stop(stop: StopSignal, run: Run) -> bool:
    """Every rank stops at the same step: a signal on any rank, or rank 0's clock past the budget."""
    stopping = stop.signum is not None
    if run.d.world_size > 1:
        flag = torch.tensor([float(stopping), run.train_seconds], device=run.device, dtype=torch.float64)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        stopping = bool(flag[0].item())
        run.train_seconds = float(flag[1].item())  # one clock: the learning rate stays equal on all ranks
    return stopping
