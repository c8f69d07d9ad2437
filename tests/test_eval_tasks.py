"""The evaluation suite (training/eval_tasks.py, `ptgpt eval`, `ptgpt compare`) on real corpora.

Corpora are built by the corpus stage itself: from the project's sample books (always there) and, for
the test that a trained model beats the trivial baseline, from real books in ../shared/gutenberg-pt.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import torch
from click.testing import CliRunner

from common.errors import UserError
from corpus.build import CorpusConfig, build_corpus
from corpus.split import SplitConfig
from corpus.tokenizer import TokenizerConfig
from ptgpt.cli.evaluate import compare, eval_command
from training.checkpoint import save_model
from training.data import CorpusInfo
from training.eval_tasks import (
    QUICK,
    ChoiceItem,
    SuiteConfig,
    _choice,
    bpb_per_book,
    build_choice_items,
    build_lastword_items,
    first_word,
    load_items,
    neutral_start,
    normalize_word,
    overlap_choice,
    quick_eval,
    read_split_text,
    run_suite,
    score_choice,
    score_lastword,
)
from training.evaluate import load_tokenizer
from training.model import GPT, ModelConfig

# Many books in validation and test, so the held-out splits have several books even in a small corpus.
SPLIT = SplitConfig(validation_fraction=0.2, test_fraction=0.3)
TINY = dict(n_layer=2, n_embd=64, n_head=4, n_kv_head=2, mlp_hidden=128, max_seq_len=128)


@pytest.fixture(autouse=True)
def _one_thread():
    """Small models on a shared CPU: one thread is many times faster than threads that wait on each other."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def sample_corpus(tmp_path_factory) -> Path:
    from fakegutenberg.books import sample_books

    root = tmp_path_factory.mktemp("eval")
    raw = root / "raw"
    raw.mkdir()
    for book in sample_books(extra=12, extra_kb=8):
        (raw / f"{book.id}.txt").write_bytes(book.raw_bytes())
    config = CorpusConfig(split=SPLIT, tokenizer=TokenizerConfig(vocab_size=600))
    build_corpus(raw, root / "corpus", config, workers=1, progress=False)
    return root / "corpus"


def tiny_model(corpus: Path, seed: int = 0) -> GPT:
    torch.manual_seed(seed)
    return GPT(ModelConfig(vocab_size=CorpusInfo.from_dir(corpus).vocab_size, **TINY)).eval()


def test_items_are_deterministic_and_come_from_held_out_books(sample_corpus: Path) -> None:
    config = SuiteConfig(n_lastword=60, n_choice=40)
    books = read_split_text(sample_corpus, "test")
    lastword, choice = build_lastword_items(books, config), build_choice_items(books, config)
    assert (len(lastword), len(choice)) == (60, 40)
    again = read_split_text(sample_corpus, "test")
    assert build_lastword_items(again, config) == lastword and build_choice_items(again, config) == choice
    other_seed = SuiteConfig(n_lastword=60, n_choice=40, seed=7)
    assert build_lastword_items(books, other_seed) != lastword

    splits = CorpusInfo.from_dir(sample_corpus).manifest["splits"]
    test_books, train_books = set(splits["test"]["books"]), set(splits["train"]["books"])
    train_text = [t for ps in read_split_text(sample_corpus, "train").values() for t in ps]
    for item in lastword:
        assert item.book_id in test_books
        assert sum(ch.isalpha() for ch in item.target) >= 4
        passage = item.context + " " + item.target
        assert any(passage in p for p in books[item.book_id])  # the target really ends that passage
        assert not any(item.context in p for p in train_text)
    for item in choice:
        assert item.book_id in test_books and not set(item.distractor_books) & train_books
        assert len(set(item.candidates)) == 4 and 0 <= item.label < 4
        true = item.candidates[item.label]
        assert any(item.context + " " + true in p for p in books[item.book_id])
        assert item.book_id not in item.distractor_books
    assert {item.label for item in choice} == {0, 1, 2, 3}  # the true one is not always in one place


def test_word_matching_is_nfc_and_ignores_punctuation() -> None:
    decomposed = "coração".replace("ç", "c\u0327").replace("ã", "a\u0303")
    assert first_word(" " + decomposed + ", disse") == normalize_word("«coração»") == "coração"
    assert first_word(" disse-lhe que") == "disse-lhe"
    assert first_word(", casa") == ""  # a continuation that does not start with a word is wrong


