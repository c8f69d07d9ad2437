"""Classification fine-tuning: a linear head on the decoder's final hidden state, and two baselines.

The text goes in as BOS + its SentencePiece ids (cut to max_len); the final RMSNorm output is pooled
(the last real token, which has attended to the whole text, or the mean over real tokens) and a
linear layer maps it to class logits. Everything trains with AdamW (or only the head, or the last
block and the head: `train_layers`).

The scores are put next to two baselines written here, so a number means something:
  * the majority class (what a classifier that learned nothing gets), and
  * a bag-of-words multinomial naive Bayes over lower-cased words (the classic strong baseline for
    author attribution: function-word frequencies carry much of an author's style).
Accuracy and macro-F1 (the mean of per-class F1, so a small class counts as much as a large one).
"""

from __future__ import annotations

import json
import math
import re
import sys
from collections import Counter
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

from common.errors import UserError
from common.files import write_json_atomic, write_text_atomic
from training import checkpoint as ckpt
from training.chat import load_chat_tokenizer
from training.config import ClassifyConfig
from training.data import EpochSampler
from training.launch import config_parser, task_main
from training.loop import Dist, Loss, Run, Task, run_task
from training.model import GPT, ModelConfig
from training.runs import check_apart, copy_tokenizer_into_run, find_checkpoint, find_tokenizer

HEAD_FILE = "head.safetensors"


# -----------------------------------------------------------------------------------------------
# Data


def read_labelled(path: str | Path, min_labels: int = 2) -> list[tuple[str, str]]:
    """(text, label) rows of a CSV with `text,label` columns or a JSONL of {"text", "label"} objects."""
    import csv
    import json

    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: no such file")
    try:
        rows = _read_labelled(path, csv, json)
    except UnicodeDecodeError as e:
        line = path.read_bytes()[: e.start].count(b"\n") + 1
        raise UserError(
            f"{path}, line {line}: not UTF-8 (byte {e.start + 1}); save the file as UTF-8"
        ) from None
    except csv.Error as e:
        raise UserError(
            f"{path}: not a readable CSV ({e}); a text is limited to {MAX_FIELD:,} characters"
        ) from None
    if len({label for _, label in rows}) < min_labels:
        raise UserError(f"{path}: needs at least {min_labels} different labels")
    return rows


MAX_FIELD = 1 << 20  # characters of one CSV field: far more than max_len tokens can use


def _read_labelled(path: Path, csv, json) -> list[tuple[str, str]]:
    csv.field_size_limit(MAX_FIELD)
    rows = []
    with open(path, encoding="utf-8", newline="") as f:
        if path.suffix == ".csv":
            reader = csv.DictReader(f)
            if not reader.fieldnames or not {"text", "label"} <= set(reader.fieldnames):
                raise UserError(
                    f"{path}: the header must name columns text and label, got {reader.fieldnames}"
                )
            numbered = ((reader.line_num, r) for r in reader)
        else:
            numbered = []
            for n, line in enumerate(f, start=1):
                if line.strip():
                    try:
                        numbered.append((n, json.loads(line)))
                    except json.JSONDecodeError as e:
                        raise UserError(f"{path}, line {n}: not JSON ({e.msg})") from None
        for n, r in numbered:
            if not isinstance(r, dict) or not isinstance(r.get("text"), str) or r.get("label") in (None, ""):
                raise UserError(f"{path}, line {n}: needs a text string and a non-empty label")
            rows.append((r["text"], str(r["label"])))
    return rows


def split_rows(rows: list[tuple[str, str]], test_frac: float, seed: int) -> tuple[list, list]:
    """A seeded train/test split per class (for a user's file; the author task splits by book): every
    class keeps at least one training row, so no test label is unseen; a class of one row is train only."""
    rng = np.random.default_rng(seed)
    by_label: dict[str, list[int]] = {}
    for i, (_, label) in enumerate(rows):
        by_label.setdefault(label, []).append(i)
    check_classes(len(by_label))
    train_ids, test_ids = [], []
    for label in sorted(by_label):
        ids = [by_label[label][j] for j in rng.permutation(len(by_label[label]))]
        n_test = min(len(ids) - 1, round(test_frac * len(ids)))
        test_ids += ids[:n_test]
        train_ids += ids[n_test:]
    if not test_ids:
        raise UserError(f"no test rows: {len(rows)} rows are too few to hold out {test_frac:.0%} per class")
    return [rows[i] for i in sorted(train_ids)], [rows[i] for i in sorted(test_ids)]


