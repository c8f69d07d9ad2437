"""The `ptgpt` command line.

Each subcommand lives in its own module here and imports its stage (requests, pyarrow, torch,
prefect...) inside the command body, so `ptgpt --help` and `ptgpt scrape` never pay for torch.

Errors. An expected failure (common.errors.UserError, raised by any stage for bad input, or an
OSError such as a full, read-only or forbidden disk) prints one line, `Error: <what, where, what to
do>`, and exits 1; click's own usage errors exit 2. Anything else is a bug and keeps its traceback.
`ptgpt --debug ...` or PTGPT_DEBUG=1 shows the traceback of expected failures too.
"""

from __future__ import annotations

import os

import click

from common.errors import UserError, describe_os_error
from ptgpt import __version__
from ptgpt.cli.chat import chat, instructions
from ptgpt.cli.corpus import corpus
from ptgpt.cli.demo import demo
from ptgpt.cli.evaluate import compare, eval_command
from ptgpt.cli.finetune import classify, sft
from ptgpt.cli.model import export_gguf, export_hf
from ptgpt.cli.pipeline import build, run, serve
from ptgpt.cli.scrape import mirror, scrape
from ptgpt.cli.serve_model import serve_model
from ptgpt.cli.train import generate, train

DEBUG_ENV = "PTGPT_DEBUG"


# Commands in the order of the work, each with a one-line summary (click would otherwise sort them by
# name and cut each docstring's first sentence to fit, sometimes mid-sentence).
WORKFLOW = (
    (demo, "Start here: corpus, training, SFT and chat, offline."),
    (scrape, "Find Portuguese books and download their texts."),
    (mirror, "Serve the sample books as a local Gutenberg-layout mirror."),
    (corpus, "Clean, dedup, tokenize and shard downloaded books."),
    (train, "Pre-train a GPT on a corpus (rerun to resume)."),
    (generate, "Continue a prompt with a trained model."),
    (eval_command, "Bits per byte and Portuguese tasks beside baselines."),
    (compare, "Runs side by side, with baselines and a plot."),
    (instructions, "Write a corpus's own instruction set (for sft)."),
    (sft, "Instruction-tune a pre-trained run for chat."),
    (chat, "Talk to a tuned model in the terminal."),
    (serve_model, "OpenAI-compatible API and chat page for a model."),
    (classify, "Fine-tune a classifier (e.g. authors) on a run."),
    (export_hf, "Write a folder that transformers loads (with a model card)."),
    (export_gguf, "Write a GGUF file for llama.cpp and Ollama."),
    (build, "Prefect flow build-corpus: download, then build."),
    (run, "Prefect flow corpus-and-train: the main job."),
    (serve, "Serve the Prefect deployments to a Prefect server."),
)


class App(click.Group):
    """The ptgpt group: lists its commands in workflow order, and turns expected failures into one
    `Error: ...` line and a non-zero exit."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return list(self.commands)

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except UserError as e:
            if debugging(ctx):
                raise
            raise click.ClickException(str(e)) from None
        except OSError as e:
            message = describe_os_error(e)
            if message is None or debugging(ctx):
                raise
            raise click.ClickException(message) from None


def debugging(ctx: click.Context) -> bool:
    return bool(ctx.params.get("debug")) or os.environ.get(DEBUG_ENV, "") not in ("", "0")


@click.group(cls=App, context_settings={"help_option_names": ["-h", "--help"], "show_default": True})
@click.version_option(__version__, prog_name="ptgpt")
@click.option("--debug", is_flag=True, help=f"Show tracebacks of expected errors too (or {DEBUG_ENV}=1).")
def main(debug: bool) -> None:
    """Build a Portuguese corpus from Project Gutenberg and train a GPT-style model on it."""


for command, summary in WORKFLOW:
    command.short_help = summary
    main.add_command(command)
