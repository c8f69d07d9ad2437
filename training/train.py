"""Pre-training: the streaming Parquet loader and the GPT, as a Task of the one loop (training/loop.py).

    python -m training.train --corpus data/corpus --run runs/tiny --preset tiny --max-steps 2000
    torchrun --standalone --nproc_per_node=8 -m training.train --corpus ... --run-dir ... --preset base

(under torchrun spell the run folder --run-dir: torchrun takes --run for an abbreviation of its --run-path)

Read top to bottom: the corpus and the model config -> the data (one loader per data shard) ->
PretrainTask (what the loop asks of a run kind) -> train() -> command line (main, run_torchrun).
The loop itself (schedule, DDP, precision, NaN guard, SIGTERM, checkpoints, resume) is training/loop.py;
TrainConfig, every knob and its default, is in training/config.py.

One optimizer step = `grad_accum` micro-batches of `batch_size` windows of `block_size` tokens on each
of `world_size` processes. Data are cut into `data_shards` disjoint loader shards (default: one per
process); a process that holds several shards ("virtual ranks") takes its micro-batches from them in
turn. So a run on one process with data_shards=2, grad_accum=2 sees exactly the windows of a run on two
processes with grad_accum=1, and computes the same update up to float summation order.

The RUN folder:

    RUN/config.json                   train + model config, corpus, tokenizer path and sha256
    RUN/tokenizer.model               a copy of the corpus tokenizer: the run works wherever it is moved
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

import sys
import warnings
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path

import torch

from training.chat import load_chat_tokenizer
from training.config import ConfigError, TrainConfig
from training.data import CorpusInfo, DevicePrefetcher, LoaderConfig, TokenWindowLoader, verify_shards
from training.engine import SamplingConfig, sample_texts
from training.eval_tasks import baseline_figures, quick_eval
from training.evaluate import SAMPLE_PROMPTS, evaluate
from training.launch import (
    SUMMARY_KEYS,  # noqa: F401 - the CLI prints these
    config_parser,
    config_to_args,  # noqa: F401 - launchers hand a TrainConfig to torchrun with it
    run_launcher,
    task_main,
)
from training.launch import torchrun_command as task_torchrun_command
from training.loop import (
    Dist,
    Loss,
    Run,
    Task,
    TrainingDiverged,  # noqa: F401 - callers catch it from here
    lr_at,  # noqa: F401 - the schedule, for tests and plots
    pick_device,
    run_task,
)
from training.model import ModelConfig
from training.precision import choose_precision, cuda_capability
from training.runs import TOKENIZER_FILE as RUN_TOKENIZER_FILE
from training.runs import copy_tokenizer_into_run

RUN_CONFIG_FILE = "config.json"
SAMPLES_FILE = "samples.txt"


# -----------------------------------------------------------------------------------------------
# The corpus and the model config


def build_model_config(c: TrainConfig, info: CorpusInfo) -> ModelConfig:
    overrides = dict(c.model_overrides)
    overrides.setdefault("vocab_size", info.vocab_size)
    config = ModelConfig.preset("tiny" if c.preset == "auto" else c.preset, **overrides)
    if config.vocab_size < info.vocab_size:
        raise ConfigError(
            f"vocab_size={config.vocab_size} is smaller than the corpus tokenizer's {info.vocab_size}"
        )
    return config


def size_for_budget(c: TrainConfig, info: CorpusInfo, d: Dist) -> tuple[TrainConfig, dict | None]:
    """c with every setting it leaves open filled in: by training/sizing.py when c.sized() (a new run is
    probed; a run folder that already holds a sized run reuses its choice, so it continues), else the
    fixed defaults (batch 16, lr 1e-3). Returns the config and the sizing record (None: not sized)."""
    from dataclasses import replace

    sizing = None
    if c.sized():
        sizing = recorded_sizing(c.run_dir) or probe_and_choose(c, info, d)
        choice = sizing["choice"]
        block = c.block_size or choice["block_size"]
        batch = c.batch_size or choice["micro_batch"]
        tokens_per_step = c.tokens_per_step
        if tokens_per_step is None and c.grad_accum is None:
            per_micro = batch * block * d.world_size
            tokens_per_step = per_micro * max(1, round(choice["tokens_per_step"] / per_micro))
        shape = dict(choice["shape"])
        if c.model_overrides.get("mlp") == "relu2":  # the parameters of the SwiGLU the rule measured
            shape["mlp_hidden"] = shape["mlp_hidden"] * 3 // 2
        overrides = {**shape, "max_seq_len": block, **c.model_overrides}
        c = replace(
            c,
            model_overrides=overrides,
            block_size=block,
            batch_size=batch,
            tokens_per_step=tokens_per_step,
            lr=c.lr or choice["lr"],
        )
    return replace(c, batch_size=c.batch_size or 16, lr=c.lr or 1e-3), sizing


def recorded_sizing(run_dir: str) -> dict | None:
    """The sizing a run folder's first start recorded in RUN/config.json, if any."""
    import json

    path = Path(run_dir) / RUN_CONFIG_FILE
    try:
        return json.loads(path.read_text()).get("sizing")
    except (OSError, ValueError):
        return None


