"""Supervised sets made offline from a built corpus (docs/formats.md section 2): nothing is downloaded.

Two sets, both read from the corpus's Parquet shards (title, author and text of every paragraph):

* **Instructions** in Portuguese, for `ptgpt sft`: questions whose answers the corpus itself knows.

      author        "Quem escreveu «O Mandarim»?"              -> "Eça de Queirós."
      title         "De que livro é este trecho? «...»"        -> "De «O Mandarim», de Eça de Queirós."
      continuation  "Continue o texto: «first half»"           -> the real second half of the paragraph

  Publication years are not in the corpus metadata, so there are no year questions. Items are held
  out for scoring (`score_reply`): author questions by *book* (the tuned model never saw that
  book's question), the others by paragraph.

* **Author attribution**, for `ptgpt classify`: paragraphs of the most frequent authors, with the
  train and test paragraphs of each author taken from *different books*, so a classifier cannot
  win by recognising a book's names and places.

Author fields name one writer many ways ("Eça Queirós", "José Maria Eça de Queirós", "Camilo
Castello Branco"); `author_key` groups them by a spelling skeleton of the surname. Two writers who
share a surname would be merged: good enough for a demo set, and the groups are printed.
"""

from __future__ import annotations

import json
import random
import re
import unicodedata
from collections import Counter, defaultdict
from dataclasses import dataclass
from pathlib import Path

import pyarrow.parquet as pq

from common.corpus_format import MANIFEST_FILE
from common.errors import UserError
from common.files import write_text_atomic

SPLITS = ("train", "validation", "test")


@dataclass(frozen=True)
class Paragraph:
    book_id: int
    index: int
    title: str
    author: str
    text: str


def read_paragraphs(corpus_dir: str | Path, splits: tuple[str, ...] = SPLITS) -> list[Paragraph]:
    """Every paragraph of the given splits of a finished corpus, in file order."""
    corpus_dir = Path(corpus_dir)
    manifest_path = corpus_dir / "manifest.json"
    if not manifest_path.is_file():
        raise UserError(f"{corpus_dir} is not a finished corpus (no manifest.json): run `ptgpt corpus build`")
    manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
    out = []
    for split in splits:
        for shard in manifest["splits"].get(split, {}).get("shards", []):
            table = pq.read_table(
                corpus_dir / shard["file"], columns=["book_id", "paragraph_index", "title", "author", "text"]
            )
            d = table.to_pydict()
            for b, i, t, a, x in zip(
                d["book_id"], d["paragraph_index"], d["title"], d["author"], d["text"], strict=True
            ):
                out.append(Paragraph(b, i, t or "", a or "", x))
    return out


def _fold(text: str) -> str:
    """Lower case without accents, for comparing names and answers."""
    text = unicodedata.normalize("NFKD", text.casefold())
    return "".join(c for c in text if not unicodedata.combining(c))


def author_key(author: str) -> str:
    """A spelling skeleton of the surname: 'Camilo Castello Branco' and 'Camilo Castelo Branco' agree."""
    words = re.findall(r"\w+", _fold(author))
    if not words:
        return ""
    key = words[-1].replace("th", "t").replace("y", "i").replace("ph", "f")
    return re.sub(r"(\w)\1", r"\1", key)


def author_groups(paragraphs: list[Paragraph]) -> dict[str, str]:
    """author_key -> the name to show (the variant with the most paragraphs)."""
    counts: dict[str, Counter] = defaultdict(Counter)
    for p in paragraphs:
        if author_key(p.author):
            counts[author_key(p.author)][p.author] += 1
    return {key: c.most_common(1)[0][0] for key, c in counts.items()}


# -----------------------------------------------------------------------------------------------
# Instructions


@dataclass
class InstructionConfig:
    per_book_excerpts: int = 12  # "De que livro é este trecho?" items per book
    per_book_continuations: int = 24  # "Continue o texto" items per book
    min_chars: int = 120  # shortest paragraph used for excerpts and continuations
    excerpt_chars: int = 160  # the excerpt is cut to about this many characters (at a word)
    continuation_chars: int = 320  # a continuation item uses about this much of its paragraph
    heldout_frac: float = 0.1  # fraction of books (author items) and paragraphs (the rest) held out
    seed: int = 0


AUTHOR_QUESTIONS = ("Quem escreveu «{title}»?", "Quem é o autor de «{title}»?", "«{title}» é obra de quem?")


def _cut(text: str, n: int) -> str:
    """The first ~n characters of text, ended at a word boundary."""
    if len(text) <= n:
        return text
    head = text[:n]
    return head[: head.rfind(" ")] if " " in head else head


