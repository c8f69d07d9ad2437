"""TrainConfig: every knob of a training run and its default, defined once.

This module imports no torch, so the `ptgpt` command line and the Prefect flows read the defaults
(`TrainConfig.preset`, `TrainConfig.max_steps`, ...) without paying for torch at startup. The network's
shape is ModelConfig's (training/model.py): a preset plus overrides.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from common.errors import UserError


class ConfigError(UserError, ValueError):
    """A training setting that cannot work (a range, a name, a combination)."""


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
    verify_shards: bool = True  # sha256 of every shard against the manifest before training starts
    # -- evaluation
    eval_every: int = 250  # steps between evaluations (and at the last step); 0: never
    eval_batches: int | None = 50  # validation batches per process per evaluation; None: the whole split
    eval_batch_size: int | None = None  # None: batch_size
    samples: bool = True  # generate from fixed Portuguese prompts at each evaluation
    sample_tokens: int = 48
    eval_tasks: bool = True  # also lastword_acc, choice_acc of the quick suite (training/eval_tasks.py)
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
    device: str = "auto"  # "auto" (cuda, then mps, then cpu), "cpu", "cuda", "mps"
    precision: str = "auto"  # "auto" (bf16 on Ampere+, fp16 + loss scaling on older GPUs, else fp32), ...
    activation_checkpointing: bool = False  # recompute activations in backward: less memory, more compute
    compile: bool = False  # torch.compile the model
    threads: int | None = None  # torch CPU threads (fixed for reproducibility); None: torch's default
    deterministic: bool = False  # torch.use_deterministic_algorithms (slower on CUDA)

    def __post_init__(self) -> None:
        """Refuse settings that cannot work before any file is read (the CLI shows these as one line)."""
        if self.schedule not in ("cosine", "linear"):
            raise ConfigError(f"schedule must be 'cosine' or 'linear', got {self.schedule!r}")
        if self.optimizer not in ("adamw", "muon"):
            raise ConfigError(f"--optimizer must be 'adamw' or 'muon', got {self.optimizer!r}")
        for name in ("max_steps", "batch_size", "log_every", "checkpoint_every", "keep_last", "prefetch"):
            if getattr(self, name) < 1:
                raise ConfigError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(self, name)}")
        optional = ("block_size", "grad_accum", "tokens_per_step", "data_shards", "eval_batches")
        for name in (*optional, "eval_batch_size", "decay_steps", "threads"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ConfigError(f"--{name.replace('_', '-')} must be >= 1 (or none), got {value}")
        for name in ("eval_every", "warmup_steps", "shuffle_buffer", "sample_tokens"):
            if getattr(self, name) < 0:
                raise ConfigError(f"--{name.replace('_', '-')} must be >= 0, got {getattr(self, name)}")
        for name in ("lr", "min_lr_ratio", "weight_decay", "beta1", "beta2", "grad_clip", "warmdown_frac"):
            value = getattr(self, name)
            if not math.isfinite(value) or value < 0:
                raise ConfigError(f"--{name.replace('_', '-')} must be a finite number >= 0, got {value}")
        if self.lr == 0:
            raise ConfigError("--lr must be > 0")
        if self.device not in ("auto", "cpu", "cuda", "mps") and not self.device.startswith("cuda:"):
            raise ConfigError(f"--device must be auto, cpu, cuda or mps, got {self.device!r}")
        if self.precision not in ("auto", "bf16", "fp16", "fp32"):
            raise ConfigError(f"--precision must be auto, bf16, fp16 or fp32, got {self.precision!r}")
        from training.model import PRESETS  # torch is imported when a config is made, not for its defaults

        if self.preset not in PRESETS:
            raise ConfigError(f"unknown preset {self.preset!r}: choose one of {', '.join(PRESETS)}")


# Instruction fine-tuning (training/sft.py): its knobs and defaults, for `ptgpt sft` to read without torch.
@dataclass
class SFTConfig:
    base: str  # pre-trained RUN folder (its best checkpoint) or a checkpoint folder
    data: str  # JSONL conversations to train on
    run_dir: str  # SFT RUN folder
    val_data: str | None = None  # JSONL conversations for a validation loss
    max_steps: int = 300
    batch_size: int = 16
    lr: float = 5e-4
    min_lr_ratio: float = 0.1
    warmup_steps: int = 20
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    seed: int = 1337
    max_len: int | None = None  # longest conversation in tokens; None: the model's context
    eval_every: int = 100  # steps between validation losses (needs val_data); 0: never
    checkpoint_every: int = 100
    keep_last: int = 2
    log_every: int = 10
    device: str = "auto"
    threads: int | None = None
    progress: bool = True
    tensorboard: bool = False
    plot: bool = True

    def __post_init__(self) -> None:
        for name in ("max_steps", "batch_size", "checkpoint_every", "keep_last", "log_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
