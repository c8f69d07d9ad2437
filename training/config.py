"""Every knob of a training run and its default, defined once.

LoopConfig holds what the one training loop (training/loop.py) reads: optimisation, schedule, time
budget, checkpoints, logs, device and precision. TrainConfig (pre-training), SFTConfig (instruction
tuning) and ClassifyConfig (a classification head) add what their data and model need and change a
few defaults. This module imports no torch, so the `ptgpt` command line and the Prefect flows read
the defaults without paying for torch at startup. The network's shape is ModelConfig's
(training/model.py): a preset plus overrides.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import ClassVar

from common.errors import UserError


class ConfigError(UserError, ValueError):
    """A training setting that cannot work (a range, a name, a combination)."""


def field_help(cls: type, name: str) -> str:
    """The comment after `name:` in cls (or a base class): the one place a field's meaning is written,
    shown by `ptgpt ... --help` and `python -m training.train --help`."""
    import inspect

    for klass in cls.__mro__:
        try:
            source = inspect.getsource(klass)
        except (OSError, TypeError):
            continue
        for line in source.splitlines():
            stripped = line.strip()
            if stripped.startswith(f"{name}:") and "#" in stripped:
                return stripped.split("#", 1)[1].strip()
    return ""


_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smh]?)\s*$")


def parse_duration(text: str | float | int | None) -> float | None:
    """`90s`, `30m`, `2h`, `45` (seconds) -> seconds; None and "none" -> None."""
    if text is None or isinstance(text, int | float):
        return None if text is None else float(text)
    if text.strip().lower() in ("", "none"):
        return None
    found = _DURATION.match(text.lower())
    if found is None:
        raise ConfigError(f"--time-budget {text!r}: give a duration like 90s, 30m or 2h")
    return float(found.group(1)) * {"": 1, "s": 1, "m": 60, "h": 3600}[found.group(2)]


@dataclass(kw_only=True)
class LoopConfig:
    """What every kind of run (pre-training, SFT, classification) gives the one training loop."""

    steps_from_data: ClassVar[bool] = False  # max_steps None: the run kind derives it (epochs)

    run_dir: str  # RUN folder: config, checkpoints, logs
    # -- length: a number of optimizer steps, a time budget, or both (whichever ends first)
    max_steps: int | None = 1000  # total optimizer steps (a resumed run stops here too); None: no limit
    time_budget: float | None = None  # seconds of training (evaluation not counted): "30m" on the CLI
    # -- optimisation
    batch_size: int = 16  # examples (windows, conversations, texts) per micro-batch per process
    grad_accum: int | None = None  # micro-batches per step per process; None: the run kind's default
    lr: float = 1e-3  # peak learning rate
    min_lr_ratio: float = 0.1  # final learning rate = lr * min_lr_ratio
    warmup_steps: int = 100  # linear warmup from lr / warmup_steps to lr
    schedule: str = "cosine"  # after warmup: "cosine" decay, or "linear": constant then linear warmdown
    warmdown_frac: float = 0.2  # "linear": fraction of the run spent decaying
    decay_steps: int | None = None  # steps the schedule spans; None: max_steps (or the time budget)
    weight_decay: float = 0.1  # on matrices only (GPT.configure_param_groups)
    beta1: float = 0.9  # AdamW's first-moment decay
    beta2: float = 0.95  # AdamW's second-moment decay
    optimizer: str = "adamw"  # "adamw", or "muon" (hidden matrices; AdamW on the rest): training/optim.py
    grad_clip: float = 1.0  # max global gradient norm; 0 disables clipping
    seed: int = 1337  # model init and data order
    # -- evaluation and checkpoints
    eval_every: int = 250  # steps between evaluations (and at the last step); 0: never
    checkpoint_every: int = 500  # steps between checkpoints (also at the end and on SIGTERM/SIGINT)
    keep_last: int = 3  # checkpoints kept; older ones are deleted
    resume: bool = True  # continue from RUN's newest valid checkpoint if there is one
    # -- logging
    log_every: int = 10  # steps between metrics.jsonl records (evaluation steps always log)
    tensorboard: bool = True  # RUN/tb/ events
    progress: bool = True  # a progress bar on stderr
    plot: bool = True  # RUN/loss.png, refreshed at each evaluation
    # -- system
    device: str = "auto"  # "auto" (cuda, then mps, then cpu), "cpu", "cuda", "mps"
    precision: str = "auto"  # "auto" (bf16 on Ampere+, fp16 + loss scaling on older GPUs, else fp32), ...
    activation_checkpointing: bool = False  # recompute activations in backward: less memory, more compute
    compile: bool = False  # torch.compile the model
    threads: int | None = None  # torch CPU threads (fixed for reproducibility); None: torch's default
    deterministic: bool = False  # torch.use_deterministic_algorithms (slower on CUDA)

    def __post_init__(self) -> None:
        """Refuse settings that cannot work before any file is read (the CLI shows these as one line)."""
        self.time_budget = parse_duration(self.time_budget)
        if self.time_budget is not None and (not math.isfinite(self.time_budget) or self.time_budget <= 0):
            raise ConfigError(f"--time-budget must be a positive duration, got {self.time_budget}")
        if self.max_steps is None and self.time_budget is None and not self.steps_from_data:
            raise ConfigError("--max-steps none needs a --time-budget: the run would never end")
        if self.schedule not in ("cosine", "linear"):
            raise ConfigError(f"schedule must be 'cosine' or 'linear', got {self.schedule!r}")
        if self.optimizer not in ("adamw", "muon"):
            raise ConfigError(f"--optimizer must be 'adamw' or 'muon', got {self.optimizer!r}")
        for name in ("batch_size", "log_every", "checkpoint_every", "keep_last"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise ConfigError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(self, name)}")
        for name in ("max_steps", "grad_accum", "decay_steps", "threads"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ConfigError(f"--{name.replace('_', '-')} must be >= 1 (or none), got {value}")
        for name in ("eval_every", "warmup_steps"):
            if getattr(self, name) < 0:
                raise ConfigError(f"--{name.replace('_', '-')} must be >= 0, got {getattr(self, name)}")
        for name in ("lr", "min_lr_ratio", "weight_decay", "beta1", "beta2", "grad_clip", "warmdown_frac"):
            value = getattr(self, name)
            if value is not None and (not math.isfinite(value) or value < 0):
                raise ConfigError(f"--{name.replace('_', '-')} must be a finite number >= 0, got {value}")
        if self.lr == 0:
            raise ConfigError("--lr must be > 0")
        if self.device not in ("auto", "cpu", "cuda", "mps") and not self.device.startswith("cuda:"):
            raise ConfigError(f"--device must be auto, cpu, cuda or mps, got {self.device!r}")
        if self.precision not in ("auto", "bf16", "fp16", "fp32"):
            raise ConfigError(f"--precision must be auto, bf16, fp16 or fp32, got {self.precision!r}")


@dataclass(kw_only=True)
class TrainConfig(LoopConfig):
    """Pre-training on a corpus: LoopConfig plus the corpus, the network (preset + overrides) and data."""

    corpus: str  # corpus folder (docs/formats.md section 2)
    preset: str = "auto"  # ModelConfig preset, or "auto": sized for --time-budget on this machine, else tiny
    model_overrides: dict = field(default_factory=dict)  # ModelConfig fields replacing the preset's
    block_size: int | None = None  # tokens per window; None: the sizing rule's, else the model's max_seq_len
    tokens_per_step: int | None = None  # target tokens per optimizer step, over all processes
    batch_size: int | None = None  # windows per micro-batch per process; None: the sizing rule's, else 16
    lr: float | None = None  # peak learning rate; None: the sizing rule's, else 1e-3
    # -- data
    shuffle_buffer: int = 512  # windows mixed before batching (training/data.py)
    data_shards: int | None = None  # loader shards over all processes; None: world size ("virtual ranks")
    prefetch: int = 4  # batches read ahead per loader shard
    verify_shards: bool = True  # sha256 of every shard against the manifest before training starts
    # -- evaluation
    eval_batches: int | None = 50  # validation batches per process per evaluation; None: the whole split
    eval_batch_size: int | None = None  # None: batch_size
    samples: bool = True  # generate from fixed Portuguese prompts at each evaluation
    sample_tokens: int = 48  # new tokens per sample (RUN/samples.txt)
    eval_tasks: bool = True  # also lastword_acc, choice_acc of the quick suite (training/eval_tasks.py)

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.prefetch < 1:
            raise ConfigError(f"--prefetch must be >= 1, got {self.prefetch}")
        for name in ("block_size", "tokens_per_step", "data_shards", "eval_batches", "eval_batch_size"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ConfigError(f"--{name.replace('_', '-')} must be >= 1 (or none), got {value}")
        for name in ("shuffle_buffer", "sample_tokens"):
            if getattr(self, name) < 0:
                raise ConfigError(f"--{name.replace('_', '-')} must be >= 0, got {getattr(self, name)}")
        from training.model import PRESETS  # torch is imported when a config is made, not for its defaults

        if self.preset not in PRESETS and self.preset != "auto":
            raise ConfigError(f"unknown preset {self.preset!r}: choose auto or one of {', '.join(PRESETS)}")

    def sized(self) -> bool:
        """Whether training/sizing.py picks the shape: --preset auto, a time budget, no shape field given."""
        from training.sizing import SHAPE_FIELDS

        return (
            self.preset == "auto"
            and self.time_budget is not None
            and not any(k in self.model_overrides for k in SHAPE_FIELDS)
        )


@dataclass(kw_only=True)
class SFTConfig(LoopConfig):
    """Instruction fine-tuning (training/sft.py): a base run plus JSONL conversations."""

    base: str  # pre-trained RUN folder (its best checkpoint) or a checkpoint folder
    data: str  # JSONL conversations to train on
    val_data: str | None = None  # JSONL conversations for a validation loss
    max_len: int | None = None  # longest conversation in tokens; None: the model's context
    max_steps: int | None = 300
    lr: float = 5e-4
    warmup_steps: int = 20
    weight_decay: float = 0.0
    eval_every: int = 100  # steps between validation losses (needs val_data); 0: never
    checkpoint_every: int = 100
    keep_last: int = 2
    tensorboard: bool = False

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.max_len is not None and self.max_len < 2:
            raise ConfigError(f"--max-len must be >= 2, got {self.max_len}")


@dataclass(kw_only=True)
class ClassifyConfig(LoopConfig):
    """A classification head on a base run's final hidden state (training/classify.py)."""

    steps_from_data: ClassVar[bool] = True

    base: str  # pre-trained run or checkpoint folder
    data: str | None = None  # labelled rows (CSV/JSONL of text, label) to train on; None: RUN/data/
    test_data: str | None = None  # labelled rows to score on; None: RUN/data/
    pool: str = "mean"  # "mean" over real tokens, or the "last" real token (which saw the whole text)
    train_layers: str = "all"  # "head", "last" (last block + final norm + head) or "all"
    max_len: int = 128  # tokens per text (BOS included)
    epochs: int = 3  # passes over the training rows (sets max_steps unless a time budget is given)
    head_lr: float = 3e-3  # the new head learns faster than the pre-trained body
    max_steps: int | None = None  # None: epochs x batches per epoch
    lr: float = 5e-4
    min_lr_ratio: float = 0.0
    warmup_steps: int = 0
    weight_decay: float = 0.01
    seed: int = 0
    eval_every: int = 0  # 0: once per epoch
    checkpoint_every: int = 1000
    keep_last: int = 1
    tensorboard: bool = False
    plot: bool = False

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.pool not in ("last", "mean"):
            raise ConfigError(f"--pool must be 'last' or 'mean', got {self.pool!r}")
        if self.train_layers not in ("head", "last", "all"):
            raise ConfigError(f"--train-layers must be 'head', 'last' or 'all', got {self.train_layers!r}")
        if self.epochs < 1 or self.max_len < 2:
            raise ConfigError("--epochs must be >= 1 and --max-len >= 2")
        if not math.isfinite(self.head_lr) or self.head_lr <= 0:
            raise ConfigError(f"--head-lr must be a finite number > 0, got {self.head_lr}")