def test_random_model_scores_chance(sample_corpus: Path) -> None:
    tokenizer = load_tokenizer(CorpusInfo.from_dir(sample_corpus).tokenizer_path)
    lastword, choice = load_items(sample_corpus, SuiteConfig(n_lastword=40, n_choice=200))
    assert len(choice) >= 100
    accs = [score_choice(tiny_model(sample_corpus, seed), tokenizer, choice)["acc"] for seed in range(2)]
    # 2 x >= 100 items: the mean's standard deviation at p = 0.25 is under 0.031; allow about 4 of them
    assert abs(sum(accs) / len(accs) - 0.25) < 0.12, accs
    assert score_lastword(tiny_model(sample_corpus), tokenizer, lastword)["acc"] <= 0.05


def test_quick_eval_is_a_flat_dict_of_floats(sample_corpus: Path) -> None:
    tokenizer = load_tokenizer(CorpusInfo.from_dir(sample_corpus).tokenizer_path)
    figures = quick_eval(tiny_model(sample_corpus), tokenizer, sample_corpus)
    assert set(figures) == {"lastword_acc", "choice_acc", "choice_acc_per_byte"}
    assert all(isinstance(v, float) and 0 <= v <= 1 for v in figures.values())
    lastword, choice = load_items(sample_corpus, QUICK)
    assert len(lastword) == QUICK.n_lastword and len(choice) == QUICK.n_choice


def test_transformers_export_scores_the_same(sample_corpus: Path, tmp_path: Path) -> None:
    transformers = pytest.importorskip("transformers")
    from export.hf import export_model

    info = CorpusInfo.from_dir(sample_corpus)
    tokenizer = load_tokenizer(info.tokenizer_path)
    ours = tiny_model(sample_corpus, seed=3)
    # a little structure, so greedy continuations are not all one token
    with torch.no_grad():
        ours.tok_emb.weight.mul_(20)
    export_model(ours, tmp_path / "hf", info.tokenizer_path)
    hf = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "hf").eval()

    lastword, choice = load_items(sample_corpus, SuiteConfig(n_lastword=25, n_choice=25))
    a, b = score_choice(ours, tokenizer, choice), score_choice(hf, tokenizer, choice)
    assert a == b
    a, b = score_lastword(ours, tokenizer, lastword), score_lastword(hf, tokenizer, lastword)
    assert a == b and len(set(a["predictions"])) > 1
    ours_bpb = bpb_per_book(ours, sample_corpus, "test", 64, max_windows=3)
    hf_bpb = bpb_per_book(hf, sample_corpus, "test", 64, max_windows=3)
    assert ours_bpb.keys() == hf_bpb.keys()
    for book, figures in ours_bpb.items():
        assert figures["bpb"] == pytest.approx(hf_bpb[book]["bpb"], rel=1e-5)


def _checkpoint(corpus: Path, run: Path, step: int = 10) -> Path:
    info = CorpusInfo.from_dir(corpus)
    return save_model(
        tiny_model(corpus),
        run / "checkpoints" / f"step_{step:07d}",
        extra={
            "corpus": str(corpus),
            "tokenizer_path": str(info.tokenizer_path),
            "tokenizer_sha256": info.tokenizer_sha256,
            "step": step,
        },
    )


def test_overlap_heuristic_counts_context_words_and_splits_ties() -> None:
    items = [
        # "marinheiros" and "lisboa" reappear in the first candidate only: right
        ChoiceItem(
            1,
            "O navio partiu para Lisboa com marinheiros.",
            ("Os marinheiros viram Lisboa.", "Ela sorriu.", "Chovia muito.", "Nada."),
            0,
        ),
        # no word of 4+ letters in the context: a four-way tie, worth 1/4
        ChoiceItem(1, "Era uma vez um rei.", ("A rainha.", "O povo.", "Um dia.", "Ali."), 2),
        # "casa" and "grande" tie the first two candidates; the true one is the third: wrong
        ChoiceItem(1, "A casa grande ardia.", ("A casa caiu.", "Grande dia.", "Outra coisa.", "Fim."), 2),
    ]
    assert overlap_choice(items) == pytest.approx((1 + 0.25 + 0) / 3)


