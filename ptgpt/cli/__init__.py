"""The `ptgpt` command line.

Each subcommand lives in its own module here and imports its stage (requests, pyarrow, torch,
prefect...) inside the command body, so `ptgpt --help` and `ptgpt scrape` never pay for torch.
"""

from __future__ import annotations

import click

from ptgpt import __version__
from ptgpt.cli.chat import chat, classify, instructions, serve_model, sft
from ptgpt.cli.corpus import corpus
from ptgpt.cli.demo import demo
from ptgpt.cli.model import export_hf
from ptgpt.cli.pipeline import build, run, serve
from ptgpt.cli.scrape import mirror, scrape
from ptgpt.cli.train import eval_command, generate, train


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="ptgpt")
def main() -> None:
    """Build a Portuguese corpus from Project Gutenberg and train a GPT-style model on it."""


main.add_command(scrape)
main.add_command(mirror)
main.add_command(demo)
main.add_command(corpus)
main.add_command(train)
main.add_command(generate)
main.add_command(eval_command)
main.add_command(export_hf)
main.add_command(build)
main.add_command(run)
main.add_command(serve)
main.add_command(instructions)
main.add_command(sft)
main.add_command(chat)
main.add_command(serve_model)
main.add_command(classify)
