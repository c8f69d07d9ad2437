"""The README.md of an export folder: a Hugging Face model card (YAML front matter + Markdown).

It says what the model is, what it was trained on and for how long, how it scored (with the chance
level and trivial baseline beside each figure, so the numbers mean something), what it cannot do,
and how to run it in transformers, llama.cpp and Ollama. Everything comes from the checkpoint's own
records: its config.json and trainer.json, the run's metrics.jsonl, and an `eval --json` file if given.
"""

from __future__ import annotations

import json
from pathlib import Path

from training.checkpoint import read_checkpoint_config

LICENSE = "mit"  # the code's; the training text is public-domain Project Gutenberg books
DATASET = "Project Gutenberg (Portuguese books, public domain)"


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def last_logged_eval(run_dir: Path) -> dict:
    """The newest metrics.jsonl record that carries evaluation figures ({} if none)."""
    path = run_dir / "metrics.jsonl"
    found: dict = {}
    if path.is_file():
        for line in path.read_text().splitlines():
            try:
                record = json.loads(line)
            except ValueError:
                continue
            if any(k in record for k in ("val_bpb", "lastword_acc", "choice_acc")):
                found = record
    return found


def count_parameters(checkpoint: Path) -> int | None:
    """Parameters in the checkpoint's model.safetensors, read from its header (no tensor is loaded)."""
    path = checkpoint / "model.safetensors"
    if not path.is_file():
        return None
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        return sum(_numel(f.get_slice(k).get_shape()) for k in f.keys())  # noqa: SIM118 (safe_open is no dict)


def _numel(shape: list[int]) -> int:
    n = 1
    for d in shape:
        n *= d
    return n


def _f(x, digits: int = 3) -> str:
    return "-" if x is None else f"{x:.{digits}f}"


def _baselines(values: dict, labels: dict[str, str]) -> str:
    """Every baseline the evaluation recorded, in the order of labels: "0.297 (word unigram), ..."."""
    return ", ".join(f"{_f(values[k])} ({label})" for k, label in labels.items() if values.get(k) is not None)


def eval_table(result: dict, logged: dict) -> list[str]:
    """Markdown rows: the full suite (eval --json) if given, else the trainer's last quick evaluation."""
    rows = ["| figure | model | chance | baselines | items |", "| --- | --- | --- | --- | --- |"]
    if result:
        for split, bpb in result.get("bpb", {}).items():
            base = result.get("bpb_baselines", {}).get(split, {})
            named = _baselines(base, {"unigram": "token unigram", "ngram": "Kneser-Ney n-gram"})
            rows.append(
                f"| bits per byte, {split} (lower is better) | {_f(bpb)} | {_f(base.get('uniform'))} "
                f"(uniform) | {named} | |"
            )
        if "lastword_acc" in result:
            b = result.get("lastword_baselines", {})
            named = _baselines(
                b, {"most_frequent_context_word": "most frequent context word", "ngram": "n-gram, greedy"}
            )
            rows.append(
                f"| last word (exact, greedy) | {_f(result['lastword_acc'])} | {_f(b.get('chance'))} | "
                f"{named} | {result.get('lastword_n', '')} |"
            )
        if "choice_acc" in result:
            b = result.get("choice_baselines", {})
            named = _baselines(
                b, {"unigram": "word unigram", "overlap": "context overlap", "ngram": "n-gram"}
            )
            rows.append(
                f"| next sentence of 4 (PMI per byte) | {_f(result['choice_acc'])} | "
                f"{_f(b.get('chance'))} | {named} | {result.get('choice_n', '')} |"
            )
    elif logged:
        if "val_bpb" in logged:
            rows.append(f"| bits per byte, validation (lower is better) | {_f(logged['val_bpb'])} | | | |")
        if "lastword_acc" in logged:
            rows.append(f"| last word (quick, 64 items) | {_f(logged['lastword_acc'])} | 0.000 | | 64 |")
        if "choice_acc" in logged:
            rows.append(
                f"| next sentence of 4 (quick, 64 items) | {_f(logged['choice_acc'])} | 0.250 | | 64 |"
            )
    return rows if len(rows) > 2 else []


