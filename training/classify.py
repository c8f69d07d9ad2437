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

import math
import re
import time
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

from common.errors import UserError
from common.files import write_json_atomic
from training import checkpoint as ckpt
from training.model import GPT

HEAD_FILE = "head.safetensors"


@dataclass
class ClassifyConfig:
    base: str  # pre-trained run or checkpoint folder
    run_dir: str
    pool: str = "last"  # "last" real token or "mean" over real tokens
    train_layers: str = "all"  # "head", "last" (last block + final norm + head) or "all"
    max_len: int = 128  # tokens per text (BOS included)
    epochs: int = 3
    batch_size: int = 16
    lr: float = 5e-4
    head_lr: float = 3e-3
    weight_decay: float = 0.01
    seed: int = 0
    threads: int | None = None

    def __post_init__(self) -> None:
        if self.pool not in ("last", "mean"):
            raise ValueError(f"pool must be 'last' or 'mean', got {self.pool!r}")
        if self.train_layers not in ("head", "last", "all"):
            raise ValueError(f"train_layers must be 'head', 'last' or 'all', got {self.train_layers!r}")


# -----------------------------------------------------------------------------------------------
# Data


def read_labelled(path: str | Path) -> list[tuple[str, str]]:
    """(text, label) rows of a CSV with `text,label` columns or a JSONL of {"text", "label"} objects."""
    import csv
    import json

    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: no such file")
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
    if len({label for _, label in rows}) < 2:
        raise UserError(f"{path}: needs at least two different labels")
    return rows


def split_rows(rows: list[tuple[str, str]], test_frac: float, seed: int) -> tuple[list, list]:
    """A seeded random train/test split (for a user's file; the author task splits by book)."""
    order = np.random.default_rng(seed).permutation(len(rows))
    n_test = max(1, round(test_frac * len(rows)))
    return [rows[i] for i in order[n_test:]], [rows[i] for i in order[:n_test]]


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
def predict(model: GPTClassifier, encoded: list[list[int]], batch_size: int, pad_id: int) -> list[int]:
    model.eval()
    out = []
    for x, lengths, _ in batches(encoded, list(range(len(encoded))), batch_size, pad_id):
        out += model(x, lengths).argmax(-1).tolist()
    return out


def _trainable(model: GPTClassifier, which: str) -> list[nn.Parameter]:
    for p in model.gpt.parameters():
        p.requires_grad_(which == "all")
    if which == "last":
        for p in [*model.gpt.blocks[-1].parameters(), *model.gpt.norm.parameters()]:
            p.requires_grad_(True)
    return [p for p in model.gpt.parameters() if p.requires_grad]


def train_classifier(
    c: ClassifyConfig,
    train: list[tuple[str, str]],
    test: list[tuple[str, str]],
    progress: bool = True,
) -> dict:
    """Fine-tune the base on (text, label) pairs, score it and the baselines on test; write RUN/."""
    import sentencepiece as spm

    threads = torch.get_num_threads()
    if c.threads:
        torch.set_num_threads(c.threads)
    try:
        labels = sorted({label for _, label in train})
        unseen = {label for _, label in test} - set(labels)
        if unseen:
            raise ValueError(f"test labels never seen in training: {sorted(unseen)}")
        index = {label: i for i, label in enumerate(labels)}
        train_y = [index[label] for _, label in train]
        test_y = [index[label] for _, label in test]
        report: dict = {"labels": labels, "n_train": len(train), "n_test": len(test), "config": asdict(c)}
        report["majority"] = scores(test_y, majority_baseline(train_y, len(test)), len(labels))
        nb = NaiveBayes().fit([t for t, _ in train], train_y, len(labels))
        report["bag_of_words"] = scores(test_y, nb.predict([t for t, _ in test]), len(labels))

        checkpoint = (
            ckpt.newest_valid_checkpoint(c.base) if (Path(c.base) / "checkpoints").is_dir() else Path(c.base)
        )
        meta = ckpt.read_checkpoint_config(checkpoint)
        sp = spm.SentencePieceProcessor(model_file=meta["tokenizer_path"])
        torch.manual_seed(c.seed)
        model = GPTClassifier(ckpt.load_model(checkpoint), len(labels), c.pool)
        max_len = min(c.max_len, model.gpt.config.max_seq_len)
        train_x = encode_texts(sp, [t for t, _ in train], max_len)
        test_x = encode_texts(sp, [t for t, _ in test], max_len)
        pad = sp.eos_id()
        groups = [{"params": list(model.head.parameters()), "lr": c.head_lr}]
        body = _trainable(model, c.train_layers)
        if body:
            groups.append({"params": body, "lr": c.lr})
        optimizer = torch.optim.AdamW(groups, weight_decay=c.weight_decay)
        rng = np.random.default_rng(c.seed)
        steps = c.epochs * math.ceil(len(train_x) / c.batch_size)
        step, started, history = 0, time.perf_counter(), []
        for epoch in range(c.epochs):
            model.train()
            total = 0.0
            for x, lengths, rows in batches(
                train_x, rng.permutation(len(train_x)).tolist(), c.batch_size, pad
            ):
                scale = 0.5 * (1 + math.cos(math.pi * step / steps))  # cosine to zero
                for g, base_lr in zip(optimizer.param_groups, [c.head_lr, c.lr], strict=False):
                    g["lr"] = base_lr * scale
                loss = F.cross_entropy(model(x, lengths), torch.tensor([train_y[r] for r in rows]))
                loss.backward()
                torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
                total += loss.item() * len(rows)
                step += 1
            pred = predict(model, test_x, c.batch_size, pad)
            history.append(
                {"epoch": epoch + 1, "train_loss": total / len(train_x), **scores(test_y, pred, len(labels))}
            )
            if progress:
                h = history[-1]
                print(
                    f"epoch {epoch + 1}/{c.epochs}: train loss {h['train_loss']:.4f}, test accuracy "
                    f"{h['accuracy']:.3f}, macro-F1 {h['macro_f1']:.3f} ({time.perf_counter() - started:.0f} s)",
                    flush=True,
                )
        report["model"] = {k: v for k, v in history[-1].items() if k in ("accuracy", "macro_f1")}
        report["epochs"] = history
        save_classifier(model, Path(c.run_dir), labels, meta, c)
        write_json_atomic(Path(c.run_dir) / "report.json", report)
        return report
    finally:
        torch.set_num_threads(threads)


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