MAX_CLASSES = 1000


def check_classes(n: int) -> None:
    if n > MAX_CLASSES:
        raise UserError(f"{n:,} classes: at most {MAX_CLASSES:,} are supported (is the label column right?)")


def few(names, limit: int = 5) -> str:
    """A short listing for an error line, however many there are."""
    names = sorted(names)
    shown = ", ".join(repr(n)[:40] for n in names[:limit])
    return shown + (f" and {len(names) - limit} more" if len(names) > limit else "")


# -----------------------------------------------------------------------------------------------
# Scores and baselines


def macro_f1(y_true: list[int], y_pred: list[int], n_classes: int) -> float:
    """Mean over classes of F1 = 2PR/(P+R); a class never predicted nor present counts 0."""
    f1s = []
    for c in range(n_classes):
        tp = sum(1 for t, p in zip(y_true, y_pred, strict=True) if t == c and p == c)
        fp = sum(1 for t, p in zip(y_true, y_pred, strict=True) if t != c and p == c)
        fn = sum(1 for t, p in zip(y_true, y_pred, strict=True) if t == c and p != c)
        f1s.append(2 * tp / (2 * tp + fp + fn) if tp else 0.0)
    return sum(f1s) / n_classes


def scores(y_true: list[int], y_pred: list[int], n_classes: int) -> dict:
    accuracy = sum(t == p for t, p in zip(y_true, y_pred, strict=True)) / len(y_true)
    return {"accuracy": accuracy, "macro_f1": macro_f1(y_true, y_pred, n_classes)}


def majority_baseline(train_y: list[int], n_test: int) -> list[int]:
    return [Counter(train_y).most_common(1)[0][0]] * n_test


def words(text: str) -> list[str]:
    return re.findall(r"\w+", text.lower())


class NaiveBayes:
    """Multinomial naive Bayes over word counts with add-alpha smoothing."""

    def __init__(self, alpha: float = 1.0):
        self.alpha = alpha

    def fit(self, texts: list[str], labels: list[int], n_classes: int) -> NaiveBayes:
        vocab = {w for t in texts for w in words(t)}
        self.index = {w: i for i, w in enumerate(sorted(vocab))}
        counts = np.zeros((n_classes, len(self.index)))
        for text, label in zip(texts, labels, strict=True):
            for w, n in Counter(words(text)).items():
                counts[label, self.index[w]] += n
        smoothed = counts + self.alpha
        self.log_word = np.log(smoothed / smoothed.sum(axis=1, keepdims=True))
        prior = np.bincount(labels, minlength=n_classes) + self.alpha
        self.log_prior = np.log(prior / prior.sum())
        return self

    def predict(self, texts: list[str]) -> list[int]:
        out = []
        for text in texts:
            score = self.log_prior.copy()
            for w, n in Counter(words(text)).items():
                if w in self.index:  # words never seen in training say nothing
                    score += n * self.log_word[:, self.index[w]]
            out.append(int(score.argmax()))
        return out


# -----------------------------------------------------------------------------------------------
# The model


def final_hidden(gpt: GPT, idx: torch.Tensor) -> torch.Tensor:
    """(B, T, n_embd): the final RMSNorm output, i.e. what the language-model head reads."""
    T = idx.shape[1]
    cos, sin = gpt.rope_cos[:T], gpt.rope_sin[:T]
    x = gpt.tok_emb(idx)
    for block in gpt.blocks:
        x, _ = block(x, cos, sin)
    return gpt.norm(x)


