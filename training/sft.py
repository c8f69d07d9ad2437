"""Instruction fine-tuning (SFT): a pre-trained checkpoint learns to answer in the chat template.

Data is JSONL, one conversation a line: {"prompt": ..., "response": ...} or {"messages": [{"role",
"content"}, ...]}. Each conversation is encoded by training/chat.py; the loss is taken only on the
assistant's tokens (their text and closing <|end|>). Batches are padded to their longest row, with
the padding and every non-assistant position set to IGNORE_INDEX (attention is causal, so padding at
the right never reaches a real token).

Training is a Task of the one loop (training/loop.py), so SFT has what pre-training has: precision,
the NaN guard, a checkpoint on SIGTERM, gradient accumulation, torchrun/DDP (each process takes its
share of every global batch), a time budget, metrics and exact resume from the newest valid
checkpoint (weights, AdamW state, RNG and the position in the shuffled data). Runs look like
pre-training runs (docs/formats.md section 3), so chat, serve-model, eval and export-hf read them.

    python -m training.sft --base RUN --data train.jsonl --run-dir SFT_RUN     (also under torchrun)
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path

import torch

from common.errors import UserError
from training.chat import (
    ChatTokenizer,
    add_chat_tokens,
    chat_metadata,
    check_messages,
    encode_chat,
)
from training.config import SFTConfig
from training.data import EpochSampler
from training.launch import config_parser, task_main
from training.loop import Dist, Loss, Run, Task, run_task
from training.model import GPT, IGNORE_INDEX
from training.runs import TOKENIZER_FILE as RUN_TOKENIZER_FILE
from training.runs import check_apart, copy_tokenizer_into_run, load_run


class DataError(UserError, ValueError):
    """A bad row or file of conversations: the CLI prints it as one line."""


# -----------------------------------------------------------------------------------------------
# Data


def read_conversations(path: str | Path) -> list[list[dict]]:
    """Conversations of a JSONL file; DataError names the line and the fields of the first bad row."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: no such file")
    out = []
    with open(path, "rb") as f:
        for number, raw in enumerate(f, start=1):
            where = f"{path}, line {number}"
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                raise DataError(f"{where}: not UTF-8 (byte {e.start + 1}); save the file as UTF-8") from None
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise DataError(f"{where}: not JSON ({e.msg})") from None
            out.append(conversation_from_row(row, where))
    if not out:
        raise DataError(f"{path} holds no conversation")
    return out


def conversation_from_row(row: object, where: str) -> list[dict]:
    fix = 'a row is {"prompt": str, "response": str} or {"messages": [{"role": ..., "content": ...}, ...]}'
    if isinstance(row, dict) and "messages" in row:
        try:
            messages = check_messages(row["messages"], "messages")
        except ValueError as e:
            raise DataError(f"{where}: {e}") from None
        if not any(m["role"] == "assistant" for m in messages):
            raise DataError(f"{where}: messages has no assistant turn, so nothing to learn")
        return messages
    if isinstance(row, dict) and ("prompt" in row or "response" in row):
        bad = [k for k in ("prompt", "response") if not isinstance(row.get(k), str)]
        if bad:
            raise DataError(f"{where}: field(s) {', '.join(bad)} missing or not a string; {fix}")
        return [{"role": "user", "content": row["prompt"]}, {"role": "assistant", "content": row["response"]}]
    keys = sorted(row) if isinstance(row, dict) else type(row).__name__
    raise DataError(f"{where}: has {keys}; {fix}")


def encode_examples(
    tok: ChatTokenizer, conversations: list[list[dict]], max_len: int
) -> tuple[list[tuple[list[int], list[int]]], int]:
    """(inputs, targets) per conversation, cut to max_len; targets are IGNORE_INDEX off the assistant.

    Returns the examples and how many conversations were dropped because no assistant token was left
    after the cut.
    """
    examples, dropped = [], 0
    for messages in conversations:
        ids, assistant = encode_chat(tok, messages)
        ids, assistant = ids[: max_len + 1], assistant[: max_len + 1]
        targets = [t if a else IGNORE_INDEX for t, a in zip(ids[1:], assistant[1:], strict=True)]
        if all(t == IGNORE_INDEX for t in targets):
            dropped += 1
            continue
        examples.append((ids[:-1], targets))
    return examples, dropped


