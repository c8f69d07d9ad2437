"""The eval suite's items as lm-evaluation-harness tasks, so any Hugging Face causal LM is scored on them.

`ptgpt eval --lm-eval-tasks DIR` writes, from the same corpus test split and seed `ptgpt eval` uses:

    DIR/ptgpt_lastword.jsonl + .yaml   generate_until: the passage without its last word
    DIR/ptgpt_choice.jsonl + .yaml     multiple_choice: context and 4 candidate next sentences
    DIR/ptgpt.yaml                     a group of both
    DIR/ptgpt_utils.py                 the scoring, as `ptgpt eval` scores

and `lm_eval --model hf --model_args pretrained=EXPORT --include_path DIR --tasks ptgpt` runs offline.

The scoring is ptgpt's, not lm_eval's built-in metrics, so an export scores what `ptgpt eval` gives:
- choice: each candidate is the continuation " " + sentence (target_delimiter ""), so lm_eval asks
  for the very tokens ptgpt scores. Listing `acc_mutual_info` makes lm_eval also ask for each candidate
  after an empty context, which its hf model turns into BOS (else EOS) + candidate: ptgpt's neutral
  start. From both, `acc` is ptgpt's headline `choice_acc` (the highest PMI per UTF-8 byte),
  `acc_per_byte` its `choice_acc_per_byte` (the highest log-likelihood per byte; lm_eval's acc_norm
  divides by characters without the space, which picks differently) and `acc_mutual_info` lm_eval's own
  (PMI not divided by length);
- lastword: greedy generation; the first word of the generated text (letters and inner hyphens, after
  NFC) must equal the target word, exactly as training/eval_tasks.py compares.
Neither adds BOS (lm_eval's hf model does not by default, and `ptgpt eval` scores without it).
Two known differences: lm_eval generates up to MAX_GEN_TOKS tokens where ptgpt stops at the target's
token count + 2 (a first word longer than that can differ), and both cut over-long contexts on the
left but at slightly different lengths; with contexts inside the model's window, results are equal.
"""

from __future__ import annotations

import json
from pathlib import Path

from export.output import check_folder_target, write_marker

MAX_GEN_TOKENS = 16

UTILS = '''"""Scoring of the ptgpt tasks (written by `ptgpt eval --lm-eval-tasks`; see ptgpt export/lm_eval_tasks.py)."""

import re
import unicodedata

WORD = re.compile(WORD_PATTERN)


def first_word(text):
    m = WORD.match(unicodedata.normalize("NFC", text.lstrip()))
    return m.group(0) if m else ""


def normalize_word(word):
    m = WORD.search(unicodedata.normalize("NFC", word.strip()))
    return m.group(0) if m else ""


def process_lastword(doc, results):
    return {"acc": float(first_word(results[0]) == normalize_word(doc["target"]))}


def process_choice(doc, results):
    # results: the candidates after the context, then (acc_mutual_info) after an empty one
    k = len(doc["choices"])
    lls = [ll for ll, _ in results]
    conditional, unconditional = lls[:k], lls[k:]
    n_bytes = [len(choice.encode()) for choice in doc["choices"]]
    pmi = [c - u for c, u in zip(conditional, unconditional)]

    def right(scores):
        return float(max(range(k), key=scores.__getitem__) == doc["label"])

    return {
        "acc": right([p / n for p, n in zip(pmi, n_bytes)]),
        "acc_per_byte": right([c / n for c, n in zip(conditional, n_bytes)]),
        "acc_mutual_info": right(pmi),
    }
'''


def _yaml(lines: list[str]) -> str:
    return "\n".join(lines) + "\n"