def probe_and_choose(c: TrainConfig, info: CorpusInfo, d: Dist) -> dict:
    """Rank 0 times the ladder on this device and picks; other ranks take rank 0's pick."""
    from dataclasses import replace

    from training import sizing

    device = pick_device(c.device, d)
    precision = choose_precision(c.precision, device.type, cuda_capability(device))
    train_tokens = int(info.split("train").get("tokens", 0))
    record = None
    if d.is_main:
        probe = sizing.probe_throughput(
            info.vocab_size, device, sizing.probe_seconds(c.time_budget), precision
        )
        if d.world_size > 1:  # one process probed; data parallelism multiplies it (its all-reduce aside)
            speeds = {k: v * d.world_size for k, v in probe.tokens_per_second.items()}
            probe = replace(probe, tokens_per_second=speeds, processes=d.world_size)
        choice = sizing.choose_size(probe, c.time_budget, train_tokens)
        record = {"probe": probe.to_dict(), "choice": choice.to_dict(), "budget_seconds": c.time_budget}
    if d.world_size > 1:
        import torch.distributed as dist

        box = [record]
        dist.broadcast_object_list(box, src=0)
        record = box[0]
    return record


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
    """What setup would refuse, checked without building a model: for a launcher before torchrun,
    whose report of a failed rank is pages long."""
    from dataclasses import replace

    from training.loop import find_resume_checkpoint

    if c.sized() and recorded_sizing(c.run_dir) is None:
        # a new sized run: the ranks' rank 0 probes; checking corpus and settings needs no probe here
        c = replace(c, model_overrides={**c.model_overrides, "n_layer": 1})
    device = pick_device(c.device, Dist())
    choose_precision(c.precision, device.type, cuda_capability(device))
    task = PretrainTask(c)
    task.prepare(Dist(), verify=True)
    find_resume_checkpoint(c, task)


# -----------------------------------------------------------------------------------------------
# Pre-training as a task of the one loop


