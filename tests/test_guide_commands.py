"""Every `ptgpt ...` command quoted in the Portuguese guide (docs/guia/) exists, with the options it shows.

A command is found in fenced code blocks (optionally after a `$ ` prompt) and in inline code spans. Its
subcommand path must resolve in the real click group and `--help` must succeed on it; each `--option`
it quotes must be an option of that command (for `ptgpt train`, which hands unknown options to the
trainer, an option of `python -m training.train`).
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from ptgpt.cli import main

GUIDE = Path(__file__).resolve().parents[1] / "docs" / "guia"
FENCE = re.compile(r"```[^\n]*\n(.*?)```", re.DOTALL)
INLINE = re.compile(r"`(ptgpt [^`]+)`")


def quoted_commands() -> list[tuple[str, str]]:
    """(page, command line) for every ptgpt command the guide quotes."""
    found = []
    for page in sorted(GUIDE.glob("*.md")):
        text = page.read_text(encoding="utf-8")
        for block in FENCE.findall(text):
            for line in block.splitlines():
                line = line.strip().removeprefix("$ ").strip()
                if line.startswith("ptgpt "):
                    found.append((page.name, line.split("  #")[0].split(" # ")[0].strip()))
        found += [(page.name, m) for m in INLINE.findall(FENCE.sub("", text))]
    return found


def resolve(words: list[str]) -> tuple[list[str], click.Command, list[str]]:
    """(subcommand path, the command, the remaining arguments) of `ptgpt WORDS...`."""
    command: click.Command = main
    path: list[str] = []
    rest = [w for w in words if w != "..."]  # "ptgpt train ... --nproc 2": the rest as above
    while isinstance(command, click.Group) and rest and not rest[0].startswith("-"):
        name = rest.pop(0)
        sub = command.get_command(click.Context(command), name)
        assert sub is not None, f"`ptgpt {' '.join([*path, name])}` is not a command"
        command, path = sub, [*path, name]
    assert not isinstance(command, click.Group), f"`ptgpt {' '.join(path)}` needs a subcommand"
    return path, command, rest


def trainer_options() -> set[str]:
    from training.train import build_parser

    return {s for action in build_parser()._actions for s in action.option_strings}


COMMANDS = quoted_commands()


def test_the_guide_quotes_commands_for_every_stage():
    pages = {page for page, _ in COMMANDS}
    assert len(list(GUIDE.glob("*.md"))) >= 11
    stages = ("01-raspagem", "02-limpeza", "07-treino", "08-avaliacao", "09-geracao", "10-exportacao")
    for stage in (*stages, "11-instrucoes-e-conversa", "README"):
        assert f"{stage}.md" in pages, stage
    subcommands = {tuple(resolve(shlex.split(line)[1:])[0]) for _, line in COMMANDS}
    needed = [("scrape",), ("corpus", "build"), ("train",), ("eval",), ("generate",), ("export-hf",)]
    for command in [*needed, ("sft",), ("chat",), ("serve-model",), ("compare",)]:
        assert command in subcommands, command


@pytest.mark.parametrize(("page", "line"), COMMANDS, ids=[f"{p}:{c[:40]}" for p, c in COMMANDS])
def test_quoted_command_exists_with_its_options(page: str, line: str):
    path, command, rest = resolve(shlex.split(line)[1:])
    result = CliRunner().invoke(main, [*path, "--help"])
    assert result.exit_code == 0, f"{page}: `ptgpt {' '.join(path)} --help` failed:\n{result.output}"
    known = {s for p in command.params for s in [*p.opts, *p.secondary_opts]}
    if path == ["train"]:
        known |= trainer_options()
    for word in rest:
        option = word.split("=", 1)[0]
        if option.startswith("--"):
            assert option in known, f"{page}: `{line}` quotes {option}, which `ptgpt {' '.join(path)}` lacks"
