"""Bad input to `ptgpt sft` and `ptgpt classify`, through the real command line: one `Error:` line, no
traceback, a non-zero exit, and the base run byte-identical afterwards."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from chat_factory import write_base_run, write_sample_corpus
from test_bad_inputs_training import assert_one_line_error, ptgpt, snapshot

QUIET = ["--max-steps", "2", "--batch-size", "2", "--threads", "1", "--quiet", "--plot", "false"]


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("ft")
    return write_base_run(root / "base", write_sample_corpus(root / "corpus", n_extra=0))


def _jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return path


def _sft_non_utf8(tmp: Path) -> list:
    bad = tmp / "bad.jsonl"
    bad.write_bytes(b'{"prompt": "ola", "response": "bom dia"}\n{"prompt": "caf\xe9", "response": "x"}\n')
    return ["sft", "--data", bad, "--run", tmp / "run"], "line 2: not UTF-8"


def _sft_bad_row(tmp: Path) -> list:
    return ["sft", "--data", _jsonl(tmp / "d.jsonl", [{"question": "x"}]), "--run", tmp / "run"], "line 1"


def _sft_into_base(tmp: Path, base: Path) -> list:
    data = _jsonl(tmp / "d.jsonl", [{"prompt": "Olá", "response": "Bom dia."}])
    return ["sft", "--data", data, "--run", base], "base run itself"


def _classify_into_base(tmp: Path, base: Path) -> list:
    rows = [{"text": f"texto {i}", "label": "ab"[i % 2]} for i in range(10)]
    return ["classify", "--task", _jsonl(tmp / "d.jsonl", rows), "--run", base / "cls"], "overlaps"


def _sft_nan_lr(tmp: Path) -> list:
    data = _jsonl(tmp / "d.jsonl", [{"prompt": "Olá", "response": "Bom dia."}])
    return ["sft", "--data", data, "--run", tmp / "run", "--lr", "nan"], "--lr"


def _sft_bad_budget(tmp: Path) -> list:
    data = _jsonl(tmp / "d.jsonl", [{"prompt": "Olá", "response": "Bom dia."}])
    return ["sft", "--data", data, "--run", tmp / "run", "--time-budget", "soon"], "duration"


def _classify_non_utf8(tmp: Path) -> list:
    bad = tmp / "bad.csv"
    bad.write_bytes(b"text,label\nola,a\ncaf\xe9,b\n")
    return ["classify", "--task", bad, "--run", tmp / "run"], "not UTF-8"


def _classify_huge_field(tmp: Path) -> list:
    big = tmp / "big.csv"
    big.write_text("text,label\n" + '"' + "a" * (2 << 20) + '",x\nola,y\n', encoding="utf-8")
    return ["classify", "--task", big, "--run", tmp / "run"], "limited to"


def _classify_many_classes(tmp: Path) -> list:
    rows = [{"text": f"texto {i}", "label": f"classe-{i}"} for i in range(10_000)] * 2
    return ["classify", "--task", _jsonl(tmp / "many.jsonl", rows), "--run", tmp / "run"], "10,000 classes"


def _classify_one_label(tmp: Path) -> list:
    rows = [{"text": f"texto {i}", "label": "só"} for i in range(10)]
    return ["classify", "--task", _jsonl(tmp / "one.jsonl", rows), "--run", tmp / "run"], "2 different labels"


CASES = {
    "sft: non-UTF-8 file": _sft_non_utf8,
    "sft: a row without prompt/response": _sft_bad_row,
    "sft: --run is the base run": _sft_into_base,
    "classify: --run inside the base": _classify_into_base,
    "sft: --lr nan": _sft_nan_lr,
    "sft: --time-budget soon": _sft_bad_budget,
    "classify: non-UTF-8 CSV": _classify_non_utf8,
    "classify: a CSV field over the limit": _classify_huge_field,
    "classify: 10,000 classes": _classify_many_classes,
    "classify: one label": _classify_one_label,
}


@pytest.mark.parametrize("name", list(CASES))
def test_bad_finetune_input_is_one_line_and_touches_nothing(name, base, tmp_path):
    make = CASES[name]
    args, expected = make(tmp_path, base) if "base" in make.__code__.co_varnames else make(tmp_path)
    before = snapshot(base)
    done = ptgpt(args[0], "--base", base, *args[1:], *QUIET)
    assert_one_line_error(done, expected)
    assert len(done.stderr.splitlines()[-1]) < 400  # a listing is cut short, not 14 KB
    assert snapshot(base) == before