class PretrainTask(Task):
    """Next-token prediction on the corpus's train split; validation bpb, samples and the quick suite."""

    kind = "pretrain"

    def __init__(self, c: TrainConfig):
        self.c = c
        self.prefetchers: dict[int, DevicePrefetcher] = {}
        self.tokenizer = None  # rank 0, for samples and the quick suite
        self._baselines: dict | None = None

    def prepare(self, d: Dist, verify: bool | None = None) -> None:
        self.d = d
        self.c, self.sizing = size_for_budget(self.c, CorpusInfo.from_dir(self.c.corpus), d)
        c = self.c
        self.info, self.model_config, self.block_size = check_corpus_and_model(
            c, verify=d.is_main if verify is None else verify
        )
        self.n_shards, self.my_shards = loader_shards(c, d)
        self.grad_accum = resolve_grad_accum(c, d, self.block_size, len(self.my_shards))
        self.tokenizer_sha256 = self.info.tokenizer_sha256

    def check_resume(self, meta: dict) -> None:
        if ModelConfig.from_dict(meta["model"]) != self.model_config:
            raise ConfigError(
                f"{self.c.run_dir} holds a model with another config than the one asked for: "
                "use the same preset and overrides to continue, or a new --run"
            )
        # the model was built for the tokenizer it was saved with
        self.tokenizer_sha256 = meta.get("tokenizer_sha256", self.tokenizer_sha256)

    def build_model(self) -> torch.nn.Module:
        from training.model import GPT

        return GPT(self.model_config)  # initialised on the CPU, so the weights do not depend on the device

    def default_grad_accum(self, d: Dist) -> int:
        return self.grad_accum

    def start_data(self, run: Run, states: dict[str, dict] | None) -> None:
        """One loader per data shard this process reads, each behind a prefetch thread, at its position."""
        c = self.c
        run.grad_accum = self.grad_accum
        run.flops_per_token = run.gpt.flops_per_token(self.block_size)
        for shard in self.my_shards:
            loader = TokenWindowLoader(
                c.corpus,
                LoaderConfig(
                    block_size=self.block_size,
                    batch_size=c.batch_size,
                    seed=c.seed,
                    shuffle_buffer=c.shuffle_buffer,
                    rank=shard,
                    world_size=self.n_shards,
                ),
                tokenizer_sha256=self.tokenizer_sha256,
            )
            if states is not None:
                if str(shard) not in states:
                    raise ConfigError(
                        f"the checkpoint has no loader state for data shard {shard} (it has "
                        f"{sorted(states)}): resume with the same data_shards"
                    )
                loader.load_state_dict(states[str(shard)])
            self.prefetchers[shard] = DevicePrefetcher(loader, run.device, depth=c.prefetch)
        if run.d.is_main:
            copy_tokenizer_into_run(c.run_dir, self.info.tokenizer_path)
            if c.samples or c.eval_tasks:
                try:
                    self.tokenizer = load_chat_tokenizer(self.info.tokenizer_path)
                except Exception as e:  # noqa: BLE001 - samples are a nicety; never fail a run for them
                    warnings.warn(
                        f"samples and eval tasks disabled: cannot load {self.info.tokenizer_path} ({e})",
                        stacklevel=1,
                    )

    def next_batch(self, run: Run, micro: int):
        cycle = list(self.prefetchers.values())
        return next(cycle[micro % len(cycle)])

    def loss(self, model: torch.nn.Module, batch) -> Loss:
        x, y = batch
        out = model(x, y)
        load = out.stats.get("expert_load") if self.model_config.n_experts > 0 else None
        return Loss(
            out.total_loss(), out.loss.detach(), x.numel(), load, out.aux_loss if load is not None else None
        )

    def epoch(self) -> int:
        return next(iter(self.prefetchers.values())).loader.epoch

    def data_state(self) -> dict[str, dict]:
        return {str(shard): p.state_dict() for shard, p in self.prefetchers.items()}

    def evaluate(self, run: Run) -> dict:
        """Validation loss on every rank (each evaluates its share); samples and the suite on rank 0."""
        c = self.c
        val = evaluate(
            run.gpt,
            c.corpus,
            "validation",
            self.block_size,
            c.eval_batch_size or c.batch_size,
            c.eval_batches,
            run.device,
            precision=run.precision.kind,
        )
        run.val = val
        record = {"val_loss": val["loss"], "val_ppl": val["perplexity"], "val_bpb": val["bpb"]}
        if run.d.is_main:
            line = f"step {run.step}: val loss {val['loss']:.4f}, ppl {val['perplexity']:.2f}, bpb {val['bpb']:.4f}"
            if c.eval_tasks:
                record.update(self.baselines())
            if "ngram_val_bpb" in record:
                ngram = record["ngram_val_bpb"]
                verdict = "beats" if val["bpb"] < ngram else "loses to"
                line += f" ({verdict} the {int(record['ngram_order'])}-gram's {ngram:.4f})"
            run.write(line)
            if self.tokenizer is not None and c.samples:
                self.write_samples(run)
            if self.tokenizer is not None and c.eval_tasks:
                record.update(quick_eval(run.gpt, self.tokenizer.sp, c.corpus))
        return record

    def baselines(self) -> dict:
        """The n-gram and heuristic figures beside the model's (fitted once per corpus, then cached)."""
        if self._baselines is None:
            try:
                self._baselines = baseline_figures(self.c.corpus, self.block_size)
            except Exception as e:  # noqa: BLE001 - a baseline is a reference; never fail a run for it
                warnings.warn(f"n-gram baselines unavailable: {e}", stacklevel=1)
                self._baselines = {}
        return self._baselines

    def write_samples(self, run: Run) -> None:
        sampling = SamplingConfig(self.c.sample_tokens, temperature=0.8, top_k=50, seed=1234)
        texts = sample_texts(run.gpt, self.tokenizer, SAMPLE_PROMPTS, sampling, bos=self.info.bos_id)
        block = "\n".join(f"[step {run.step}] {t!r}" for t in texts)
        with open(Path(self.c.run_dir) / SAMPLES_FILE, "a", encoding="utf-8") as f:
            f.write(block + "\n")
        run.logger.add_text("samples", "\n\n".join(texts), run.step)

    def checkpoint_extra(self) -> dict:
        return {
            "tokenizer_path": str(self.info.tokenizer_path.resolve()),
            "tokenizer_sha256": self.tokenizer_sha256,
            "corpus": str(Path(self.c.corpus).resolve()),
            "train": asdict(self.c),
        }

    def run_config(self, run: Run) -> dict:
        extra = self.checkpoint_extra()
        tokens_per_step = self.c.batch_size * self.block_size * run.grad_accum * run.d.world_size
        if self.sizing is not None:
            probe = self.sizing["probe"]
            speeds = ", ".join(f"{k} {v:,.0f}" for k, v in probe["tokens_per_second"].items())
            run.write(
                f"sized for the {self.sizing['budget_seconds']:.0f} s budget (--preset auto; a shape flag, "
                f"--lr, --batch-size or --block-size overrides): {self.sizing['choice']['reason']}; "
                f"lr {self.c.lr:.2g}. Probe ({probe['seconds']:.1f} s, {probe['device']}, tokens/s): {speeds}"
            )
        run.write(
            f"{'resuming at step ' + str(run.step) if run.step else 'starting from scratch'}: "
            f"{run.gpt.num_params() / 1e6:.2f}M params ({run.gpt.num_params(active=True) / 1e6:.2f}M "
            f"active), {tokens_per_step:,} tokens/step = {run.d.world_size} proc x {run.grad_accum} micro x "
            f"{self.c.batch_size} x {self.block_size}, device {run.device}, {run.precision.kind}"
            + (f", time budget {self.c.time_budget:.0f} s" if self.c.time_budget else "")
        )
        return {
            "corpus": extra["corpus"],
            "tokenizer_path": extra["tokenizer_path"],
            "tokenizer_sha256": extra["tokenizer_sha256"],
            "tokenizer_copy": RUN_TOKENIZER_FILE,
            "data_shards": self.n_shards,
            "block_size": self.block_size,
            "tokens_per_step": tokens_per_step,
            **({"sizing": self.sizing} if self.sizing is not None else {}),
        }

    def close(self) -> None:
        for p in self.prefetchers.values():
            p.close()


