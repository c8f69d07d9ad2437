"""Click options generated from a config dataclass: each field's flag, type, default and help (the
comment after the field) are written once, in training/config.py, and every command shows them.

    @config_options(SFTConfig, skip={"base", "data", "run_dir"})
    def sft(base, data, run_dir, **params): config = SFTConfig(base=..., **pick(SFTConfig, params))

Booleans take a value (`--compile true`), optional numbers take `none`, durations take `30m`.
"""

from __future__ import annotations

import typing
from collections.abc import Callable, Iterable
from dataclasses import MISSING, fields

import click

from training.config import field_help


class OptionalNumber(click.ParamType):
    """An int or float, or `none` (the field's None)."""

    def __init__(self, kind: type):
        self.kind = kind
        self.name = f"{kind.__name__}|none"

    def convert(self, value, param, ctx):
        if value is None or isinstance(value, self.kind):
            return value
        if str(value).lower() == "none":
            return None
        try:
            return self.kind(value)
        except ValueError:
            self.fail(f"{value!r} is not a {self.kind.__name__} (or none)", param, ctx)


class Duration(click.ParamType):
    name = "duration"

    def convert(self, value, param, ctx):
        from training.config import ConfigError, parse_duration

        try:
            return parse_duration(value)
        except ConfigError as e:
            self.fail(str(e), param, ctx)


def _click_type(hint, name: str):
    if name == "time_budget":
        return Duration()
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    base = args[0] if args else hint
    if base is bool:
        return click.BOOL
    if base in (int, float):
        return OptionalNumber(base) if args else base
    return str


def config_options(
    cls: type, skip: Iterable[str] = (), defaults: dict | None = None, helps: dict | None = None
) -> Callable:
    """A decorator adding one --option per field of the dataclass cls (except `skip`), in field order."""
    skip, defaults, helps = set(skip), defaults or {}, helps or {}
    hints = typing.get_type_hints(cls)
    own = set(cls.__dict__.get("__annotations__", {})) - {
        name for base in cls.__mro__[1:] for name in base.__dict__.get("__annotations__", {})
    }
    options = []
    # the run kind's own fields first (data, model), then the loop's (length, optimisation, system)
    for f in sorted(fields(cls), key=lambda f: f.name not in own):
        if f.name in skip or f.name == "model_overrides":
            continue
        if f.name == "progress":  # spelled as everywhere else in ptgpt
            options.append(click.option("--quiet", is_flag=True, help="No progress bar."))
            continue
        default = defaults.get(f.name, f.default if f.default is not MISSING else None)
        help_text = helps.get(f.name) or field_help(cls, f.name)
        options.append(
            click.option(
                "--" + f.name.replace("_", "-"),
                f.name,
                type=_click_type(hints[f.name], f.name),
                default=default,
                show_default=True,
                help=help_text,
            )
        )

    def decorate(command: Callable) -> Callable:
        for option in reversed(options):
            command = option(command)
        return command

    return decorate


def pick(cls: type, params: dict) -> dict:
    """The entries of params that are fields of cls."""
    names = {f.name for f in fields(cls)}
    picked = {k: v for k, v in params.items() if k in names}
    if "progress" in names and "quiet" in params:
        picked["progress"] = not params["quiet"]
    return picked


def checkpoint_of(run_dir, checkpoint_dir):
    """--run (its newest valid checkpoint) or --checkpoint: the one way every command names a model."""
    from pathlib import Path

    from training.checkpoint import CheckpointNotFound, newest_valid_checkpoint
    from training.runs import find_checkpoint

    if (run_dir is None) == (checkpoint_dir is None):
        raise click.UsageError("give exactly one of --run or --checkpoint")
    if checkpoint_dir is not None:
        return find_checkpoint(checkpoint_dir)
    if (Path(run_dir) / "checkpoints").is_dir() or not (Path(run_dir) / "config.json").is_file():
        try:
            return newest_valid_checkpoint(run_dir)  # says where it looked and what to do
        except CheckpointNotFound:
            raise
        except FileNotFoundError as e:
            raise CheckpointNotFound(str(e)) from None
    return find_checkpoint(run_dir)  # a checkpoint folder given as --run