def make_instructions(
    paragraphs: list[Paragraph], config: InstructionConfig
) -> tuple[list[dict], list[dict]]:
    """(train items, held-out items). An item is {"prompt", "response", "kind", "answer"}."""
    rng = random.Random(config.seed)
    names = author_groups(paragraphs)
    books: dict[int, list[Paragraph]] = defaultdict(list)
    for p in paragraphs:
        books[p.book_id].append(p)
    book_ids = sorted(books)
    heldout_books = set(rng.sample(book_ids, max(1, round(config.heldout_frac * len(book_ids)))))
    train, heldout = [], []
    for book_id in book_ids:
        rows = books[book_id]
        title, key = rows[0].title.strip(), author_key(rows[0].author)
        author = names.get(key, "")
        if title and author:
            for question in AUTHOR_QUESTIONS:
                item = {
                    "prompt": question.format(title=title),
                    "response": f"{author}.",
                    "kind": "author",
                    "answer": key,
                }
                (heldout if book_id in heldout_books else train).append(item)
        long_rows = [p for p in rows if len(p.text) >= config.min_chars and "\n" not in p.text]
        if title:
            for p in rng.sample(long_rows, min(config.per_book_excerpts, len(long_rows))):
                by = f", de {author}" if author else ""
                item = {
                    "prompt": f"De que livro é este trecho? «{_cut(p.text, config.excerpt_chars)}»",
                    "response": f"De «{title}»{by}.",
                    "kind": "title",
                    "answer": _fold(title),
                    "author": key,
                }
                (heldout if rng.random() < config.heldout_frac else train).append(item)
        for p in rng.sample(long_rows, min(config.per_book_continuations, len(long_rows))):
            words = _cut(p.text, config.continuation_chars).split(" ")
            half = len(words) // 2
            item = {
                "prompt": f"Continue o texto: «{' '.join(words[:half])}»",
                "response": " ".join(words[half:]),
                "kind": "continuation",
                "answer": _first_word(" ".join(words[half:])),
            }
            (heldout if rng.random() < config.heldout_frac else train).append(item)
    rng.shuffle(train)
    return train, heldout


def _first_word(text: str) -> str:
    words = re.findall(r"\w+", _fold(text))
    return words[0] if words else ""


def score_reply(item: dict, reply: str) -> bool:
    """Is `reply` right? author: names the author's surname; title: contains the title;
    continuation: starts with the real next word."""
    if item["kind"] == "author":
        return names_author(item["answer"], reply)
    if item["kind"] == "title":
        return item["answer"] in _fold(reply)
    return _first_word(reply) == item["answer"]


def names_author(key: str, reply: str) -> bool:
    """Does `reply` name the author whose author_key is `key`? (For title items: the excerpt's author,
    a softer score than the exact title: style told apart, not the book.)"""
    return bool(key) and key in {author_key(w) for w in re.findall(r"\w+", reply)}


def write_jsonl(path: str | Path, rows: list[dict]) -> Path:
    write_text_atomic(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    return Path(path)


def check_instructions_out(out_dir: str | Path, force: bool = False) -> None:
    """Refuse an --out that holds an instruction set already or is a corpus folder: `ptgpt instructions`
    must not replace a user's files (or mix jsonl files into a corpus) without --force."""
    out_dir = Path(out_dir)
    if force or not out_dir.exists():
        return
    if not out_dir.is_dir():
        raise UserError(f"{out_dir} is a file, not a folder")
    if (out_dir / MANIFEST_FILE).exists():
        raise UserError(
            f"{out_dir} is a corpus folder (it has {MANIFEST_FILE}): choose another --out, or --force"
        )
    there = [name for name in ("train.jsonl", "heldout.jsonl") if (out_dir / name).exists()]
    if there:
        raise UserError(f"{out_dir} already has {' and '.join(there)}: choose another --out, or --force")


def write_instructions(
    corpus_dir: str | Path, out_dir: str | Path, config: InstructionConfig = InstructionConfig()
) -> dict:
    """OUT/train.jsonl and OUT/heldout.jsonl from the corpus; returns counts per kind."""
    train, heldout = make_instructions(read_paragraphs(corpus_dir), config)
    if not train:
        raise UserError(f"{corpus_dir}: no instruction could be made (no titles, authors or long paragraphs)")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    write_jsonl(out_dir / "train.jsonl", train)
    write_jsonl(out_dir / "heldout.jsonl", heldout)
    return {
        "train": dict(Counter(i["kind"] for i in train)),
        "heldout": dict(Counter(i["kind"] for i in heldout)),
    }


# -----------------------------------------------------------------------------------------------
# Author attribution


@dataclass
class AuthorTaskConfig:
    n_authors: int = 5  # the most frequent authors with at least two books
    min_chars: int = 200  # shorter paragraphs say too little about style
    max_per_author: int = 300  # paragraphs per author and split, so no author dominates
    test_frac: float = 0.34  # about this fraction of each author's books go to test (at least one)
    seed: int = 0


def author_attribution(
    paragraphs: list[Paragraph], config: AuthorTaskConfig
) -> tuple[list[tuple[str, str]], list[tuple[str, str]], dict]:
    """(train, test) lists of (text, author name), and a description (authors, their books per split)."""
    rng = random.Random(config.seed)
    names = author_groups(paragraphs)
    by_author: dict[str, dict[int, list[str]]] = defaultdict(lambda: defaultdict(list))
    for p in paragraphs:
        if author_key(p.author) and len(p.text) >= config.min_chars:
            by_author[author_key(p.author)][p.book_id].append(p.text)
    eligible = [k for k, books in by_author.items() if len(books) >= 2]
    eligible.sort(key=lambda k: (-sum(len(t) for t in by_author[k].values()), k))
    chosen = eligible[: config.n_authors]
    if len(chosen) < 2:
        raise UserError(
            "author attribution needs at least two authors with two or more books each in the corpus; "
            f"this one has {len(chosen)}"
        )
    train, test, described = [], [], {}
    for key in chosen:
        books = sorted(by_author[key])
        rng.shuffle(books)
        n_test = max(1, round(config.test_frac * len(books)))
        test_books, train_books = books[:n_test], books[n_test:]
        for split, ids in ((train, train_books), (test, test_books)):
            texts = [t for b in ids for t in by_author[key][b]]
            rng.shuffle(texts)
            split += [(t, names[key]) for t in texts[: config.max_per_author]]
        described[names[key]] = {"train_books": sorted(train_books), "test_books": sorted(test_books)}
    rng.shuffle(train)
    rng.shuffle(test)
    return train, test, described
