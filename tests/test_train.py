"""The trainer (training/train.py): schedule, checkpoints, exact resume, evaluation, DDP, logs."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from corpus_factory import random_books, reference_stream, write_corpus

from common.errors import UserError
from training import checkpoint as ckpt
from training.evaluate import evaluate
from training.metrics import read_metrics
from training.model import GPT, ModelConfig
from training.train import TrainConfig, config_from_args, lr_at, run_torchrun, train

REPO = Path(__file__).resolve().parents[1]
TINY = {"n_layer": 2, "n_embd": 32, "n_head": 2, "n_kv_head": 1, "mlp_hidden": 64, "max_seq_len": 32}


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("corpus")
    splits = {
        "train": random_books(0, 24, max_paragraphs=16),
        "validation": random_books(1, 4, first_id=900),
    }
    return write_corpus(root, splits, rows_per_group=6)


def tiny_config(corpus: Path, run: Path, **kw) -> TrainConfig:
    base = dict(
        corpus=str(corpus),
        run_dir=str(run),
        model_overrides=dict(TINY),
        max_steps=6,
        batch_size=4,
        block_size=16,
        warmup_steps=2,
        eval_every=0,
        checkpoint_every=3,
        log_every=1,
        shuffle_buffer=8,
        threads=1,
        samples=False,
        tensorboard=False,
        progress=False,
        plot=False,
    )
    return TrainConfig(**{**base, **kw})


def cli_args(corpus: Path, run: Path, max_steps: int, checkpoint_every: int, **extra) -> list[str]:
    args = {
        "corpus": corpus,
        "run-dir": run,  # torchrun would take --run for its own --run-path
        "max-steps": max_steps,
        "checkpoint-every": checkpoint_every,
        "batch-size": 4,
        "block-size": 16,
        "warmup-steps": 2,
        "eval-every": 0,
        "log-every": 1,
        "shuffle-buffer": 8,
        "threads": 1,
        "samples": "false",
        "tensorboard": "false",
        "progress": "false",
        "plot": "false",
        **{k.replace("_", "-"): v for k, v in TINY.items()},
        **extra,
    }
    return [str(part) for key, value in args.items() for part in (f"--{key}", value)]


def losses(run: Path) -> dict[int, float]:
    return {r["step"]: r["loss"] for r in read_metrics(run)}


def final_weights(run: Path) -> dict[str, torch.Tensor]:
    return ckpt.load_model(ckpt.latest_valid_training_checkpoint(run)).state_dict()


# -----------------------------------------------------------------------------------------------


def test_lr_schedule_warmup_then_decay_to_min():
    c = TrainConfig(corpus="c", run_dir="r", lr=1.0, min_lr_ratio=0.1, warmup_steps=10, max_steps=110)
    lrs = [lr_at(s, c) for s in range(110)]
    assert lrs[:10] == pytest.approx([(s + 1) / 10 for s in range(10)])
    assert all(a >= b for a, b in zip(lrs[9:], lrs[10:], strict=False))  # non-increasing after warmup
    assert lrs[60] == pytest.approx(0.1 + 0.9 * 0.5, abs=0.01)  # cosine midpoint
    assert lr_at(110, c) == pytest.approx(0.1)
    lin = TrainConfig(
        corpus="c", run_dir="r", lr=1.0, warmup_steps=0, schedule="linear", warmdown_frac=0.5, max_steps=100
    )
    assert lr_at(0, lin) == lr_at(49, lin) == 1.0
    assert lr_at(75, lin) == pytest.approx(0.1 + 0.9 * 0.5)
    assert lr_at(100, lin) == pytest.approx(0.1)
    with pytest.raises(ValueError, match="schedule"):
        TrainConfig(corpus="c", run_dir="r", schedule="step")


def test_cli_flags_fill_train_config_and_model_overrides():
    c = config_from_args(
        [
            "--corpus",
            "C",
            "--run",
            "R",
            "--max-steps",
            "7",
            "--n-layer",
            "3",
            "--compile",
            "true",
            "--eval-batches",
            "none",
            "--lr",
            "3e-4",
        ]
    )
    assert (c.corpus, c.run_dir, c.max_steps, c.compile, c.eval_batches, c.lr) == (
        "C",
        "R",
        7,
        True,
        None,
        3e-4,
    )
    assert c.model_overrides == {"n_layer": 3}


def test_optimizer_state_survives_safetensors_round_trip(tmp_path):
    torch.manual_seed(0)
    model = GPT(ModelConfig.preset("tiny", **TINY, vocab_size=64))
    opt = torch.optim.AdamW(model.configure_param_groups(0.1), lr=1e-3, betas=(0.9, 0.95))
    for _ in range(2):
        x = torch.randint(0, 64, (2, 8))
        model(x, x).total_loss().backward()
        opt.step()
        opt.zero_grad()
    tensors, meta = ckpt.optimizer_state_to_tensors(opt)
    json.dumps(meta)  # the non-tensor half is plain JSON
    fresh = torch.optim.AdamW(model.configure_param_groups(0.1), lr=5.0)
    fresh.load_state_dict(ckpt.optimizer_state_from_tensors(tensors, meta))
    a, b = opt.state_dict(), fresh.state_dict()
    assert a["param_groups"] == b["param_groups"]
    for i in a["state"]:
        for k in a["state"][i]:
            assert torch.equal(a["state"][i][k], b["state"][i][k])


def test_run_folder_layout_logs_and_keep_last(corpus, tmp_path):
    run = tmp_path / "run"
    seen = []  # what a progress callback gets: every record, as it is written
    summary = train(
        tiny_config(
            corpus,
            run,
            max_steps=8,
            checkpoint_every=2,
            keep_last=2,
            eval_every=4,
            eval_batches=None,
            tensorboard=True,
            plot=True,
        ),
        on_log=seen.append,
    )
    assert summary["step"] == 8 and summary["start_step"] == 0 and summary["interrupted"] is None
    assert [s for s, _ in ckpt.list_step_dirs(run)] == [6, 8]  # keep_last=2
    step_dir = run / "checkpoints" / "step_0000008"
    assert ckpt.verify_training_checkpoint(step_dir) is None
    meta = ckpt.read_checkpoint_config(step_dir)
    assert meta["step"] == 8 and Path(meta["tokenizer_path"]) == (corpus / "tokenizer.model").resolve()
    assert ckpt.latest_checkpoint(run) == step_dir  # the model-only API sees the same folder
    assert ckpt.load_model(step_dir).config.vocab_size == 64
    run_config = json.loads((run / "config.json").read_text())
    assert run_config["model"]["n_layer"] == 2 and run_config["tokenizer_sha256"]
    records = read_metrics(run)
    assert [r["step"] for r in records] == list(range(1, 9))
    assert seen == records
    assert {"loss", "lr", "grad_norm", "tokens_per_s"} <= set(records[0])
    evals = [r for r in records if "val_loss" in r]
    assert [r["step"] for r in evals] == [4, 8]
    assert evals[-1]["val_bpb"] == pytest.approx(summary["val_bpb"])
    assert (run / "loss.png").stat().st_size > 0 and any((run / "tb").iterdir())
    assert not list((run / "checkpoints").glob(".tmp*"))


def test_corrupt_latest_checkpoint_falls_back_to_previous(corpus, tmp_path):
    run = tmp_path / "run"
    train(tiny_config(corpus, run, max_steps=6, checkpoint_every=3))
    latest = run / "checkpoints" / "step_0000006"
    weights = latest / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-100])  # truncated, as by a crash mid-copy
    assert "sha256" in ckpt.verify_training_checkpoint(latest)
    with pytest.warns(UserWarning, match="step_0000006"):
        assert ckpt.latest_valid_training_checkpoint(run) == run / "checkpoints" / "step_0000003"
    with pytest.warns(UserWarning, match="falling back"):
        summary = train(tiny_config(corpus, run, max_steps=6, checkpoint_every=3))
    assert summary["start_step"] == 3 and summary["step"] == 6
    assert ckpt.verify_training_checkpoint(latest) is None  # rewritten whole
    (latest / "checksums.json").unlink()  # a folder whose writing never finished
    with pytest.warns(UserWarning, match="not finished"):
        assert ckpt.latest_valid_training_checkpoint(run).name == "step_0000003"


def test_resume_refuses_a_different_model(corpus, tmp_path):
    run = tmp_path / "run"
    train(tiny_config(corpus, run, max_steps=3))
    other = tiny_config(corpus, run, max_steps=6, model_overrides={**TINY, "n_layer": 3})
    with pytest.raises(ValueError, match="another config"):
        train(other)
    with pytest.raises(ValueError, match="resume is off"):  # would mix two runs' checkpoints
        train(tiny_config(corpus, run, max_steps=6, resume=False))


def test_evaluate_counts_every_validation_token_and_byte(corpus):
    torch.manual_seed(0)
    model = GPT(ModelConfig.preset("tiny", **TINY, vocab_size=64))
    result = evaluate(model, corpus, "validation", block_size=16, batch_size=3)
    manifest = json.loads((corpus / "manifest.json").read_text())
    assert result["bytes"] == manifest["splits"]["validation"]["bytes"]
    assert result["tokens"] == len(reference_stream(random_books(1, 4, first_id=900))) - 1
    assert result["bpb"] == pytest.approx(result["loss"] * result["tokens"] / (math.log(2) * result["bytes"]))
    assert result["perplexity"] == pytest.approx(math.exp(result["loss"]))
    assert abs(result["loss"] - math.log(64)) < 0.5  # an untrained model is near uniform


def test_moe_run_logs_expert_load(corpus, tmp_path):
    run = tmp_path / "run"
    moe = {**TINY, "n_experts": 4, "top_k": 2, "expert_hidden": 32}
    train(tiny_config(corpus, run, preset="tiny-moe", model_overrides=moe, max_steps=2, plot=True))
    record = read_metrics(run)[-1]
    load = np.array(record["expert_load"])
    assert load.shape == (2, 4) and np.allclose(load.sum(axis=1), 1.0)
    assert record["aux_loss"] > 0
    assert (run / "loss.png").is_file()


# -----------------------------------------------------------------------------------------------
# Processes: SIGKILL + resume, SIGTERM, torchrun


KILL_AT_STEP = """
import os, signal, sys
import training.metrics as metrics
log = metrics.MetricsLogger.log
def log_then_die(self, record):
    log(self, record)
    if record["step"] >= int(os.environ["KILL_AT_STEP"]):
        os.kill(os.getpid(), signal.SIGKILL)