def write_lm_eval_tasks(out_dir: str | Path, corpus_dir: str | Path, config=None) -> list[str]:
    """Write the tasks for corpus_dir's items (training/eval_tasks.py, config: its SuiteConfig);
    returns the task names. out_dir must be new, empty or an earlier tasks folder (then replaced)."""
    from training.eval_tasks import SuiteConfig, load_items

    config = config or SuiteConfig()
    out = Path(out_dir)
    check_folder_target(out, overwrite=True, option="--lm-eval-tasks")
    lastword, choice = load_items(corpus_dir, config)
    if not lastword and not choice:
        from common.errors import UserError

        raise UserError(
            f"{corpus_dir} gives no lastword or choice items (no prose in its {config.split} split)"
        )
    out.mkdir(parents=True, exist_ok=True)
    origin = {"corpus": str(Path(corpus_dir).resolve()), "split": config.split, "seed": config.seed}
    meta = ["metadata:", "  version: 1.0", *[f"  {k}: {json.dumps(v)}" for k, v in origin.items()]]
    names = []
    if lastword:
        data = out / "ptgpt_lastword.jsonl"
        with open(data, "w", encoding="utf-8") as f:
            for item in lastword:
                row = {"book_id": item.book_id, "context": item.context, "target": item.target}
                f.write(json.dumps(row, ensure_ascii=False) + "\n")
        (out / "ptgpt_lastword.yaml").write_text(
            _yaml(
                [
                    "task: ptgpt_lastword",
                    "dataset_path: json",
                    "dataset_kwargs:",
                    "  data_files:",
                    f"    test: {json.dumps(str(data.resolve()))}",
                    "test_split: test",
                    "output_type: generate_until",
                    "doc_to_text: context",
                    "doc_to_target: target",
                    "generation_kwargs:",
                    "  until: []",
                    "  do_sample: false",
                    f"  max_gen_toks: {MAX_GEN_TOKENS}",
                    "process_results: !function ptgpt_utils.process_lastword",
                    "metric_list:",
                    "  - metric: acc",
                    "    aggregation: mean",
                    "    higher_is_better: true",
                    *meta,
                ]
            )
        )
        names.append("ptgpt_lastword")
    if choice:
        data = out / "ptgpt_choice.jsonl"
        with open(data, "w", encoding="utf-8") as f:
            for item in choice:
                row = {
                    "book_id": item.book_id,
                    "context": item.context,
                    "candidates": list(item.candidates),
                    "choices": [" " + c for c in item.candidates],
                    "label": item.label,
                }
                f.write(json.dumps(row, ensure_ascii=False) + "\n")
        (out / "ptgpt_choice.yaml").write_text(
            _yaml(
                [
                    "task: ptgpt_choice",
                    "dataset_path: json",
                    "dataset_kwargs:",
                    "  data_files:",
                    f"    test: {json.dumps(str(data.resolve()))}",
                    "test_split: test",
                    "output_type: multiple_choice",
                    "doc_to_text: context",
                    "doc_to_choice: choices",
                    "doc_to_target: label",
                    'target_delimiter: ""',
                    "process_results: !function ptgpt_utils.process_choice",
                    "metric_list:",
                    *[
                        line
                        for metric in ("acc", "acc_per_byte", "acc_mutual_info")
                        for line in (
                            f"  - metric: {metric}",
                            "    aggregation: mean",
                            "    higher_is_better: true",
                        )
                    ],
                    *meta,
                ]
            )
        )
        names.append("ptgpt_choice")
    (out / "ptgpt.yaml").write_text(_yaml(["group: ptgpt", "task:", *[f"  - {n}" for n in names]]))
    from training.eval_tasks import WORD

    (out / "ptgpt_utils.py").write_text(UTILS.replace("WORD_PATTERN", repr(WORD.pattern)))
    write_marker(out, "lm-eval-tasks", corpus_dir)
    return names


def write_tasks_for_eval(
    out_dir: Path, corpus: Path | None, checkpoint: Path | None, quick: bool
) -> list[str]:
    """What `ptgpt eval --lm-eval-tasks DIR` does: the corpus is --corpus, else the checkpoint's."""
    from common.errors import UserError
    from training.checkpoint import read_checkpoint_config
    from training.data import CorpusError
    from training.eval_tasks import QUICK, SuiteConfig

    if corpus is None and checkpoint is not None:
        recorded = read_checkpoint_config(checkpoint).get("corpus")
        corpus = Path(recorded) if recorded else None
    if corpus is None:
        raise UserError("--lm-eval-tasks needs the corpus: pass --corpus (or --run / --checkpoint)")
    try:
        return write_lm_eval_tasks(out_dir, corpus, QUICK if quick else SuiteConfig())
    except CorpusError as e:
        raise UserError(str(e)) from None
