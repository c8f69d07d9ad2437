"""Sizing for a time budget (training/sizing.py): the rule is a pure function of the probe, and a sized
run records its choice, trains that shape and continues it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from corpus_factory import random_books, write_corpus

from training import sizing
from training.config import TrainConfig
from training.model import GPT, ModelConfig
from training.train import train


def probe_of(speeds: list[float], vocab: int = 8192) -> sizing.ProbeResult:
    names = [s.name for s in sizing.LADDER[: len(speeds)]]
    return sizing.ProbeResult("cpu", vocab, 256, dict(zip(names, speeds, strict=True)), 1.0)


# a CPU-like probe: tokens/s falling as shapes grow
SPEEDS = [40_000, 30_000, 18_000, 9_000, 5_000, 3_000, 2_000, 900]


def test_the_same_probe_gives_the_same_choice() -> None:
    a = sizing.choose_size(probe_of(SPEEDS), 1800, 20_000_000)
    b = sizing.choose_size(probe_of(list(SPEEDS)), 1800.0, 20_000_000)
    assert a == b and a.shape in sizing.LADDER


def test_the_pick_is_the_shape_the_law_predicts_best() -> None:
    probe, budget, unique = probe_of(SPEEDS), 1800, 10**9
    choice = sizing.choose_size(probe, budget, unique)
    shapes = sizing.LADDER[: len(SPEEDS)]
    predicted = [
        sizing.LAW.predict(sizing.matmul_params(s, 8192), v * budget)
        for s, v in zip(shapes, SPEEDS, strict=True)
    ]
    assert choice.shape == shapes[predicted.index(min(predicted))]
    assert choice.predicted_bpb == pytest.approx(min(predicted))
    assert choice.projected_tokens == int(SPEEDS[sizing.LADDER.index(choice.shape)] * budget)
    assert choice.lr == pytest.approx(min(4e-3, 6e-4 * 768 / choice.shape.n_embd))
    # a law that only rewards data picks the fastest shape; one that only rewards size, the largest
    data_only = sizing.LossLaw(1.0, 0.0, 0.3, 50.0, 0.3)
    size_only = sizing.LossLaw(1.0, 50.0, 0.3, 0.0, 0.3)
    assert sizing.choose_size(probe, budget, unique, data_only).shape == shapes[0]
    assert sizing.choose_size(probe, budget, unique, size_only).shape == shapes[-1]


def test_more_time_never_buys_a_smaller_model_and_repeats_are_worth_less() -> None:
    widths = [sizing.choose_size(probe_of(SPEEDS), t, 10**9).shape.n_embd for t in (60, 600, 7200, 10**6)]
    assert widths == sorted(widths) and widths[0] < widths[-1]
    plenty = sizing.choose_size(probe_of(SPEEDS), 7200, 10**9)
    scarce = sizing.choose_size(probe_of(SPEEDS), 7200, 200_000)  # the budget reads it ~100 times over
    assert scarce.predicted_bpb > plenty.predicted_bpb + 0.1 and scarce.epochs > 10


def test_the_reason_names_the_pick_and_what_the_others_would_reach() -> None:
    choice = sizing.choose_size(probe_of(SPEEDS[:3]), 600, 10**7)
    assert choice.shape.name in choice.reason and "predicted" in choice.reason
    assert all(s.name in choice.reason for s in sizing.LADDER[:3])


def test_effective_tokens_counts_repeats_at_a_decaying_worth() -> None:
    assert sizing.effective_tokens(5e5, 1e6) == 5e5
    values = [sizing.effective_tokens(k * 1e6, 1e6) for k in (1, 2, 4, 16, 64, 200)]
    assert all(b > a for a, b in zip(values, values[1:], strict=False))
    assert values[1] == pytest.approx(1e6 + 15.4e6 * (1 - torch.exp(torch.tensor(-1 / 15.4)).item()))
    assert sizing.effective_tokens(1e12, 1e6) == pytest.approx(1e6 * (1 + sizing.REPEAT_HALF_LIFE))  # ceiling


def test_tokens_per_step_is_a_bounded_power_of_two() -> None:
    for projected in (10, 1e5, 3e6, 2e7, 1e12):
        n = sizing.tokens_per_step_for(projected, 256)
        assert n & (n - 1) == 0 and 2048 <= n <= 2**19


def test_matmul_params_matches_the_model() -> None:
    for shape in sizing.LADDER[:5]:
        gpt = GPT(ModelConfig(vocab_size=500, max_seq_len=64, **shape.overrides()))
        norms = sum(p.numel() for n, p in gpt.named_parameters() if p.dim() == 1)
        expected = gpt.num_params() - gpt.tok_emb.weight.numel() - norms
        assert sizing.matmul_params(shape, 500) == expected


def test_the_probe_measures_shapes_smallest_first() -> None:
    torch.set_num_threads(1)
    probe = sizing.probe_throughput(300, torch.device("cpu"), limit_seconds=3)
    names = list(probe.tokens_per_second)
    assert names == [s.name for s in sizing.LADDER[: len(names)]] and names
    assert all(v > 0 for v in probe.tokens_per_second.values()) and probe.block_size == 256


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("corpus")
    splits = {"train": random_books(0, 12, max_paragraphs=12), "validation": random_books(1, 3, first_id=900)}
    return write_corpus(root, splits, rows_per_group=6)


def sized_config(corpus: Path, run: Path, **kw) -> TrainConfig:
    base = dict(
        corpus=str(corpus),
        run_dir=str(run),
        max_steps=None,
        time_budget="6s",
        warmup_steps=2,
        eval_every=0,
        checkpoint_every=10_000,
        shuffle_buffer=8,
        threads=1,
        samples=False,
        tensorboard=False,
        progress=False,
        plot=False,
        eval_tasks=False,
        verify_shards=False,
    )
    return TrainConfig(**{**base, **kw})


def test_a_sized_run_records_its_choice_trains_it_and_continues_it(corpus, tmp_path) -> None:
    run = tmp_path / "sized"
    first = train(sized_config(corpus, run))
    meta = json.loads((run / "config.json").read_text())
    choice = meta["sizing"]["choice"]
    shape = {k: meta["model"][k] for k in choice["shape"]}
    assert shape == choice["shape"] and sizing.Shape(**shape) in sizing.LADDER
    assert meta["model"]["max_seq_len"] == meta["block_size"] == choice["block_size"]
    assert meta["train"]["lr"] == choice["lr"] and meta["train"]["batch_size"] == choice["micro_batch"]
    # a larger budget continues the same model: the recorded choice, not a new probe
    second = train(sized_config(corpus, run, time_budget="9s"))
    assert second["start_step"] == first["step"] and second["step"] > first["step"]
    assert json.loads((run / "config.json").read_text())["sizing"] == meta["sizing"]


def test_each_choice_can_be_overridden(corpus, tmp_path) -> None:
    run = tmp_path / "overridden"
    train(sized_config(corpus, run, lr=7e-4, batch_size=3, block_size=64, time_budget="3s"))
    meta = json.loads((run / "config.json").read_text())
    assert (meta["train"]["lr"], meta["train"]["batch_size"], meta["block_size"]) == (7e-4, 3, 64)
    assert "sizing" in meta
    # a shape field means the user chose the shape: nothing is probed
    run = tmp_path / "shaped"
    train(
        sized_config(
            corpus,
            run,
            model_overrides={
                "n_layer": 1,
                "n_embd": 32,
                "n_head": 2,
                "n_kv_head": 1,
                "mlp_hidden": 64,
                "max_seq_len": 32,
            },
            time_budget="2s",
        )
    )
    meta = json.loads((run / "config.json").read_text())
    assert "sizing" not in meta and meta["model"]["n_layer"] == 1 and meta["train"]["lr"] == 1e-3


def test_ptgpt_train_with_only_a_budget_has_no_step_limit_and_is_sized(corpus, tmp_path) -> None:
    from click.testing import CliRunner

    from ptgpt.cli.train import train as train_command

    run = tmp_path / "cli"
    args = ["--corpus", str(corpus), "--run", str(run), "--time-budget", "3s", "--threads", "1"]
    args += ["--eval-every", "0", "--samples", "false", "--tensorboard", "false", "--quiet"]
    result = CliRunner().invoke(train_command, args, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    meta = json.loads((run / "config.json").read_text())
    assert meta["train"]["max_steps"] is None and meta["train"]["time_budget"] == 3 and "sizing" in meta
    # an explicit --max-steps still counts beside the budget
    run = tmp_path / "capped"
    args[3] = str(run)
    result = CliRunner().invoke(train_command, [*args, "--max-steps", "2"], catch_exceptions=False)
    assert result.exit_code == 0 and json.loads((run / "config.json").read_text())["train"]["max_steps"] == 2


def test_a_sized_relu2_run_gets_the_parameters_of_the_swiglu_the_rule_measured(corpus, tmp_path) -> None:
    run = tmp_path / "relu2"
    train(sized_config(corpus, run, model_overrides={"mlp": "relu2"}, time_budget="3s"))
    meta = json.loads((run / "config.json").read_text())
    chosen = meta["sizing"]["choice"]["shape"]
    assert meta["model"]["mlp"] == "relu2" and meta["model"]["mlp_hidden"] == chosen["mlp_hidden"] * 3 // 2