def test_choice_scores_pmi_and_likelihood_per_byte(sample_corpus: Path) -> None:
    """The candidate likeliest per byte is a generic one (it is as likely without the context); PMI takes
    that out and picks the one the context makes likelier."""
    from training.eval_tasks import continuation_ids

    tokenizer = load_tokenizer(CorpusInfo.from_dir(sample_corpus).tokenizer_path)
    context = "O velho abriu a porta da igreja."
    candidates = ("Disse que sim.", "O sino tocou na torre.", "Choveu em Roma.", "Era verde e azul.")
    # (with the context, without it) in nats per byte
    per_byte = {0: (-1.0, -1.1), 1: (-1.5, -3.0), 2: (-2.0, -2.0), 3: (-2.5, -2.4)}
    cont = {tuple(continuation_ids(tokenizer, context, c)[1]): i for i, c in enumerate(candidates)}
    start = neutral_start(tokenizer)

    def logprobs(pairs):
        out = []
        for ctx, ids in pairs:
            i = cont[tuple(ids)]
            out.append(per_byte[i][ctx == start] * len((" " + candidates[i]).encode()))
        return out

    scores = _choice(logprobs, tokenizer, [ChoiceItem(1, context, candidates, label=1)])
    assert (scores["acc"], scores["acc_per_byte"]) == (1.0, 0.0)
    assert (scores["picks"], scores["picks_per_byte"]) == ([1], [0])


def test_a_task_without_items_says_why(sample_corpus: Path) -> None:
    from ptgpt.cli.evaluate import format_report

    tokenizer = load_tokenizer(CorpusInfo.from_dir(sample_corpus).tokenizer_path)
    config = SuiteConfig(min_word_letters=99, context_sentences=99)
    result = run_suite(tiny_model(sample_corpus), tokenizer, sample_corpus, ("lastword", "choice"), config)
    assert result["lastword_acc"] is None and result["choice_acc"] is None and result["choice_n"] == 0
    report = format_report(result)
    assert "nan" not in report and "no items" in report and "99+" in report


def test_eval_command_prints_a_table_and_writes_json(sample_corpus: Path, tmp_path: Path) -> None:
    checkpoint = _checkpoint(sample_corpus, tmp_path / "run")
    out = tmp_path / "eval.json"
    out.write_text(json.dumps({"kind": "ptgpt-eval"}))  # an earlier eval's output may be overwritten
    args = ["--checkpoint", str(checkpoint), "--quick", "--json", str(out), "--device", "cpu"]
    result = CliRunner().invoke(eval_command, [*args, "--block-size", "64"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    figures = json.loads(out.read_text())
    assert figures["step"] == 10 and set(figures["bpb"]) == {"validation", "test"}
    assert (figures["lastword_n"], figures["choice_n"]) == (QUICK.n_lastword, QUICK.n_choice)
    assert 0 <= figures["lastword_acc"] <= 1 and 0 <= figures["choice_acc"] <= 1
    assert figures["choice_baselines"]["chance"] == 0.25
    test_books = CorpusInfo.from_dir(sample_corpus).manifest["splits"]["test"]["books"]
    assert sorted(int(b) for b in figures["bpb_per_book"]["test"]) == sorted(test_books)
    for line in ("bpb test", "lastword acc", "choice acc", "test books"):
        assert line in result.output
    # a random model is no better than a uniform distribution over the vocabulary
    assert figures["bpb"]["test"] > 0.9 * figures["bpb_baselines"]["test"]["uniform"]
    # every baseline is there, the n-gram well below the unigram, and the verdict says the model loses
    baselines = figures["bpb_baselines"]["test"]
    assert baselines["ngram"] < baselines["unigram"] < baselines["uniform"] and figures[
        "ngram_order"
    ] in range(2, 6)
    assert {"overlap", "ngram", "ngram_per_byte", "unigram", "chance"} <= set(figures["choice_baselines"])
    assert {"ngram", "most_frequent_word"} <= set(figures["lastword_baselines"])
    assert f"{figures['ngram_order']}-gram KN" in figures["verdicts"]["bpb test"]["loses_to"]
    assert "The model beats" in result.output and "loses to" in result.output


def test_eval_json_never_overwrites_a_file_it_did_not_write(sample_corpus: Path, tmp_path: Path) -> None:
    checkpoint = _checkpoint(sample_corpus, tmp_path / "run")
    config = (checkpoint / "config.json").read_text()
    result = CliRunner().invoke(
        eval_command, ["--checkpoint", str(checkpoint), "--json", str(checkpoint / "config.json")]
    )
    assert isinstance(result.exception, UserError) and "refusing to overwrite" in str(result.exception)
    assert (
        CliRunner()
        .invoke(eval_command, ["--checkpoint", str(checkpoint), "--json", str(checkpoint)])
        .exit_code
    )
    assert (checkpoint / "config.json").read_text() == config


def test_eval_uses_the_run_precision(sample_corpus: Path, tmp_path: Path) -> None:
    """A run trained in fp32 is scored in fp32 and one trained in bf16 in bf16 (same weights, so the
    figures differ only by the precision)."""
    figures = {}
    for precision in ("fp32", "bf16"):
        checkpoint = _checkpoint(sample_corpus, tmp_path / precision)
        meta = json.loads((checkpoint / "config.json").read_text())
        meta["train"] = {"precision": precision}
        (checkpoint / "config.json").write_text(json.dumps(meta))
        out = tmp_path / f"{precision}.json"
        args = [
            "--checkpoint",
            str(checkpoint),
            "--tasks",
            "bpb",
            "--split",
            "validation",
            "--max-batches",
            "2",
        ]
        result = CliRunner().invoke(
            eval_command,
            [*args, "--block-size", "32", "--device", "cpu", "--json", str(out)],
            catch_exceptions=False,
        )
        assert result.exit_code == 0, result.output
        figures[precision] = json.loads(out.read_text())
        assert figures[precision]["precision"] == precision
    assert figures["fp32"]["bpb"]["validation"] != figures["bf16"]["bpb"]["validation"]
    assert figures["fp32"]["bpb"]["validation"] == pytest.approx(
        figures["bf16"]["bpb"]["validation"], rel=0.05
    )


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--tasks", "bpb,hellaswag"], "unknown task hellaswag"),
        (["--batch-size", "0"], "--batch-size must be >= 1"),
        (["--split", "dev"], "unknown split dev"),
    ],
)
def test_eval_command_refuses_bad_input(sample_corpus: Path, tmp_path: Path, extra, message) -> None:
    checkpoint = _checkpoint(sample_corpus, tmp_path / "run")
    result = CliRunner().invoke(eval_command, ["--checkpoint", str(checkpoint), *extra])
    assert isinstance(result.exception, UserError) and message in str(result.exception)
    assert "\n" not in str(result.exception)