class GPTClassifier(nn.Module):
    def __init__(self, gpt: GPT, n_classes: int, pool: str = "last"):
        super().__init__()
        self.gpt, self.pool = gpt, pool
        self.head = nn.Linear(gpt.config.n_embd, n_classes)
        nn.init.normal_(self.head.weight, std=0.02)
        nn.init.zeros_(self.head.bias)

    def forward(self, idx: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        h = final_hidden(self.gpt, idx)
        if self.pool == "last":
            pooled = h[torch.arange(h.shape[0], device=h.device), lengths - 1]
        else:
            mask = (torch.arange(h.shape[1], device=h.device)[None] < lengths[:, None]).to(h.dtype)
            pooled = (h * mask[..., None]).sum(1) / lengths[:, None].to(h.dtype)
        return self.head(pooled)


def encode_texts(sp, texts: list[str], max_len: int) -> list[list[int]]:
    return [([sp.bos_id()] + ids)[:max_len] for ids in sp.encode(texts)]


def batches(encoded: list[list[int]], order, batch_size: int, pad_id: int):
    for i in range(0, len(order), batch_size):
        rows = [encoded[j] for j in order[i : i + batch_size]]
        lengths = torch.tensor([len(r) for r in rows])
        x = torch.full((len(rows), int(lengths.max())), pad_id, dtype=torch.long)
        for k, r in enumerate(rows):
            x[k, : len(r)] = torch.tensor(r)
        yield x, lengths, order[i : i + batch_size]


@torch.no_grad()
def predict(
    model: GPTClassifier,
    encoded: list[list[int]],
    batch_size: int,
    pad_id: int,
    device: str | torch.device = "cpu",
) -> list[int]:
    was_training = model.training
    model.eval()
    out = []
    try:
        for x, lengths, _ in batches(encoded, list(range(len(encoded))), batch_size, pad_id):
            out += model(x.to(device), lengths.to(device)).argmax(-1).tolist()
    finally:
        model.train(was_training)
    return out


def _trainable(model: GPTClassifier, which: str) -> list[nn.Parameter]:
    for p in model.gpt.parameters():
        p.requires_grad_(which == "all")
    if which == "last":
        for p in [*model.gpt.blocks[-1].parameters(), *model.gpt.norm.parameters()]:
            p.requires_grad_(True)
    return [p for p in model.gpt.parameters() if p.requires_grad]


def write_rows(path: Path, rows: list[tuple[str, str]]) -> None:
    """Labelled rows as JSONL (what read_labelled reads back): the run keeps the data it was trained on."""
    import json

    text = "".join(json.dumps({"text": t, "label": y}, ensure_ascii=False) + "\n" for t, y in rows)
    write_text_atomic(path, text)


def write_run_data(run_dir: str | Path, train: list, test: list) -> tuple[str, str]:
    """RUN/data/train.jsonl and test.jsonl: the rows a run trains and scores on, read by every rank."""
    data = Path(run_dir) / "data"
    data.mkdir(parents=True, exist_ok=True)
    write_rows(data / "train.jsonl", train)
    write_rows(data / "test.jsonl", test)
    return str(data / "train.jsonl"), str(data / "test.jsonl")


class ClassifyTask(Task):
    """Cross-entropy of a linear head on the pooled final hidden state; test scores once per epoch."""

    kind = "classify"

    def __init__(self, c: ClassifyConfig, progress: bool = True):
        self.c, self.progress = c, progress
        self.history: list[dict] = []
        self.report: dict = {}

    def prepare(self, d: Dist) -> None:
        c = self.c
        self.d = d
        check_apart(c.run_dir, c.base)
        run_data = Path(c.run_dir) / "data"
        train = read_labelled(c.data or run_data / "train.jsonl")
        test = read_labelled(c.test_data or run_data / "test.jsonl", min_labels=1)
        labels = sorted({label for _, label in train})
        check_classes(len(labels))
        unseen = {label for _, label in test} - set(labels)
        if unseen:
            raise UserError(
                f"{len(unseen)} test label(s) never seen in training ({few(unseen)}): give each class "
                "training rows (`ptgpt classify --task FILE` splits per class)"
            )
        index = {label: i for i, label in enumerate(labels)}
        self.labels, self.train, self.test = labels, train, test
        self.train_y = [index[label] for _, label in train]
        self.test_y = [index[label] for _, label in test]
        self.checkpoint = find_checkpoint(c.base)
        self.meta = ckpt.read_checkpoint_config(self.checkpoint)
        self.tokenizer_path = find_tokenizer(self.checkpoint, self.meta)
        sp = load_chat_tokenizer(self.tokenizer_path).sp
        context = ModelConfig.from_dict(self.meta["model"]).max_seq_len
        self.max_len = min(c.max_len, context)
        self.train_x = encode_texts(sp, [t for t, _ in train], self.max_len)
        self.test_x = encode_texts(sp, [t for t, _ in test], self.max_len)
        self.pad = sp.eos_id()
        global_batch = c.batch_size * d.world_size
        self.steps_per_epoch = math.ceil(len(self.train_x) / global_batch)
        if c.max_steps is None and c.time_budget is None:
            c.max_steps = c.epochs * self.steps_per_epoch
        self.sampler = EpochSampler(len(self.train_x), global_batch, c.seed)
        self.epoch_loss = [0.0, 0]

    def build_model(self) -> torch.nn.Module:
        model = GPTClassifier(ckpt.load_model(self.checkpoint), len(self.labels), self.c.pool)
        _trainable(model, self.c.train_layers)
        return model

    def checkpoint_model(self, module: torch.nn.Module) -> GPT:
        return module.gpt

    def extra_tensors(self, module: torch.nn.Module) -> dict[str, torch.Tensor]:
        return {f"head.{k}": v for k, v in module.head.state_dict().items()}

    def load_extra_tensors(self, module: torch.nn.Module, tensors: dict[str, torch.Tensor]) -> None:
        module.head.load_state_dict({k[5:]: v for k, v in tensors.items() if k.startswith("head.")})

    def optimizer_groups(self, module: torch.nn.Module) -> list[dict]:
        return [
            {
                "params": list(module.head.parameters()),
                "weight_decay": self.c.weight_decay,
                "lr_scale": self.c.head_lr / self.c.lr,
            }
        ]

    def start_data(self, run: Run, states: dict[str, dict] | None) -> None:
        if states is not None:
            self.sampler.load_state_dict(states["sampler"])

    def next_batch(self, run: Run, micro: int):
        rows = self.sampler.next_batch()[run.d.rank :: run.d.world_size]
        x, lengths, _ = next(batches(self.train_x, rows, len(rows), self.pad))
        y = torch.tensor([self.train_y[r] for r in rows])
        return x.to(run.device), lengths.to(run.device), y.to(run.device)

    def loss(self, model: torch.nn.Module, batch) -> Loss:
        x, lengths, y = batch
        loss = F.cross_entropy(model(x, lengths).float(), y)
        self.epoch_loss[0] += loss.item() * len(y)
        self.epoch_loss[1] += len(y)
        return Loss(loss, loss.detach(), len(y))

    def epoch(self) -> int:
        return self.sampler.epoch

    def data_state(self) -> dict[str, dict]:
        return {"sampler": self.sampler.state_dict()} if self.d.is_main else {}

    def due_for_evaluation(self, run: Run) -> bool:
        every = self.c.eval_every or self.steps_per_epoch
        return run.step % every == 0 or run.finishing

    def evaluate(self, run: Run) -> dict:
        with run.precision.autocast():
            pred = predict(run.raw_model, self.test_x, self.c.batch_size, self.pad, run.device)
        figures = scores(self.test_y, pred, len(self.labels))
        train_loss = self.epoch_loss[0] / max(self.epoch_loss[1], 1)
        self.epoch_loss = [0.0, 0]
        self.history.append(
            {"epoch": run.step / self.steps_per_epoch, "step": run.step, "train_loss": train_loss, **figures}
        )
        if self.progress:
            run.write(
                f"step {run.step} (epoch {run.step / self.steps_per_epoch:.1f}): train loss {train_loss:.4f}, "
                f"test accuracy {figures['accuracy']:.3f}, macro-F1 {figures['macro_f1']:.3f} "
                f"({run.train_seconds:.0f} s)"
            )
        return {"test_accuracy": figures["accuracy"], "test_macro_f1": figures["macro_f1"]}

    def checkpoint_extra(self) -> dict:
        return {
            "tokenizer_path": self.meta["tokenizer_path"],
            "base_checkpoint": str(self.checkpoint.resolve()),
            "classify": asdict(self.c),
        }

    def run_config(self, run: Run) -> dict:
        return {
            "base_checkpoint": str(self.checkpoint.resolve()),
            "labels": self.labels,
            "n_train": len(self.train),
            "n_test": len(self.test),
        }

    def finish(self, run: Run) -> None:
        c, n = self.c, len(self.labels)
        report: dict = {
            "labels": self.labels,
            "n_train": len(self.train),
            "n_test": len(self.test),
            "config": asdict(c),
        }
        report["majority"] = scores(self.test_y, majority_baseline(self.train_y, len(self.test)), n)
        nb = NaiveBayes().fit([t for t, _ in self.train], self.train_y, n)
        report["bag_of_words"] = scores(self.test_y, nb.predict([t for t, _ in self.test]), n)
        last = self.history[-1] if self.history else {}
        report["model"] = {k: v for k, v in last.items() if k in ("accuracy", "macro_f1")}
        report["epochs"] = self.history
        folder = save_classifier(run.raw_model, Path(c.run_dir), self.labels, self.meta, c)
        copy_tokenizer_into_run(folder, self.tokenizer_path)  # RUN/model/ stands on its own
        write_json_atomic(Path(c.run_dir) / "report.json", report)
        self.report = report

    def summary(self, run: Run) -> dict:
        return {"report": self.report}


def train_classifier(
    c: ClassifyConfig,
    train: list[tuple[str, str]] | None = None,
    test: list[tuple[str, str]] | None = None,
    progress: bool = True,
    on_log=None,
) -> dict:
    """Fine-tune the base on (text, label) pairs (kept in RUN/data/), score it and the baselines on test."""
    if train is not None and test is not None:
        check_apart(c.run_dir, c.base)  # before RUN/data/ is written
        c.data, c.test_data = write_run_data(c.run_dir, train, test)
    task = ClassifyTask(c, progress=progress)
    run_task(task, on_log=on_log)
    return task.report or json.loads((Path(c.run_dir) / "report.json").read_text())


def config_from_args(argv: list[str] | None = None) -> ClassifyConfig:
    parser = config_parser(
        ClassifyConfig, "python -m training.classify", "Train a classification head.", ("base", "run_dir")
    )
    return ClassifyConfig(**vars(parser.parse_args(argv)))


def main(argv: list[str] | None = None) -> int:
    return task_main(lambda a: ClassifyTask(config_from_args(a)), argv)


def save_classifier(
    model: GPTClassifier, run_dir: Path, labels: list[str], base_meta: dict, c: ClassifyConfig
) -> Path:
    """RUN/model/: the decoder as a ptgpt checkpoint plus head.safetensors; labels in config.json."""
    folder = run_dir / "model"
    extra = {
        "tokenizer_path": base_meta["tokenizer_path"],
        "classifier": {"labels": labels, "pool": c.pool, "max_len": c.max_len},
    }
    ckpt.save_model(model.gpt, folder, extra=extra)
    head = {k: v.detach().contiguous() for k, v in model.head.state_dict().items()}
    save_file(head, str(folder / HEAD_FILE), metadata={"format": "pt"})
    return folder


def load_classifier(folder: str | Path) -> tuple[GPTClassifier, list[str], dict]:
    folder = Path(folder)
    meta = ckpt.read_checkpoint_config(folder)
    spec = meta["classifier"]
    model = GPTClassifier(ckpt.load_model(folder), len(spec["labels"]), spec["pool"])
    model.head.load_state_dict(load_file(str(folder / HEAD_FILE)))
    return model.eval(), spec["labels"], meta


if __name__ == "__main__":
    sys.exit(main())
