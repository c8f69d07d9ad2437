"""Held-out instruction items answered by a base and a tuned model: what `ptgpt sft --data builtin` and
`ptgpt demo` report after tuning.

The items and the rules that judge a reply belong to the corpus (corpus/instructions.py: `score_reply`,
`names_author`); training never imports corpus, so the caller hands those two functions in.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

from common.files import write_json_atomic
from training.chat import ChatTokenizer, Reply, SamplingConfig, encode_chat, load_chat_session
from training.engine import continue_ids
from training.model import GPT

REPORT_FILE = "heldout_scores.json"

ScoreReply = Callable[[dict, str], bool]  # (item, reply) -> is it right
NamesAuthor = Callable[[str, str], bool]  # (author key, reply) -> does it name that author


def greedy_reply(model: GPT, tok: ChatTokenizer, prompt: str, max_new_tokens: int = 48) -> str:
    """The model's greedy answer to one user message in the chat template (a base model too, once
    add_chat_tokens gave it the rows)."""
    ids, _ = encode_chat(tok, [{"role": "user", "content": prompt}], add_generation_prompt=True)
    ids = ids[-(model.config.max_seq_len - 1) :]
    sampling = SamplingConfig(max_new_tokens=max_new_tokens, temperature=0.0, top_k=None)
    return tok.sp.decode(continue_ids(model, ids, sampling, (tok.end, tok.eos)))


def read_items(path: str | Path) -> list[dict]:
    return [json.loads(line) for line in Path(path).read_text(encoding="utf-8").splitlines() if line.strip()]


def pick_items(items: list[dict], limit: int) -> list[dict]:
    """Up to `limit` items spread evenly over the file, so every kind is represented (deterministic)."""
    if len(items) <= limit:
        return items
    step = len(items) / limit
    return [items[int(i * step)] for i in range(limit)]


def score_heldout(
    model: GPT,
    tok: ChatTokenizer,
    items: list[dict],
    score_reply: ScoreReply,
    names_author: NamesAuthor,
    max_new_tokens: int = 32,
) -> dict:
    """Greedy replies to items, judged by score_reply: accuracy overall and per kind."""
    right: dict[str, list[int]] = {}
    excerpt_author: list[int] = []  # title items whose reply names the right author
    for item in items:
        reply = greedy_reply(model, tok, item["prompt"], max_new_tokens)
        right.setdefault(item["kind"], []).append(int(score_reply(item, reply)))
        if item["kind"] == "title" and item.get("author"):
            excerpt_author.append(int(names_author(item["author"], reply)))
    per_kind = {k: {"n": len(v), "accuracy": sum(v) / len(v)} for k, v in sorted(right.items())}
    n = sum(len(v) for v in right.values())
    report = {"n": n, "accuracy": sum(sum(v) for v in right.values()) / max(n, 1), "per_kind": per_kind}
    if excerpt_author:
        report["title_items_author_named"] = sum(excerpt_author) / len(excerpt_author)
    return report


def heldout_report(
    base: str | Path,
    run_dir: str | Path,
    heldout: str | Path,
    limit: int,
    score_reply: ScoreReply,
    names_author: NamesAuthor,
) -> dict:
    """Accuracy of the base and the tuned model on up to `limit` held-out items; RUN/heldout_scores.json."""
    from training.chat import add_chat_tokens
    from training.runs import load_run

    items = pick_items(read_items(heldout), limit)
    base_run = load_run(base, "cpu")
    base_model = base_run.model if base_run.is_chat else add_chat_tokens(base_run.model, base_run.tokenizer)
    tuned = load_chat_session(run_dir)
    report = {
        "items": len(items),
        "base": score_heldout(base_model, base_run.tokenizer, items, score_reply, names_author),
        "tuned": score_heldout(tuned.model, tuned.tok, items, score_reply, names_author),
    }
    write_json_atomic(Path(run_dir) / REPORT_FILE, report)
    return report


def format_report(report: dict) -> str:
    lines = [f"held-out instructions ({report['items']} items, greedy replies):"]
    for name in ("base", "tuned"):
        r = report[name]
        kinds = ", ".join(f"{k} {v['accuracy']:.1%} of {v['n']}" for k, v in r["per_kind"].items())
        if "title_items_author_named" in r:
            kinds += f"; title items naming the right author {r['title_items_author_named']:.1%}"
        lines.append(f"  {name:5s} {r['accuracy']:.1%}  ({kinds})")
    return "\n".join(lines)


def demo_exchange(run_dir: str | Path, heldout: str | Path) -> tuple[str, Reply]:
    """One sampled reply of the tuned model to a held-out question (an author question if there is one)."""
    items = read_items(heldout)
    question = next((i["prompt"] for i in items if i["kind"] == "author"), items[0]["prompt"])
    session = load_chat_session(run_dir)
    sampling = SamplingConfig(64, 0.7, top_k=40, seed=0)
    return question, session.reply([{"role": "user", "content": question}], sampling)