def train(c: TrainConfig, on_log: Callable[[dict], None] | None = None) -> dict:
    """Train (or continue training) the run in c.run_dir; returns run_task's summary dict."""
    return run_task(PretrainTask(c), on_log=on_log)


# -----------------------------------------------------------------------------------------------
# Command line: every TrainConfig field is a --flag, and every ModelConfig field a model override


def build_parser():
    parser = config_parser(
        TrainConfig,
        "python -m training.train",
        "Train a GPT on a ptgpt corpus (rerun the same command to resume).",
        required=("corpus", "run_dir"),
    )
    from training.launch import arg_type

    model = parser.add_argument_group("model overrides (replace the preset's ModelConfig fields)")
    for name, hint in __import__("typing").get_type_hints(ModelConfig).items():
        help_text = "default: the corpus tokenizer's" if name == "vocab_size" else "default: the preset's"
        model.add_argument(
            "--" + name.replace("_", "-"), dest=f"model.{name}", type=arg_type(hint), help=help_text
        )
    return parser


def config_from_args(argv: list[str] | None = None) -> TrainConfig:
    args = vars(build_parser().parse_args(argv))
    overrides = {k.split(".", 1)[1]: v for k, v in args.items() if k.startswith("model.") and v is not None}
    train_args = {k: v for k, v in args.items() if not k.startswith("model.")}
    return TrainConfig(**train_args, model_overrides=overrides)


def torchrun_command(nproc: int, argv: list[str]) -> list[str]:
    """`torchrun --standalone --nproc_per_node=N -m training.train ARGV`, with this interpreter."""
    return task_torchrun_command("training.train", nproc, argv)


def main(argv: list[str] | None = None) -> int:
    """Train; rank 0 prints the summary as one JSON line (the last line of stdout) for launchers."""
    return task_main(lambda a: PretrainTask(config_from_args(a)), argv)


def run_torchrun(
    nproc: int, argv: list[str], on_log: Callable[[dict], None] | None = None, stderr=None
) -> tuple[int, dict | None]:
    """Run `torchrun ... -m training.train ARGV` on this machine; returns (exit code, rank 0's summary)."""
    return run_launcher(torchrun_command(nproc, argv), on_log=on_log, stderr=stderr)


if __name__ == "__main__":
    sys.exit(main())