metrics.MetricsLogger.log = log_then_die
from training.train import main
sys.exit(main(sys.argv[1:]))
"""


def run_trainer(
    args: list[str], env: dict | None = None, code: str | None = None
) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-c", code, *args] if code else [sys.executable, "-m", "training.train", *args]
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", **(env or {})}
    return subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=120)


@pytest.mark.slow
def test_sigkill_then_rerun_is_bit_exact(corpus, tmp_path):
    """2N steps in one go == N steps, a process SIGKILLed after N+2 (no checkpoint since N), a rerun.

    The uninterrupted run is an in-process train() call with the same settings as the command line.

    The killed process is the real trainer; it dies by SIGKILL from inside its metrics logger after
    logging step N+2, so the kill point is deterministic. The rerun must drop those two orphan log lines,
    resume from step N (weights, AdamW moments, the loader's position and read-ahead, RNG) and then
    produce exactly the same losses and weights as the uninterrupted run.
    """
    n = 4
    whole, broken = tmp_path / "whole", tmp_path / "broken"
    train(tiny_config(corpus, whole, max_steps=2 * n, checkpoint_every=100))  # in-process, same settings
    killed = run_trainer(
        cli_args(corpus, broken, 2 * n, checkpoint_every=n), {"KILL_AT_STEP": str(n + 2)}, KILL_AT_STEP
    )
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    assert [s for s, _ in ckpt.list_step_dirs(broken)] == [n]
    assert max(losses(broken)) == n + 2
    rerun = run_trainer(cli_args(corpus, broken, 2 * n, checkpoint_every=n))
    assert rerun.returncode == 0, rerun.stderr
    assert list(losses(broken)) == list(range(1, 2 * n + 1))
    assert losses(broken) == losses(whole)  # exact float equality, step by step
    a, b = final_weights(whole), final_weights(broken)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.slow
def test_sigterm_finishes_the_step_and_checkpoints(corpus, tmp_path):
    run = tmp_path / "run"
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "training.train", *cli_args(corpus, run, 100_000, checkpoint_every=100_000)],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 60
    while not (run / "metrics.jsonl").is_file() or len(read_metrics(run)) < 3:
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 128 + signal.SIGTERM, err
    last = max(losses(run))
    assert [s for s, _ in ckpt.list_step_dirs(run)] == [last]
    assert ckpt.verify_training_checkpoint(run / "checkpoints" / f"step_{last:07d}") is None
    assert json.loads(out.strip().splitlines()[-1])["interrupted"] == signal.SIGTERM


@pytest.mark.slow
def test_two_gloo_processes_equal_one_process_with_virtual_ranks(corpus, tmp_path, monkeypatch):
    """torchrun with 2 CPU processes (gloo, 1 micro-batch each) == 1 process with grad_accum 2.

    Rank r of 2 reads the loader shard rank=r, world_size=2 (disjoint row groups). The single process is
    given data_shards=2: it builds both shard loaders itself ("virtual ranks") and takes micro-batch i
    from shard i, so it sees exactly the windows the two ranks see. Its summed gradient / 2 equals DDP's
    all-reduced average up to float summation order, hence allclose rather than equal.
    """
    ddp_run, single_run = tmp_path / "ddp", tmp_path / "single"
    seen = []  # rank 0's records, passed back from the torchrun processes as progress lines
    monkeypatch.setenv("PYTHONPATH", str(REPO))
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    with open(tmp_path / "stderr.txt", "w+") as stderr:
        code, summary = run_torchrun(
            2, cli_args(corpus, ddp_run, 4, checkpoint_every=100), seen.append, stderr
        )
        stderr.seek(0)
        assert code == 0, stderr.read()[-3000:]
    assert summary["step"] == 4 and seen == read_metrics(ddp_run)
    train(tiny_config(corpus, single_run, max_steps=4, checkpoint_every=100, data_shards=2, grad_accum=2))
    a, b = losses(ddp_run), losses(single_run)
    assert list(a) == list(b) == [1, 2, 3, 4]
    assert np.allclose(list(a.values()), list(b.values()), rtol=0, atol=1e-5)
    wa, wb = final_weights(ddp_run), final_weights(single_run)
    assert all(torch.allclose(wa[k], wb[k], rtol=0, atol=1e-5) for k in wa)
    assert json.loads((ddp_run / "config.json").read_text())["world_size"] == 2


def test_config_survives_the_command_line():
    """Launchers (the Prefect torchrun task) hand a TrainConfig to `torchrun -m training.train` as flags."""
    from training.train import TrainConfig, config_from_args, config_to_args

    c = TrainConfig(
        corpus="/c",
        run_dir="/r",
        preset="tiny-moe",
        max_steps=7,
        block_size=None,
        lr=3e-4,
        compile=True,
        model_overrides={"n_layer": 3, "moe_impl": "loop", "rope_theta": 5e5},
    )
    assert config_from_args(config_to_args(c)) == c


@pytest.mark.slow
def test_two_torchrun_nodes_equal_one_process(corpus, tmp_path, monkeypatch):
    """Multi-node for real: two torchrun launchers (--nnodes 2, c10d rendezvous on 127.0.0.1, gloo),
    one process each, give the losses and weights of one process reading both data shards."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    multi, single = tmp_path / "multi", tmp_path / "single"
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "GLOO_SOCKET_IFNAME": "lo"}
    argv = cli_args(corpus, multi, 4, checkpoint_every=100)
    launchers = [
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "torch.distributed.run",
                "--nnodes=2",
                "--nproc_per_node=1",
                f"--node_rank={node}",
                "--rdzv_backend=c10d",
                f"--rdzv_endpoint=127.0.0.1:{port}",
                "--rdzv_id=ptgpt-test",
                "--master_addr=127.0.0.1",
                "-m",
                "training.train",
                *argv,
            ],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            cwd=tmp_path,
        )
        for node in (0, 1)
    ]
    outputs = [p.communicate(timeout=300) for p in launchers]
    assert [p.returncode for p in launchers] == [0, 0], [err[-2000:] for _, err in outputs]
    train(tiny_config(corpus, single, max_steps=4, checkpoint_every=100, data_shards=2, grad_accum=2))
    a, b = losses(multi), losses(single)
    assert list(a) == list(b) == [1, 2, 3, 4]
    assert np.allclose(list(a.values()), list(b.values()), rtol=0, atol=1e-5)
    wa, wb = final_weights(multi), final_weights(single)
    assert all(torch.allclose(wa[k], wb[k], rtol=0, atol=1e-5) for k in wa)
    assert json.loads((multi / "config.json").read_text())["world_size"] == 2


