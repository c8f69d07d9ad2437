"""Command lines and launchers shared by every run kind: `python -m training.train`, `training.sft` and
`training.classify` take every field of their config as a --flag (help from the field's comment,
default from the dataclass), and `torchrun` runs any of them on several processes or nodes; rank 0
prints each metrics record as a progress line and the summary as the last JSON line, which
run_launcher turns back into callbacks and a dict.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import typing
from collections.abc import Callable
from dataclasses import MISSING, fields

from common.errors import UserError
from training.config import ConfigError, LoopConfig, field_help
from training.loop import Task, run_task


def _parse_bool(text: str) -> bool:
    if text.lower() in ("1", "true", "yes", "on"):
        return True
    if text.lower() in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected a boolean, got {text!r}")


def arg_type(hint) -> typing.Callable[[str], object]:
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    base = args[0] if args else hint
    if base is bool:
        return _parse_bool
    if base in (int, float, str):
        if args:  # Optional[...]: "none" means None
            return lambda s: None if s.lower() == "none" else base(s)
        return base
    raise TypeError(f"no command-line type for {hint}")


class ConfigParser(argparse.ArgumentParser):
    def error(self, message: str) -> typing.NoReturn:
        """A bad flag is a user error (one line from the CLI), not argparse's usage dump and exit."""
        raise ConfigError(f"{message} ({self.prog} --help lists every option)")


def _help(cls: type, name: str) -> str:
    return field_help(cls, name).replace("%", "%%")  # argparse formats help with %


def config_parser(cls: type, prog: str, description: str, required: tuple[str, ...]) -> ConfigParser:
    parser = ConfigParser(
        prog=prog, description=description, formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    hints = typing.get_type_hints(cls)
    for f in fields(cls):
        if f.name == "model_overrides":
            continue
        flags = ["--" + f.name.replace("_", "-")]
        if f.name == "run_dir":  # --run as in `ptgpt train`; torchrun mistakes it for its --run-path
            flags.append("--run")
        kind = str if f.name == "time_budget" else arg_type(hints[f.name])
        if f.name in required or (f.default is MISSING and f.default_factory is MISSING):
            parser.add_argument(*flags, dest=f.name, required=True, help=_help(cls, f.name))
        else:
            parser.add_argument(*flags, dest=f.name, type=kind, default=f.default, help=_help(cls, f.name))
    return parser


def config_to_args(c: LoopConfig) -> list[str]:
    """The command line that the parser turns back into `c`: how a launcher hands a config to torchrun."""
    argv: list[str] = []

    def text(value: object) -> str:
        if value is None:
            return "none"
        return str(value).lower() if isinstance(value, bool) else str(value)

    for f in fields(c):
        if f.name != "model_overrides":
            argv += ["--" + f.name.replace("_", "-"), text(getattr(c, f.name))]
    for name, value in getattr(c, "model_overrides", {}).items():
        argv += ["--" + name.replace("_", "-"), text(value)]
    return argv


def torchrun_command(module: str, nproc: int, argv: list[str], nnodes: str | None = None) -> list[str]:
    """`torchrun --standalone --nproc_per_node=N -m MODULE ARGV`, with this interpreter."""
    return [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc_per_node={nproc}",
        "-m",
        module,
        *argv,
    ]


SUMMARY_KEYS = (
    "run_dir",
    "start_step",
    "step",
    "final_loss",
    "val_loss",
    "val_bpb",
    "checkpoint",
    "tokens_seen",
    "train_seconds",
    "eval_seconds",
    "interrupted",
)
PROGRESS_ENV = "PTGPT_PROGRESS_LINES"  # set to 1: rank 0 prints each metrics record on stdout
PROGRESS_PREFIX = "ptgpt-progress "


def print_progress(record: dict) -> None:
    print(PROGRESS_PREFIX + json.dumps(record), flush=True)


def exit_code(summary: dict) -> int:
    """0 when training reached its end; 128 + the signal number when a signal stopped it."""
    return 128 + summary["interrupted"] if summary["interrupted"] else 0


def task_main(make: Callable[[list[str] | None], Task], argv: list[str] | None = None) -> int:
    """Run a task from its command line; rank 0 prints the summary as one JSON line (the last line
    of stdout) for launchers. A user error (bad flag, data, settings, divergence) prints `Error: ...`
    and exits 2."""
    try:
        task = make(argv)
        on_log = print_progress if os.environ.get(PROGRESS_ENV) == "1" else None
        summary = run_task(task, on_log=on_log)
    except UserError as e:
        print(f"Error: {e}", file=sys.stderr, flush=True)
        return 2
    if int(os.environ.get("RANK", "0")) == 0:
        print(json.dumps({k: summary.get(k) for k in SUMMARY_KEYS}), flush=True)
    return exit_code(summary)


def run_launcher(
    command: list[str], on_log: Callable[[dict], None] | None = None, stderr=None
) -> tuple[int, dict | None]:
    """Run a torchrun command line; returns (exit code, rank 0's summary).

    Training then lives in other processes, so a progress callback cannot be handed to run_task(): rank 0
    prints each metrics record as a `ptgpt-progress {...}` line and this function calls on_log with it.
    Other stdout lines pass through; stderr goes to `stderr` (default: this process's).
    """
    env = {**os.environ, PROGRESS_ENV: "1"}
    summary = None
    with subprocess.Popen(command, stdout=subprocess.PIPE, stderr=stderr, text=True, env=env) as proc:
        for line in proc.stdout:
            if line.startswith(PROGRESS_PREFIX):
                if on_log is not None:
                    on_log(json.loads(line[len(PROGRESS_PREFIX) :]))
            elif line.startswith("{"):
                summary = json.loads(line)
            else:
                sys.stdout.write(line)
    return proc.returncode, summary
