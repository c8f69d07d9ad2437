"""Classification fine-tuning: scores, baselines, the author task's book-disjoint split, the CLI."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from chat_factory import write_base_run, write_sample_corpus
from click.testing import CliRunner

from common.errors import UserError
from corpus.instructions import AuthorTaskConfig, Paragraph, author_attribution, author_key
from ptgpt.cli import main
from training.classify import (
    ClassifyConfig,
    GPTClassifier,
    NaiveBayes,
    load_classifier,
    macro_f1,
    majority_baseline,
    read_labelled,
    scores,
    train_classifier,
)
from training.model import GPT, ModelConfig


def test_macro_f1_by_hand():
    # class 0: tp 2, fp 1, fn 0 -> F1 0.8; class 1: tp 1, fp 0, fn 1 -> F1 2/3; class 2: never -> 0
    assert macro_f1([0, 0, 1, 1], [0, 0, 0, 1], 3) == pytest.approx((0.8 + 2 / 3 + 0) / 3)
    assert scores([0, 1], [0, 1], 2) == {"accuracy": 1.0, "macro_f1": 1.0}
    assert majority_baseline([2, 1, 2], 4) == [2, 2, 2, 2]


def test_naive_bayes_learns_word_preferences():
    train = ["o mar azul e o barco", "o barco no mar", "a serra verde e o pinhal", "o pinhal na serra"]
    nb = NaiveBayes().fit(train, [0, 0, 1, 1], 2)
    assert nb.predict(["um barco", "pinhal", "mar e serra e serra"]) == [0, 1, 1]
    assert nb.predict(["palavras nunca vistas"]) in ([0], [1])  # only the prior decides


def test_author_names_group_by_surname_skeleton():
    assert author_key("Camilo Castello Branco") == author_key("Camilo Castelo Branco") == "branco"
    assert author_key("Anthero de Quental") == author_key("Antero Tarquínio de Quental")
    assert author_key("Eça Queirós") == author_key("José Maria Eça de Queirós")


def test_author_task_splits_books_not_paragraphs():
    paragraphs = [
        Paragraph(book, i, f"Livro {book}", author, f"{author} parágrafo {i} do livro {book}. " * 10)
        for author, books in (("Ana Silva", [1, 2, 3]), ("Rui Costa", [4, 5]), ("Só Um", [6]))
        for book in books
        for i in range(5)
    ]
    train, test, described = author_attribution(paragraphs, AuthorTaskConfig(n_authors=5, min_chars=10))
    assert set(described) == {"Ana Silva", "Rui Costa"}  # one book only: cannot be split by book
    for books in described.values():
        assert books["test_books"] and books["train_books"]
        assert not set(books["test_books"]) & set(books["train_books"])
    book_of = {p.text: p.book_id for p in paragraphs}
    assert not {book_of[t] for t, _ in train} & {book_of[t] for t, _ in test}
    with pytest.raises(UserError, match="at least two authors"):
        author_attribution(paragraphs[:15], AuthorTaskConfig(min_chars=10))


def test_mean_pool_ignores_padding():
    torch.manual_seed(0)
    gpt = GPT(ModelConfig.preset("tiny", vocab_size=50, max_seq_len=16, n_layer=1, n_embd=32, mlp_hidden=32))
    model = GPTClassifier(gpt, 3, "mean").eval()
    x = torch.tensor([[1, 7, 9, 4]])
    padded = torch.tensor([[1, 7, 9, 4, 2, 2, 2]])
    assert torch.allclose(model(x, torch.tensor([4])), model(padded, torch.tensor([4])), atol=1e-6)
    model.pool = "last"
    assert torch.allclose(model(x, torch.tensor([4])), model(padded, torch.tensor([4])), atol=1e-6)


def test_labelled_files(tmp_path):
    good = tmp_path / "d.csv"
    good.write_text('text,label\n"um, dois",a\ntrês,b\n')
    assert read_labelled(good) == [("um, dois", "a"), ("três", "b")]
    bad = tmp_path / "d.jsonl"
    bad.write_text('{"text": "x", "label": "a"}\n{"text": "y"}\n')
    with pytest.raises(UserError, match="line 2"):
        read_labelled(bad)


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("cls")
    return write_base_run(root / "base", write_sample_corpus(root / "corpus", n_extra=0))


def test_classifier_learns_a_separable_task_and_reloads(base, tmp_path):
    sea = [
        "O mar bate no barco do pescador.",
        "As ondas do mar levam o barco.",
        "No porto, o barco espera o mar.",
    ]
    hill = ["A serra tem pinheiros e neve.", "Subimos a serra pelo pinhal.", "Na serra, o pinhal é escuro."]
    rows = [(t, "mar") for t in sea] * 6 + [(t, "serra") for t in hill] * 6
    c = ClassifyConfig(
        base=str(base), run_dir=str(tmp_path / "run"), epochs=4, batch_size=8, lr=2e-3, threads=1
    )
    report = train_classifier(c, rows, rows[::3], progress=False)
    assert report["model"]["accuracy"] == 1.0
    assert report["majority"]["accuracy"] == pytest.approx(0.5)
    assert json.loads((tmp_path / "run" / "report.json").read_text())["labels"] == ["mar", "serra"]
    model, labels, _ = load_classifier(tmp_path / "run" / "model")
    assert labels == ["mar", "serra"] and model.head.out_features == 2


def test_cli_classify_a_csv(base, tmp_path):
    data = tmp_path / "d.csv"
    data.write_text("text,label\n" + "".join(f"o mar {i},mar\na serra {i},serra\n" for i in range(10)))
    args = ["classify", "--base", str(base), "--task", str(data), "--run", str(tmp_path / "r")]
    result = CliRunner().invoke(main, [*args, "--epochs", "1", "--threads", "1"])
    assert result.exit_code == 0, result.output
    assert "majority" in result.output and "bag-of-words" in result.output and "model" in result.output


def test_classifier_resume_is_exact(base, tmp_path):
    """The third kind of run resumes bit-exactly too: head, body, AdamW state and data order."""
    from training import checkpoint as ckpt
    from training.metrics import read_metrics

    rows = [(f"O mar e o barco numero {i}.", "mar") for i in range(12)]
    rows += [(f"A serra e o pinhal numero {i}.", "serra") for i in range(12)]

    def config(run, steps):  # one schedule (decay_steps) for both, as for an interrupted run
        return ClassifyConfig(
            base=str(base),
            run_dir=str(run),
            max_steps=steps,
            decay_steps=6,
            log_every=1,
            batch_size=4,
            threads=1,
            checkpoint_every=3,
            progress=False,
        )

    train_classifier(config(tmp_path / "straight", 6), rows, rows[::4], progress=False)
    train_classifier(config(tmp_path / "resumed", 3), rows, rows[::4], progress=False)
    train_classifier(config(tmp_path / "resumed", 6), rows, rows[::4], progress=False)
    a = {r["step"]: r["loss"] for r in read_metrics(tmp_path / "straight")}
    b = {r["step"]: r["loss"] for r in read_metrics(tmp_path / "resumed")}
    assert a == b and len(a) == 6
    ha = load_classifier(tmp_path / "straight" / "model")[0].state_dict()
    hb = load_classifier(tmp_path / "resumed" / "model")[0].state_dict()
    assert all(torch.equal(ha[k], hb[k]) for k in ha)
    assert [s for s, _ in ckpt.list_step_dirs(tmp_path / "resumed")] == [6]  # keep_last 1


def test_split_keeps_every_class_in_training_and_refuses_unseen_labels(base, tmp_path):
    from training.classify import split_rows

    rows = [("a b c", "x")] * 10 + [("d e f", "y")] * 3 + [("g h i", "z")]
    train, test = split_rows(rows, 0.5, seed=0)
    assert {y for _, y in train} == {"x", "y", "z"} and {y for _, y in test} <= {"x", "y"}
    c = ClassifyConfig(base=str(base), run_dir=str(tmp_path / "run"), threads=1, progress=False)
    with pytest.raises(UserError, match="never seen in training"):
        train_classifier(c, [("a", "x"), ("b", "y")], [("c", "w")], progress=False)
