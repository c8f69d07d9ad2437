"""What a new user meets first: `ptgpt --help`, the demo's log and final screen, compare's plot, loss.png."""

from __future__ import annotations

import json
import os
import struct
import subprocess
import sys
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from ptgpt.cli import WORKFLOW, main

ROOT = Path(__file__).resolve().parents[1]


def all_commands(
    group: click.Group = main, path: tuple[str, ...] = ()
) -> list[tuple[tuple[str, ...], click.Command]]:
    found = []
    for name, command in group.commands.items():
        if isinstance(command, click.Group):
            found += all_commands(command, (*path, name))
        else:
            found.append(((*path, name), command))
    return found


def test_help_lists_commands_in_workflow_order_on_whole_lines() -> None:
    out = CliRunner().invoke(main, ["--help"], terminal_width=80).output
    listing = out.split("Commands:\n")[1].splitlines()
    names = [line.split()[0] for line in listing if line.startswith("  ") and not line.startswith("   ")]
    assert names == [command.name for command, _ in WORKFLOW]
    assert names[0] == "demo" and names.index("train") < names.index("sft") < names.index("chat")
    assert len(names) == len(main.commands)  # every command has its place in the order
    for line in listing:  # one line each, nothing cut off
        assert len(line) <= 80 and not line.rstrip().endswith(("...", "e.g.")), line


@pytest.mark.parametrize(
    "path,command", all_commands(), ids=lambda v: " ".join(v) if isinstance(v, tuple) else ""
)
def test_every_option_has_help_and_its_default(path: tuple[str, ...], command: click.Command) -> None:
    options = [p for p in command.params if isinstance(p, click.Option) and not p.hidden]
    assert all(p.help for p in options), [p.opts for p in options if not p.help]
    parent = click.Context(main, info_name="ptgpt", **main.context_settings)
    ctx = click.Context(command, parent=parent, info_name=path[-1])
    for p in options:
        default = p.get_default(ctx, call=False)
        if default not in (None, ()) and repr(default) != "Sentinel.UNSET" and not (p.is_flag or p.multiple):
            assert "default" in p.get_help_record(ctx)[1].lower(), p.opts


def test_demo_help_mentions_sft_and_chat() -> None:
    out = CliRunner().invoke(main, ["demo", "--help"]).output
    assert "SFT" in out and "chat" in out and "--sft-steps" in out


def write_run(run: Path, kind: str, records: list[dict]) -> Path:
    run.mkdir(parents=True)
    (run / "config.json").write_text(json.dumps({"kind": kind}))
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    return run


def pretrain_records() -> list[dict]:
    return [
        {"step": s, "loss": 5.0 / s, "tokens": 1000 * s, "val_loss": 4.0 / s, "val_bpb": 3.0 / s}
        for s in (1, 2, 3)
    ]


def sft_records() -> list[dict]:
    return [{"step": s, "loss": 2.0 / s, "tokens": 500 * s, "val_loss": 1.5 / s} for s in (1, 2)]


def png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    return struct.unpack(">II", data[16:24])


