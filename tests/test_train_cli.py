"""`ptgpt train`, `ptgpt generate` and `ptgpt eval` end to end, on a corpus with a real SentencePiece model."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner
from corpus_factory import write_sentencepiece_corpus

from ptgpt.cli.train import eval_command, generate, train
from training.metrics import read_metrics


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    return write_sentencepiece_corpus(tmp_path_factory.mktemp("corpus"))


TINY_FLAGS = (
    "--n-layer 2 --n-embd 32 --n-head 2 --n-kv-head 1 --mlp-hidden 64 --max-seq-len 64 --block-size 16"
)
FLAGS = f"{TINY_FLAGS} --batch-size 4 --eval-every 3 --checkpoint-every 3 --log-every 1 --progress false --eval-batches none --sample-tokens 8"


@pytest.mark.slow
def test_train_generate_eval(corpus, tmp_path):
    run = tmp_path / "run"
    runner = CliRunner()
    args = ["--corpus", str(corpus), "--run", str(run), "--max-steps", "3", *FLAGS.split()]
    result = runner.invoke(train, args, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert [r["step"] for r in read_metrics(run)] == [1, 2, 3]
    samples = (run / "samples.txt").read_text(encoding="utf-8").splitlines()
    assert len(samples) == 4 and samples[0].startswith("[step 3] 'Era uma vez")

    # the same command with a larger target continues the run
    args[args.index("--max-steps") + 1] = "5"
    assert runner.invoke(train, args, catch_exceptions=False).exit_code == 0
    assert [r["step"] for r in read_metrics(run)] == [1, 2, 3, 4, 5]

    result = runner.invoke(
        generate, ["--run", str(run), "--prompt", "O rio", "--max-new-tokens", "5", "--device", "cpu"]
    )
    assert result.exit_code == 0, result.output
    assert result.stdout.startswith("O rio")

    result = runner.invoke(eval_command, ["--run", str(run), "--device", "cpu"])
    assert result.exit_code == 0, result.output
    figures = json.loads(result.stdout)
    assert figures["checkpoint"].endswith("step_0000005")
    assert figures["bpb"] == pytest.approx(read_metrics(run)[-1]["val_bpb"])  # the whole split both times


def test_generate_needs_run_or_checkpoint():
    result = CliRunner().invoke(generate, ["--prompt", "Era"])
    assert result.exit_code != 0 and "exactly one of --run or --checkpoint" in result.output
