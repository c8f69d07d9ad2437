"""Bad input to `ptgpt train`, `generate`, `eval`, `export-hf` and `run`, through the real command line.

Each case runs `python -m ptgpt ...` in a subprocess and checks what a user sees: a non-zero exit, one
`Error: ...` line naming the problem, no traceback, and every file of the corpus and of a finished run
byte-identical afterwards.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from corpus_factory import SAMPLE_SENTENCES, write_sentencepiece_corpus

REPO = Path(__file__).resolve().parents[1]
TINY = "--n-layer 1 --n-embd 32 --n-head 2 --n-kv-head 1 --mlp-hidden 64 --max-seq-len 32 --block-size 16"
QUIET = "--batch-size 4 --eval-every 0 --log-every 1 --progress false --samples false --tensorboard false"
QUIET += " --plot false --threads 1 --shuffle-buffer 8 --warmup-steps 1"


def ptgpt(*args: str | Path, timeout: float = 120) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    env.pop("PTGPT_DEBUG", None)
    cmd = [sys.executable, "-m", "ptgpt", *map(str, args)]
    return subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)


def snapshot(*folders: Path) -> dict[str, str]:
    """sha256 of every file under the folders: what must not change."""
    return {
        str(p): hashlib.sha256(p.read_bytes()).hexdigest()
        for folder in folders
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def assert_one_line_error(done: subprocess.CompletedProcess, expected: str) -> None:
    assert done.returncode != 0, done.stdout + done.stderr
    assert "Traceback" not in done.stderr, done.stderr
    errors = [line for line in done.stderr.splitlines() if line.startswith("Error: ")]
    assert len(errors) == 1, done.stderr
    assert expected in errors[0], errors[0]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    return write_sentencepiece_corpus(tmp_path_factory.mktemp("corpus"), n_train=9)


@pytest.fixture(scope="module")
def run(corpus, tmp_path_factory) -> Path:
    """A finished two-step run: the good output that no bad command may touch."""
    run = tmp_path_factory.mktemp("run")
    done = ptgpt("train", "--corpus", corpus, "--run", run, "--max-steps", 2, *f"{TINY} {QUIET}".split())
    assert done.returncode == 0, done.stderr
    return run


def train_args(corpus: Path, run: Path, extra: str) -> list[str]:
    return [
        "train",
        "--corpus",
        str(corpus),
        "--run",
        str(run),
        "--max-steps",
        "3",
        *f"{TINY} {QUIET} {extra}".split(),
    ]


# (name, arguments after `ptgpt` given the corpus and the good run, text the Error line must contain)
CASES = [
    ("max-steps 0", lambda c, r: train_args(c, r, "--max-steps 0"), "--max-steps"),
    ("max-steps -1", lambda c, r: train_args(c, r, "--max-steps -1"), "--max-steps"),
    ("batch-size 0", lambda c, r: train_args(c, r, "--batch-size 0"), "--batch-size must be >= 1"),
    ("lr inf", lambda c, r: train_args(c, r, "--lr inf"), "--lr must be a finite number"),
    ("nproc 0", lambda c, r: train_args(c, r, "--nproc 0"), "--nproc"),
    ("unknown preset", lambda c, r: train_args(c, r, "--preset smal"), "unknown preset 'smal'"),
    ("unknown flag", lambda c, r: train_args(c, r, "--no-such-knob 3"), "unrecognized arguments"),
    ("other model on the run", lambda c, r: train_args(c, r, "--n-layer 2"), "another config"),
    ("not a corpus", lambda c, r: train_args(r, r, ""), "manifest.json not found"),
    ("generate temperature", lambda c, r: ["generate", "--run", r, "--prompt", "x", "--temperature", "-1"], "--temperature"),
    ("generate top-k", lambda c, r: ["generate", "--run", r, "--prompt", "x", "--top-k", "-5"], "--top-k"),
    ("generate top-p 0", lambda c, r: ["generate", "--run", r, "--prompt", "x", "--top-p", "0"], "--top-p"),
    ("generate top-p 1.5", lambda c, r: ["generate", "--run", r, "--prompt", "x", "--top-p", "1.5"], "--top-p"),
    ("generate max-new-tokens", lambda c, r: ["generate", "--run", r, "--prompt", "x", "--max-new-tokens", "-5"], "--max-new-tokens"),
    ("generate no checkpoint", lambda c, r: ["generate", "--run", c, "--prompt", "x"], "no complete checkpoint"),
    ("generate not a checkpoint", lambda c, r: ["generate", "--checkpoint", c, "--prompt", "x"], "not a model checkpoint"),
    ("eval no checkpoint", lambda c, r: ["eval", "--run", c], "no complete checkpoint"),
    ("export-hf into its run", lambda c, r: ["export-hf", "--run", r, "--out", r, "--overwrite"], "lies inside the source"),
    ("export-hf into checkpoints", lambda c, r: ["export-hf", "--run", r, "--out", r / "checkpoints", "--overwrite"], "lies inside"),
    ("export-hf around its run", lambda c, r: ["export-hf", "--run", r, "--out", r.parent, "--overwrite"], "contains or lies"),
    ("run unknown preset", lambda c, r: ["run", "--preset", "smal", "--out", r / "new" / "corpus", "--run", r / "new" / "run"], "unknown preset"),
]  # fmt: skip
if not torch.cuda.is_available():
    CASES += [
        ("train on a missing GPU", lambda c, r: train_args(c, r, "--device cuda"), "no GPU"),
        ("generate on a missing GPU", lambda c, r: ["generate", "--run", r, "--prompt", "x", "--device", "cuda"], "no GPU"),
    ]  # fmt: skip


@pytest.mark.slow
@pytest.mark.parametrize("name, args, expected", CASES, ids=[c[0] for c in CASES])
def test_bad_input_is_one_line_and_touches_nothing(corpus, run, name, args, expected) -> None:
    before = snapshot(corpus, run)
    done = ptgpt(*args(corpus, run))
    assert_one_line_error(done, expected)
    assert snapshot(corpus, run) == before
    assert not (run / "new").exists()  # `run` refused the preset before making any folder


@pytest.mark.slow
def test_a_modified_shard_is_refused_before_training(corpus, tmp_path) -> None:
    copy = shutil.copytree(corpus, tmp_path / "corpus")
    shard = copy / "train" / "part-00000.parquet"
    data = bytearray(shard.read_bytes())
    data[8] ^= 0xFF  # in the first data page: same size, same footer, only the sha256 tells
    shard.write_bytes(bytes(data))
    done = ptgpt(*train_args(copy, tmp_path / "run", ""))
    assert_one_line_error(done, "does not match its sha256")
    assert not (tmp_path / "run").exists()


@pytest.mark.slow
@pytest.mark.skipif(os.geteuid() != 0, reason="mounting a small tmpfs needs root")
def test_a_full_disk_at_a_checkpoint_keeps_the_previous_one(corpus, run, tmp_path) -> None:
    """The run folder on a tmpfs with room for the finished run and little more: the next checkpoint
    fails with ENOSPC, reported in one line with the path and the free space; the old one is intact."""
    disk = tmp_path / "disk"
    disk.mkdir()
    size = sum(p.stat().st_size for p in run.rglob("*") if p.is_file()) + 64 * 1024
    if subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(disk)]).returncode:
        pytest.skip("cannot mount a tmpfs here")
    try:
        full = shutil.copytree(run, disk / "run")
        before = snapshot(full / "checkpoints")
        done = ptgpt(*train_args(corpus, full, "--checkpoint-every 1"))
        assert_one_line_error(done, "no space left on the device")
        assert str(full / "checkpoints") in done.stderr and "MiB free on" in done.stderr
        assert snapshot(full / "checkpoints") == before
        assert [p.name for p in (full / "checkpoints").iterdir()] == ["step_0000002"]  # no leftovers
    finally:
        subprocess.run(["umount", str(disk)], check=True)


@pytest.mark.slow
@pytest.mark.skipif(os.geteuid() != 0, reason="mounting a read-only tmpfs needs root")
def test_a_read_only_run_folder_is_named(corpus, tmp_path) -> None:
    disk = tmp_path / "ro"
    disk.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=64k", "tmpfs", str(disk)]).returncode:
        pytest.skip("cannot mount a tmpfs here")
    try:
        done = ptgpt(*train_args(corpus, disk / "run", ""))
        assert_one_line_error(done, f"read-only file system: {disk / 'run'}")
    finally:
        subprocess.run(["umount", str(disk)], check=True)


@pytest.mark.slow
def test_divergence_stops_with_the_last_good_checkpoint(corpus, run, tmp_path) -> None:
    """A learning rate that blows the weights up: training stops at the first non-finite loss and every
    checkpoint left holds finite weights."""
    from training import checkpoint as ckpt

    diverging = shutil.copytree(run, tmp_path / "run")
    done = ptgpt(*train_args(corpus, diverging, "--max-steps 50 --lr 1e30 --checkpoint-every 1"))
    assert_one_line_error(done, "training diverged at step")
    steps = [s for s, _ in ckpt.list_step_dirs(diverging)]
    assert steps and steps[0] == 2 and max(steps) < 50
    for _, folder in ckpt.list_step_dirs(diverging):
        weights = ckpt.load_model(folder).state_dict()
        assert all(torch.isfinite(w).all() for w in weights.values()), folder
    assert f"step_{max(steps):07d}" in done.stderr  # the message names the checkpoint kept


@pytest.mark.slow
def test_generate_gives_what_was_asked_past_the_context(run) -> None:
    """max_new_tokens beyond the context (32) slides the window; a long prompt is cropped with a note."""
    long_prompt = " ".join(SAMPLE_SENTENCES * 20)
    done = ptgpt(
        "generate", "--run", run, "--prompt", long_prompt, "--max-new-tokens", "80", "--device", "cpu"
    )
    assert done.returncode == 0, done.stderr
    assert "kept its last 31 tokens" in done.stderr
    ended = [line for line in done.stderr.splitlines() if "ended the text" in line]
    if not ended:  # the model did not emit end-of-text: all 80 tokens are there
        from training.evaluate import load_tokenizer

        meta = json.loads((run / "config.json").read_text())
        tokenizer = load_tokenizer(meta["tokenizer_path"])
        assert len(tokenizer.encode(done.stdout.strip())) > 80


def test_debug_shows_the_traceback(corpus, tmp_path) -> None:
    env = {**os.environ, "PYTHONPATH": str(REPO), "PTGPT_DEBUG": "1"}
    cmd = [sys.executable, "-m", "ptgpt", "generate", "--run", str(corpus), "--prompt", "x"]
    done = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode != 0 and "Traceback" in done.stderr and "CheckpointNotFound" in done.stderr
