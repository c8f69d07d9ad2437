"""`ptgpt train` and `ptgpt generate`: thin wrappers over training/train.py and evaluate.py.

torch is imported inside the command bodies, so `ptgpt --help` stays fast. The defaults of the training
options come from TrainConfig (training/config.py, which imports no torch); `ptgpt run` uses the same
options (preset_option, max_steps_option, nproc_option).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from ptgpt.cli.options import Duration, OptionalNumber, checkpoint_of, config_options, pick
from training.config import TrainConfig


def check_preset(ctx: click.Context, param: click.Parameter, value: str) -> str:
    """Refuse an unknown preset while parsing, before any download or corpus work."""
    from training.model import PRESETS

    if value not in PRESETS and value != "auto":
        raise click.BadParameter(f"unknown preset {value!r}: choose auto or one of {', '.join(PRESETS)}")
    return value


PRESET_HELP = (
    "Model preset (training/model.py): auto, tiny, small, base, tiny-moe, small-moe, base-moe. auto: with "
    "--time-budget, the shape, window, batch and learning rate are chosen for the budget on this machine "
    "from a short throughput probe (training/sizing.py; any of them can still be given); without one, "
    "tiny. Sizes depend on the corpus vocabulary: small is ~26M parameters with an 8k vocabulary, ~50M "
    "with 32k; base ~125M with 32k."
)
preset_option = click.option(
    "--preset", default=TrainConfig.preset, show_default=True, callback=check_preset, help=PRESET_HELP
)
time_budget_option = click.option(
    "--time-budget",
    type=Duration(),
    default=None,
    help="Train for this long (90s, 30m, 2h; evaluation not counted): the learning rate decays over it.",
)
max_steps_option = click.option(
    "--max-steps",
    type=OptionalNumber(int),
    default=TrainConfig.max_steps,
    show_default=True,
    help="Total optimizer steps; a rerun continues up to this number (none: only --time-budget).",
)
nproc_option = click.option(
    "--nproc",
    type=click.IntRange(min=1),
    default=1,
    show_default=True,
    help="Training processes on this machine (torchrun DDP).",
)


def budget_lifts_the_step_limit(ctx: click.Context, params: dict) -> dict:
    """--time-budget without --max-steps: the budget alone ends the run (the default 1000 steps would
    cut a long budget short)."""
    from click.core import ParameterSource

    if params.get("time_budget") is not None and ctx.get_parameter_source("max_steps") in (
        ParameterSource.DEFAULT,
        None,
    ):
        params = {**params, "max_steps": None}
    return params


@click.command(
    "train",
    context_settings={"ignore_unknown_options": True, "allow_extra_args": True},
)
@click.option(
    "--corpus",
    required=True,
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    help="Corpus folder written by `ptgpt corpus build`.",
)
@click.option(
    "--run", "run_dir", required=True, type=click.Path(file_okay=False, path_type=Path), help="Run folder."
)
@nproc_option
@config_options(TrainConfig, skip={"corpus", "run_dir"}, helps={"preset": PRESET_HELP})
@click.pass_context
def train(ctx: click.Context, corpus: Path, run_dir: Path, nproc: int, **params) -> None:
    """Train a GPT on a corpus, or continue the run in RUN from its newest valid checkpoint.

    Stop on steps (--max-steps) or on time (--time-budget 30m: the learning rate decays over the
    budget, and with no --max-steps the budget alone ends the run; with no shape flags and --preset
    auto, the model is sized for the budget on this machine). Every ModelConfig field is a model override too
    (--n-layer, --n-embd, --n-experts, ...; `python -m training.train --help` lists them).
    """
    params = budget_lifts_the_step_limit(ctx, params)
    config = TrainConfig(corpus=str(corpus), run_dir=str(run_dir), **pick(TrainConfig, params))
    if ctx.args:  # model overrides (or a mistyped flag: one line from the parser)
        from training.train import config_from_args

        config = config_from_args(config_to_args(config) + list(ctx.args))
    sys.exit(launch("training.train", config, nproc))


def launch(module: str, config, nproc: int) -> int:
    """Run a config in this process, or under torchrun on `nproc` processes; prints the summary line."""
    from training.launch import SUMMARY_KEYS, exit_code, run_launcher, torchrun_command

    if nproc > 1:
        # torchrun's own report of a failed rank is long: refuse bad input here first
        check_before_launch(module, config)
        args = config_to_args(config)
        if hasattr(config, "verify_shards"):
            args += ["--verify-shards", "false"]  # checked just now: the ranks skip the sha256 pass
        code, summary = run_launcher(torchrun_command(module, nproc, args))
    else:
        summary = run_in_process(module, config)
        code = exit_code(summary)
    if summary is not None:
        click.echo(json.dumps({k: summary.get(k) for k in SUMMARY_KEYS}))
    return code


def check_before_launch(module: str, config) -> None:
    if module == "training.train":
        from training.train import check_before_launch as check

        check(config)


def run_in_process(module: str, config) -> dict:
    import importlib

    from training.loop import run_task

    task_class = {
        "training.train": "PretrainTask",
        "training.sft": "SFTTask",
        "training.classify": "ClassifyTask",
    }
    return run_task(getattr(importlib.import_module(module), task_class[module])(config))


def config_to_args(config) -> list[str]:
    from training.launch import config_to_args as to_args

    return to_args(config)


def _device(name: str) -> str:
    """--device as torch names it: auto picks cuda, then mps, then cpu; a missing one is a UserError."""
    from training.precision import pick_device

    return str(pick_device(name))


_run_option = click.option(
    "--run", "run_dir", type=click.Path(exists=True, file_okay=False, path_type=Path), help="Run folder."
)
_checkpoint_option = click.option(
    "--checkpoint",
    "checkpoint_dir",
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    help="A checkpoint folder instead of the run's newest.",
)
_device_option = click.option(
    "--device", default="auto", show_default=True, help="auto (cuda, then mps, then cpu), cuda, mps or cpu."
)


@click.command("generate")
@_run_option
@_checkpoint_option
@click.option("--prompt", "prompts", multiple=True, required=True, help="Text to continue (repeatable).")
@click.option(
    "--max-new-tokens",
    type=click.IntRange(min=0),
    default=100,
    show_default=True,
    help="May exceed the context: the model then reads the most recent half to full context.",
)
@click.option(
    "--temperature", type=click.FloatRange(min=0), default=0.8, show_default=True, help="0 is greedy."
)
@click.option("--top-k", type=click.IntRange(min=0), default=50, show_default=True, help="0 disables.")
@click.option(
    "--top-p",
    type=click.FloatRange(min=0, max=1, min_open=True),
    default=None,
    help="Nucleus sampling threshold in (0, 1].",
)
@click.option("--seed", type=int, default=1234, show_default=True, help="Sampling seed.")
@click.option(
    "--tokenizer",
    "tokenizer_path",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="tokenizer.model [default: the one recorded in the checkpoint].",
)
@_device_option
def generate(
    run_dir: Path | None,
    checkpoint_dir: Path | None,
    prompts: tuple[str, ...],
    max_new_tokens: int,
    temperature: float,
    top_k: int,
    top_p: float | None,
    seed: int,
    tokenizer_path: Path | None,
    device: str,
) -> None:
    """Continue prompts with a trained model, e.g. --prompt "Era uma vez"."""
    from training.engine import SamplingConfig, sample_texts
    from training.runs import load_run

    sampling = SamplingConfig(max_new_tokens, temperature, top_k or None, top_p, seed).validated()
    run = load_run(checkpoint_of(run_dir, checkpoint_dir), _device(device), tokenizer_path)
    notify = lambda message: click.echo(f"note: {message}", err=True)  # noqa: E731
    texts = sample_texts(run.model, run.tokenizer, list(prompts), sampling, notify=notify)
    click.echo(f"# {run.checkpoint}", err=True)
    for text in texts:
        click.echo(text)
        click.echo()