def test_compare_plots_next_to_the_runs_and_shows_sft_runs(tmp_path: Path, monkeypatch) -> None:
    from ptgpt.cli.evaluate import compare

    base = write_run(tmp_path / "demo" / "run", "pretrain", pretrain_records())
    tuned = write_run(tmp_path / "demo" / "sft", "sft", sft_records())
    elsewhere = tmp_path / "shell"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    result = CliRunner().invoke(compare, [str(base), str(tuned)], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert list(elsewhere.iterdir()) == []  # nothing lands where the shell happens to be
    plot = tmp_path / "demo" / "compare.png"
    assert f"plot: {plot}" in result.output
    width, _ = png_size(plot)
    assert width == 2 * 7 * 120  # a pre-training panel and an instruction-tuned one
    rows = result.output.splitlines()
    header = rows[0].split()
    sft_row = dict(zip(header, next(r for r in rows if r.startswith(str(tuned))).split(), strict=True))
    assert sft_row["kind"] == "sft" and sft_row["val_loss"] == f"{1.5 / 2:.4f}" and sft_row["step"] == "2"
    assert f"{tuned}: kind sft" in result.output
    asked = tmp_path / "asked" / "c.png"
    result = CliRunner().invoke(compare, [str(base), "--plot", str(asked)], catch_exceptions=False)
    assert asked.is_file() and png_size(asked)[0] == 7 * 120  # pre-training only: one panel


def test_loss_plot_has_a_bpb_panel_only_when_the_run_logs_bpb(tmp_path: Path) -> None:
    from training.metrics import plot_run

    records = pretrain_records()
    records[-1].update({"ngram_val_bpb": 1.2, "ngram_order": 3})
    pretrain = write_run(tmp_path / "run", "pretrain", records)
    tuned = write_run(tmp_path / "sft", "sft", sft_records())
    assert png_size(plot_run(pretrain))[0] == round(2 * 5.5 * 110)
    assert png_size(plot_run(tuned))[0] == round(5.5 * 110)  # loss only: no empty validation-bpb panel


def test_progress_bar_only_on_a_terminal(monkeypatch) -> None:
    import io

    from training.metrics import ProgressBar

    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    monkeypatch.setattr(sys, "stderr", io.StringIO())
    piped = ProgressBar(0, 10)
    assert piped.bar is None
    piped.write("step 5: val loss 1.0")
    assert sys.stderr.getvalue() == "step 5: val loss 1.0\n" and "\r" not in sys.stderr.getvalue()
    monkeypatch.setattr(sys, "stderr", Terminal())
    on_terminal = ProgressBar(0, 10)
    assert on_terminal.bar is not None
    on_terminal.close()


def fake_demo_outputs(out: Path) -> None:
    (out / "corpus").mkdir(parents=True)
    splits = {"train": {"books": [1, 2, 3], "tokens": 1000}, "validation": {"books": [4], "tokens": 50}}
    (out / "corpus" / "manifest.json").write_text(json.dumps({"splits": splits}))
    records = [
        {"step": 100, "loss": 3.0},
        {"step": 300, "val_loss": 1.1, "val_bpb": 0.25, "ngram_val_bpb": 0.31, "ngram_order": 3},
        {"step": 300, "loss": 1.0},
    ]
    write_run(out / "run", "pretrain", records)


def test_final_screen_explains_figures_and_ends_with_next_commands(tmp_path: Path, monkeypatch) -> None:
    from ptgpt.cli.demo import final_screen

    monkeypatch.chdir(tmp_path)
    out = tmp_path / "data" / "demo"
    fake_demo_outputs(out)
    report = {"items": 60, "base": {"accuracy": 1 / 60}, "tuned": {"accuracy": 2 / 60}}
    chat = {
        "report": report,
        "question": "Quem escreveu «X»?",
        "reply": "Eça",
        "expected": "Eça de Queirós.",
        "right": True,
    }
    screen = final_screen(out, 372.0, ("Era uma vez", "step_300", "Era uma vez um rei"), chat)
    assert "done in 6m12s" in screen and "data/demo/" in screen and str(tmp_path) not in screen
    assert "4 books cleaned" in screen and "1,050 tokens" in screen
    assert "0.250 at step 300" in screen and "3-gram" in screen and "0.310, so the model beats it" in screen
    assert "base 1.7% -> tuned 3.3% of 60" in screen
    assert "> Quem escreveu «X»?" in screen and "expected: Eça de Queirós.  (right)" in screen
    assert "{" not in screen  # no JSON dump
    next_lines = screen.split("\nnext:\n")[1].splitlines()
    assert "chat --run data/demo/sft" in next_lines[0] and "serve-model --run data/demo/sft" in next_lines[1]
    assert "eval --run data/demo/run" in next_lines[2] and "tensorboard --logdir data/demo" in next_lines[3]
    without_chat = final_screen(out, 5.0, ("Era", "step_300", "Era uma"), None)
    assert "sft" not in without_chat and "generate --run data/demo/run" in without_chat


@pytest.mark.slow
def test_demo_log_is_short_and_ends_with_the_next_commands(tmp_path: Path) -> None:
    """The real demo, small, its stderr a pipe as in a log file: few lines, no per-task or bar frames."""
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "PREFECT_HOME": str(tmp_path / "prefect"),
        "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "120",
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "DO_NOT_TRACK": "1",
    }
    env.pop("PREFECT_API_URL", None)
    env.pop("PREFECT_LOGGING_LEVEL", None)
    args = ["--out", str(tmp_path / "demo"), "--extra-books", "4", "--vocab-size", "400"]
    args += ["--max-steps", "4", "--sft-steps", "2"]

    def demo() -> subprocess.CompletedProcess:
        command = [sys.executable, "-m", "ptgpt", "demo", *args]
        proc = subprocess.run(command, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, proc.stderr[-3000:]
        return proc

    first = demo()
    log = first.stderr + first.stdout
    assert len(log.splitlines()) < 100, log
    assert "\r" not in log and "Starting temporary server" not in log
    assert "Task run 'download-" not in log and "Task run 'clean-" not in log  # no lines per book
    assert "Flow run" in log and "val loss" in log  # the stages and the trainer's lines stay
    assert "None" not in first.stdout and "expected:" in first.stdout
    assert "next:" in first.stdout.rstrip().splitlines()[-6:]
    rerun = demo()  # everything reused: nothing trained, and the log says so rather than "loss None"
    assert "None" not in rerun.stderr + rerun.stdout and "nothing to train" in rerun.stderr
    assert "expected:" in rerun.stdout