def model_card(
    checkpoint: Path, name: str, eval_result: dict | None = None, gguf_file: str | None = None
) -> str:
    """README.md for an export of checkpoint (gguf_file: the GGUF export's file name, for its card)."""
    meta = read_checkpoint_config(checkpoint)
    m = meta.get("model", {})
    trainer = _read_json(checkpoint / "trainer.json")
    run_dir = checkpoint.parent.parent if checkpoint.parent.name == "checkpoints" else checkpoint
    corpus = Path(meta["corpus"]) if meta.get("corpus") else None
    manifest = _read_json(corpus / "manifest.json") if corpus else {}
    train_split = manifest.get("splits", {}).get("train", {})
    is_chat = "chat" in meta
    arch = (
        ("Qwen3-MoE" if m.get("n_experts") else "Qwen3")
        if m.get("qk_norm")
        else ("Mixtral" if m.get("n_experts") else "Llama")
    )
    tags = ["ptgpt", "portuguese", "text-generation", "gguf" if gguf_file else "safetensors"]
    if is_chat:
        tags.append("conversational")
    front = [
        "---",
        "language:",
        "- pt",
        f"license: {LICENSE}",
        "datasets:",
        f"- {json.dumps(DATASET)}",
        "library_name: " + ("gguf" if gguf_file else "transformers"),
        "pipeline_tag: text-generation",
        "tags:",
        *[f"- {t}" for t in tags],
        "---",
    ]
    n_params = count_parameters(checkpoint)
    what = (
        f"A small GPT-style decoder ({arch} layout: {m.get('n_layer')} layers, width {m.get('n_embd')}, "
        f"{m.get('n_head')} query / {m.get('n_kv_head')} key-value heads"
        + (f", {m.get('n_experts')} experts, top-{m.get('top_k')}" if m.get("n_experts") else "")
        + f", context {m.get('max_seq_len')} tokens, vocabulary {m.get('vocab_size')})"
        + (f" of {n_params:,} parameters" if isinstance(n_params, int) else "")
        + ", trained from scratch with ptgpt on Portuguese books."
        + (" Fine-tuned for chat (SFT) with ptgpt's chat template." if is_chat else "")
    )
    data = [f"- Training text: {DATASET}, split by whole book into train / validation / test."]
    if train_split:
        data.append(
            f"- Train split: {train_split.get('rows', '?'):,} paragraphs from "
            f"{len(train_split.get('books', [])):,} books."
            if isinstance(train_split.get("rows"), int)
            else "- Train split: see the corpus manifest."
        )
    if trainer.get("tokens_seen") is not None:
        data.append(
            f"- Tokens seen in training: {int(trainer['tokens_seen']):,} (step {trainer.get('step')})."
        )
    table = eval_table(eval_result or {}, last_logged_eval(run_dir))
    evaluation = (
        [
            "Held-out test books of the same corpus (`ptgpt eval`); chance and a trivial baseline beside each figure.",
            "",
            *table,
        ]
        if table
        else ["No evaluation was recorded for this checkpoint (run `ptgpt eval --run RUN --json FILE`)."]
    )
    gguf = gguf_file or "model.gguf"
    prompt = "Era uma vez"
    usage = [
        "### transformers",
        "",
        "```python",
        "from transformers import pipeline",
        f'generate = pipeline("text-generation", model="{name}")',
        f'print(generate("{prompt}", max_new_tokens=40, do_sample=False)[0]["generated_text"])',
        "```",
        "",
        "### llama.cpp",
        "",
        "```bash",
        f"ptgpt export-gguf --run RUN --out {gguf} --type q8_0",
        f'llama-cli -m {gguf} -p "{prompt}" -n 40 --temp 0' + (" -cnv" if is_chat else ""),
        "```",
        "",
        "### Ollama",
        "",
        "```bash",
        f"ollama create {name.lower()} -f {Path(gguf).stem}.Modelfile   # written beside the .gguf",
        f"ollama run {name.lower()}",
        "```",
    ]
    limitations = [
        "- A small model trained on old public-domain books: 19th- and early-20th-century Portuguese, "
        "literary in register; it knows nothing later and writes no modern prose.",
        "- It invents: nothing it writes is a fact to rely on. It was not trained to be safe or helpful"
        + (
            " beyond a short supervised fine-tune."
            if is_chat
            else "; it is a base model that continues text."
        ),
        "- The evaluation is this project's own (built from the corpus's held-out books); it is not CALAME-PT "
        "or another published benchmark. `ptgpt eval --lm-eval-tasks DIR` writes the same items for "
        "lm-evaluation-harness, so other models can be scored on them.",
    ]
    body = [
        f"# {name}",
        "",
        what,
        "",
        "## Training data",
        "",
        *data,
        "",
        "## Evaluation",
        "",
        *evaluation,
        "",
        "## Limitations",
        "",
        *limitations,
        "",
        "## How to run it",
        "",
        *usage,
        "",
    ]
    return "\n".join(front + [""] + body)
