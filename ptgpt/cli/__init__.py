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


class App(click.Group):
    """The ptgpt group: turns expected failures into one `Error: ...` line and a non-zero exit."""

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


@click.group(cls=App, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="ptgpt")
@click.option("--debug", is_flag=True, help=f"Show tracebacks of expected errors too (or {DEBUG_ENV}=1).")
def main(debug: bool) -> None:
    """Build a Portuguese corpus from Project Gutenberg and train a GPT-style model on it."""


main.add_command(scrape)
main.add_command(mirror)
main.add_command(demo)
main.add_command(corpus)
main.add_command(train)
main.add_command(generate)
main.add_command(eval_command)
main.add_command(compare)
main.add_command(export_hf)
main.add_command(export_gguf)
main.add_command(build)
main.add_command(run)
main.add_command(serve)
main.add_command(instructions)
main.add_command(sft)
main.add_command(chat)
main.add_command(serve_model)
main.add_command(classify)
