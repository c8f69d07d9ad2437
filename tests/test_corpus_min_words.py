"""Per-source length rule: `--extra FILE:WEIGHT:min_words=N` overrides DocFilterConfig.min_words for
that source only, and the manifest records it in the source's entry."""

from __future__ import annotations

import json
import random
import sys
from pathlib import Path

import pytest

from common.errors import UserError
from corpus.build import CorpusConfig, build_corpus
from corpus.doc_filters import DocFilterConfig
from corpus.sources import parse_extra, parse_extras
from corpus.tokenizer import TokenizerConfig

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
from gen_source import sentence  # noqa: E402

DEFAULT = DocFilterConfig().min_words
LOWER = max(1, DEFAULT // 3)


@pytest.mark.parametrize(
    "arg, spec, weight, min_words",
    [
        ("web.jsonl", "web.jsonl", 1.0, None),
        ("web.jsonl:2", "web.jsonl", 2.0, None),
        ("web.jsonl:0.5:min_words=20", "web.jsonl", 0.5, 20),
        ("web.jsonl:min_words=0", "web.jsonl", 1.0, 0),
        ("C:/data/web.jsonl:3:min_words=7", "C:/data/web.jsonl", 3.0, 7),
    ],
)
def test_spec_parsing(arg: str, spec: str, weight: float, min_words: int | None) -> None:
    src = parse_extra(arg)
    assert (src.spec, src.weight, src.min_words) == (spec, weight, min_words)


@pytest.mark.parametrize(
    "arg", ["w.jsonl:min_words=-1", "w.jsonl:min_words=1.5", "w.jsonl:max_words=3", "w.jsonl:101"]
)
def test_bad_specs_are_user_errors(arg: str) -> None:
    with pytest.raises(UserError):
        parse_extra(arg)


def test_the_override_changes_only_its_source() -> None:
    src = parse_extras([f"web.jsonl:min_words={LOWER}"])[0]
    base = DocFilterConfig()
    assert src.doc_filters(base) == DocFilterConfig(min_words=LOWER)
    assert parse_extras(["web.jsonl"])[0].doc_filters(base) is base


def _short_documents(n: int, words: int, seed: int) -> list[dict]:
    """Plain Portuguese documents of about `words` words: between the lowered and the default rule."""
    rng, docs = random.Random(seed), []
    for i in range(n):
        text = ""
        while len(text.split()) < words:
            text += sentence(rng) + " "
        docs.append({"id": f"d{i}", "text": " ".join(text.split()[:words]).rstrip(".,") + "."})
    return docs


@pytest.mark.slow
def test_min_words_reaches_the_filter_and_the_manifest(tmp_path: Path) -> None:
    from fakegutenberg.books import sample_books, write_sample_books

    raw = tmp_path / "raw"
    write_sample_books(raw, sample_books()[:4])
    docs = _short_documents(40, (LOWER + DEFAULT) // 2, seed=4)
    assert all(LOWER < len(d["text"].split()) < DEFAULT for d in docs)
    for name in ("short.jsonl", "same.jsonl"):
        (tmp_path / name).write_text("".join(json.dumps(d, ensure_ascii=False) + "\n" for d in docs))
    extras = parse_extras([f"{tmp_path / 'short.jsonl'}:1:min_words={LOWER}", str(tmp_path / "same.jsonl")])
    config = CorpusConfig(tokenizer=TokenizerConfig(vocab_size=500))
    m = build_corpus(
        raw, tmp_path / "out", config, workers=1, progress=False, allow_empty_splits=True, extras=extras
    )
    short, same = m["sources"]["short"], m["sources"]["same"]
    assert short["min_words"] == LOWER and "min_words" not in same
    assert same["dropped"] == {"too_short": len(docs)}  # the default rule, untouched
    assert "too_short" not in short["dropped"] and short["kept"] > 0