def test_eval_command_without_a_checkpoint(tmp_path: Path) -> None:
    (tmp_path / "run").mkdir()
    result = CliRunner().invoke(eval_command, ["--run", str(tmp_path / "run")])
    message = str(result.exception)
    assert isinstance(result.exception, UserError) and "checkpoint" in message and str(tmp_path) in message
    result = CliRunner().invoke(eval_command, ["--checkpoint", str(tmp_path / "nowhere")])
    assert isinstance(result.exception, UserError) and "nowhere" in str(result.exception)


def test_compare_tables_and_plots_runs(tmp_path: Path) -> None:
    runs = []
    for name, rate in (("fast", 0.5), ("slow", 0.8)):
        run = tmp_path / name
        run.mkdir()
        lines = [
            {
                "step": s,
                "loss": 5.0 * rate**s,
                "tokens": 1000 * s,
                "val_bpb": 4.0 * rate**s,
                "choice_acc": 0.3,
            }
            for s in (1, 2, 3)
        ]
        (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines))
        runs.append(str(run))
    plot = tmp_path / "out" / "compare.png"
    result = CliRunner().invoke(compare, [*runs, "--plot", str(plot)], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    rows = result.output.splitlines()
    assert rows[0].split()[:5] == ["run", "step", "tokens", "loss", "val_bpb"]
    assert f"{4.0 * 0.5**3:.4f}" in rows[1] and f"{4.0 * 0.8**3:.4f}" in rows[2]
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    result = CliRunner().invoke(compare, [runs[0], str(tmp_path / "none")])
    assert isinstance(result.exception, UserError)


def test_compare_puts_each_run_beside_its_corpus_baselines(sample_corpus: Path, tmp_path: Path) -> None:
    from training.eval_tasks import baseline_figures

    base = baseline_figures(sample_corpus, block_size=32)
    runs = []
    for name, delta in (("better", -0.5), ("worse", 0.5)):  # val_bpb either side of the n-gram's
        run = tmp_path / name
        run.mkdir()
        record = {"step": 5, "loss": 3.0, "tokens": 500, "val_bpb": base["ngram_val_bpb"] + delta}
        (run / "metrics.jsonl").write_text(json.dumps(record) + "\n")
        (run / "config.json").write_text(
            json.dumps({"corpus": str(sample_corpus), "train": {"block_size": 32}})
        )
        runs.append(str(run))
    out = tmp_path / "compare.json"
    args = [*runs, "--plot", str(tmp_path / "c.png"), "--json", str(out)]
    result = CliRunner().invoke(compare, args, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert f"baselines of {sample_corpus}" in result.output
    verdicts = json.loads(out.read_text())["verdicts"]
    order = int(base["ngram_order"])
    assert [v.split()[0] for v in verdicts[runs[0]]["beats"]] == [f"{order}-gram"]
    assert [v.split()[0] for v in verdicts[runs[1]]["loses_to"]] == [f"{order}-gram"]
    assert verdicts[runs[0]]["loses_to"] == verdicts[runs[1]]["beats"] == []


# Small real books, several of them prose, split by the corpus stage's own hash.
REAL_BOOKS = "32378 28707 35982 21563 23879 30091 25437 16385 24463 69596 21786 30413 34275 25148 25593"


def test_trained_tiny_model_beats_the_unigram_baseline_on_real_books(
    shared_books: Path, tmp_path: Path
) -> None:
    """A tiny model trained for ~150k tokens of real books: its bits per byte on held-out books is well
    under a token unigram model's (fitted on the whole training split), while chance (uniform) is above
    both. The lastword and choice tasks need a larger model than a test can train to beat their baselines."""
    from training.eval_tasks import run_suite
    from training.train import main

    raw = tmp_path / "raw"
    raw.mkdir()
    for key in REAL_BOOKS.split():
        (raw / f"{key}.txt").symlink_to(shared_books / "books" / f"{key}.txt")
    corpus = tmp_path / "corpus"
    config = CorpusConfig(split=SplitConfig(0.15, 0.35), tokenizer=TokenizerConfig(vocab_size=1000))
    build_corpus(raw, corpus, config, workers=1, progress=False)
    flags = (
        "--n-layer 2 --n-embd 64 --n-head 4 --n-kv-head 2 --mlp-hidden 128 --max-seq-len 128 --block-size 64 "
        "--batch-size 16 --lr 3e-3 --warmup-steps 20 --eval-every 0 --log-every 50 --progress false "
        "--samples false --tensorboard false --plot false --threads 1"
    )
    main(["--corpus", str(corpus), "--run-dir", str(tmp_path / "run"), "--max-steps", "150", *flags.split()])

    from training.checkpoint import latest_checkpoint, load_model

    model = load_model(latest_checkpoint(tmp_path / "run"))
    tokenizer = load_tokenizer(corpus / "tokenizer.model")
    result = run_suite(model, tokenizer, corpus, ("bpb",), splits=("test",), block_size=64, batch_size=16)
    bpb, baselines = result["bpb"]["test"], result["bpb_baselines"]["test"]
    assert bpb < baselines["unigram"] - 0.2 < baselines["uniform"], (bpb, baselines)
    n_test_rows = sum(pq.read_metadata(p).num_rows for p in CorpusInfo.from_dir(corpus).shard_paths("test"))
    assert n_test_rows > 500 and len(result["bpb_per_book"]["test"]) >= 3
    assert all(math.isfinite(v) for v in result["bpb_per_book"]["test"].values())


def test_trainer_logs_the_quick_suite_at_each_evaluation(sample_corpus: Path, tmp_path: Path) -> None:
    from training.metrics import read_metrics
    from training.train import main

    flags = (
        "--n-layer 1 --n-embd 32 --n-head 2 --n-kv-head 1 --mlp-hidden 64 --max-seq-len 128 --block-size 32 "
        "--batch-size 4 --eval-every 2 --eval-batches 2 --log-every 1 --progress false --samples false "
        "--tensorboard false --plot false --threads 1"
    )
    run = tmp_path / "run"
    main(["--corpus", str(sample_corpus), "--run-dir", str(run), "--max-steps", "4", *flags.split()])
    evals = [r for r in read_metrics(run) if "val_bpb" in r]
    assert [r["step"] for r in evals] == [2, 4]
    assert all(0 <= r["lastword_acc"] <= 1 and 0 <= r["choice_acc"] <= 1 for r in evals)
    main(
        ["--corpus", str(sample_corpus), "--run-dir", str(tmp_path / "off"), "--max-steps", "2"]
        + flags.split()
        + ["--eval-tasks", "false"]
    )
    assert "choice_acc" not in read_metrics(tmp_path / "off")[-1]