def collate(examples: list[tuple[list[int], list[int]]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Pad to the longest example: inputs with pad_id, targets with IGNORE_INDEX."""
    T = max(len(x) for x, _ in examples)
    x = torch.full((len(examples), T), pad_id, dtype=torch.long)
    y = torch.full((len(examples), T), IGNORE_INDEX, dtype=torch.long)
    for i, (inp, tgt) in enumerate(examples):
        x[i, : len(inp)] = torch.tensor(inp)
        y[i, : len(tgt)] = torch.tensor(tgt)
    return x, y


@torch.no_grad()
def assistant_loss(model: GPT, examples: list, pad_id: int, batch_size: int, device: torch.device) -> float:
    """Mean cross-entropy over the assistant tokens of `examples` (nats/token)."""
    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    try:
        for i in range(0, len(examples), batch_size):
            x, y = collate(examples[i : i + batch_size], pad_id)
            n = int((y != IGNORE_INDEX).sum())
            total += model(x.to(device), y.to(device)).loss.item() * n
            count += n
    finally:
        model.train(was_training)
    return total / max(count, 1)


# -----------------------------------------------------------------------------------------------
# Training


def load_base(base: str | Path) -> tuple[GPT, ChatTokenizer, dict]:
    """The base model (on the CPU) with chat-token rows added (kept as they are if it was tuned before)."""
    loaded = load_run(base, device="cpu")
    model = loaded.model if loaded.is_chat else add_chat_tokens(loaded.model, loaded.tokenizer)
    return model, loaded.tokenizer, {**loaded.meta, "checkpoint": str(loaded.checkpoint.resolve())}


class SFTTask(Task):
    """Loss on the assistant tokens of conversations; validation loss on held-out conversations."""

    kind = "sft"

    def __init__(self, c: SFTConfig):
        self.c = c

    def prepare(self, d: Dist) -> None:
        c = self.c
        self.d = d
        check_apart(c.run_dir, c.base)
        self.base_model, self.tok, self.base_meta = load_base(c.base)
        context = self.base_model.config.max_seq_len
        self.max_len = min(c.max_len or context, context)
        self.train_examples, self.dropped = encode_examples(
            self.tok, read_conversations(c.data), self.max_len
        )
        if not self.train_examples:
            raise DataError(f"{c.data}: no conversation has an assistant token within {self.max_len} tokens")
        self.val_examples = (
            encode_examples(self.tok, read_conversations(c.val_data), self.max_len)[0] if c.val_data else []
        )
        self.pad_id = self.tok.eos
        self.sampler = EpochSampler(len(self.train_examples), c.batch_size * d.world_size, c.seed)

    def build_model(self) -> torch.nn.Module:
        model, self.base_model = self.base_model, None
        return model

    def start_data(self, run: Run, states: dict[str, dict] | None) -> None:
        if states is not None:
            self.sampler.load_state_dict(states["sampler"])
        run.flops_per_token = run.gpt.flops_per_token(self.max_len)
        if run.d.is_main:
            copy_tokenizer_into_run(self.c.run_dir, self.tok.path)
            where = (
                f"resuming at step {run.step}"
                if run.step
                else f"starting from {self.base_meta['checkpoint']}"
            )
            run.write(
                f"sft {where}: {len(self.train_examples)} conversations ({self.dropped} dropped: no reply "
                f"within {self.max_len} tokens), batch {self.c.batch_size} x {run.d.world_size} proc, "
                f"device {run.device}, {run.precision.kind}"
            )

    def next_batch(self, run: Run, micro: int):
        rows = self.sampler.next_batch()[run.d.rank :: run.d.world_size]
        x, y = collate([self.train_examples[i] for i in rows], self.pad_id)
        return x.to(run.device), y.to(run.device)

    def loss(self, model: torch.nn.Module, batch) -> Loss:
        x, y = batch
        out = model(x, y)
        return Loss(out.total_loss(), out.loss.detach(), int((y != IGNORE_INDEX).sum()))

    def epoch(self) -> int:
        return self.sampler.epoch

    def data_state(self) -> dict[str, dict]:
        return {"sampler": self.sampler.state_dict()} if self.d.is_main else {}

    def due_for_evaluation(self, run: Run) -> bool:
        return bool(self.val_examples) and super().due_for_evaluation(run)

    def evaluate(self, run: Run) -> dict:
        val_loss = assistant_loss(run.gpt, self.val_examples, self.pad_id, self.c.batch_size, run.device)
        run.val = {"loss": val_loss}
        run.write(f"step {run.step}: validation loss on assistant tokens {val_loss:.4f}")
        return {"val_loss": val_loss}

    def checkpoint_extra(self) -> dict:
        meta = self.base_meta
        return {
            "tokenizer_path": meta["tokenizer_path"],
            "tokenizer_sha256": meta.get("tokenizer_sha256"),
            "corpus": meta.get("corpus"),
            "chat": chat_metadata(self.tok),
            "base_checkpoint": meta["checkpoint"],
            "sft": asdict(self.c),
        }

    def run_config(self, run: Run) -> dict:
        return {
            "base_checkpoint": self.base_meta["checkpoint"],
            "tokenizer_path": self.base_meta["tokenizer_path"],
            "tokenizer_copy": RUN_TOKENIZER_FILE,
            "chat": chat_metadata(self.tok),
            "train_examples": len(self.train_examples),
            "dropped_examples": self.dropped,
            "max_len": self.max_len,
        }


def sft(c: SFTConfig, on_log: Callable[[dict], None] | None = None) -> dict:
    """Fine-tune (or continue) c.run_dir; returns run_task's summary dict."""
    return run_task(SFTTask(c), on_log=on_log)


def config_from_args(argv: list[str] | None = None) -> SFTConfig:
    parser = config_parser(
        SFTConfig,
        "python -m training.sft",
        "Instruction-tune a pre-trained run.",
        ("base", "data", "run_dir"),
    )
    return SFTConfig(**vars(parser.parse_args(argv)))


def main(argv: list[str] | None = None) -> int:
    return task_main(lambda a: SFTTask(config_from_args(a)), argv)


if __name__ == "__main__":
    sys.exit(main())