def test_time_budget_stops_on_time_and_a_larger_budget_continues(corpus, tmp_path):
    """A 20-second budget (no step limit) stops within a step of it, checkpoints, and decays the
    learning rate to its floor; rerun with 25 s it continues from that checkpoint and its clock."""
    run = tmp_path / "budget"
    c = tiny_config(corpus, run, max_steps=None, time_budget="20s", checkpoint_every=10_000, warmup_steps=2)
    first = train(c)
    records = read_metrics(run)
    step_time = first["train_seconds"] / first["step"]
    assert 20 <= first["train_seconds"] <= 20 + 3 * step_time + 1
    assert first["interrupted"] is None and first["step"] > 10
    peak = json.loads((run / "config.json").read_text())["train"]["lr"]  # the default, filled in
    assert peak == 1e-3 and records[-1]["lr"] < 0.2 * peak  # near min_lr (0.1 lr) at the end
    assert [s for s, _ in ckpt.list_step_dirs(run)] == [first["step"]]
    second = train(tiny_config(corpus, run, max_steps=None, time_budget="25s", checkpoint_every=10_000))
    assert second["start_step"] == first["step"] and second["step"] > first["step"]
    assert 25 <= second["train_seconds"] <= 25 + 3 * step_time + 1
    assert second["train_seconds_this_call"] < 5 + 3 * step_time + 1
    assert read_metrics(run)[-1]["lr"] < 0.2 * peak


def test_a_run_folder_holds_one_kind_of_run(corpus, tmp_path):
    from training.config import SFTConfig
    from training.sft import sft

    run = tmp_path / "pre"
    train(tiny_config(corpus, run, max_steps=3))
    data = tmp_path / "chat.jsonl"
    data.write_text(json.dumps({"prompt": "Olá", "response": "Bom dia."}) + "\n")
    with pytest.raises(UserError, match="base run itself"):
        sft(SFTConfig(base=str(run), data=str(data), run_dir=str(run), progress=False))
