"""Instruction fine-tuning (SFT): a pre-trained checkpoint learns to answer in the chat template.

Data is JSONL, one conversation a line: {"prompt": ..., "response": ...} or {"messages": [{"role",
"content"}, ...]}. Each conversation is encoded by training/chat.py; the loss is taken only on the
assistant's tokens (their text and closing <|end|>). Batches are padded to their longest row, with
the padding and every non-assistant position set to IGNORE_INDEX (attention is causal, so padding at
the right never reaches a real token).

Runs look like pre-training runs (docs/formats.md section 3): RUN/checkpoints/step_N/ written by
training/checkpoint.py (so chat, serve-model, eval and export-hf read them), RUN/metrics.jsonl
through training/metrics.py, and a rerun resumes from the newest valid checkpoint: weights, AdamW
state, RNG and the position in the shuffled data, so it continues exactly.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch

from common.errors import UserError
from common.files import write_json_atomic
from training import checkpoint as ckpt
from training.chat import (
    ChatTokenizer,
    SamplingConfig,
    add_chat_tokens,
    chat_metadata,
    check_messages,
    encode_chat,
    load_chat_tokenizer,
    stream_tokens,
)
from training.config import SFTConfig
from training.metrics import MetricsLogger, ProgressBar, plot_run
from training.model import GPT, IGNORE_INDEX
from training.optim import build_optimizer
from training.precision import pick_device

RUN_CONFIG_FILE = "config.json"


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
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, start=1):
            if not line.strip():
                continue
            where = f"{path}, line {number}"
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


class EpochSampler:
    """Shuffled batches of example indices, epoch after epoch. Its state is two ints, so resume is exact."""

    def __init__(self, n: int, batch_size: int, seed: int):
        self.n, self.batch_size, self.seed = n, batch_size, seed
        self.epoch, self.position = 0, 0

    def _order(self) -> np.ndarray:
        return np.random.default_rng([self.seed, self.epoch]).permutation(self.n)

    def next_batch(self) -> list[int]:
        batch = []
        while len(batch) < self.batch_size:
            if self.position >= self.n:
                self.epoch, self.position = self.epoch + 1, 0
            take = min(self.batch_size - len(batch), self.n - self.position)
            batch += self._order()[self.position : self.position + take].tolist()
            self.position += take
        return batch

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "position": self.position, "n": self.n}

    def load_state_dict(self, state: dict) -> None:
        if state["n"] != self.n:
            raise UserError(
                f"the checkpoint was trained on {state['n']} conversations, the data now has {self.n}: "
                "resume with the same --data, or use a new --run"
            )
        self.epoch, self.position = state["epoch"], state["position"]


def lr_at(step: int, c: SFTConfig) -> float:
    """Linear warmup, then cosine down to lr * min_lr_ratio at max_steps."""
    if step < c.warmup_steps:
        return c.lr * (step + 1) / c.warmup_steps
    progress = min(1.0, (step - c.warmup_steps) / max(1, c.max_steps - c.warmup_steps))
    return c.lr * (c.min_lr_ratio + (1 - c.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress)))


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


def resolve_checkpoint(path: str | Path) -> Path:
    """A run folder's best checkpoint, or the folder itself when it is a checkpoint."""
    path = Path(path)
    if (path / ckpt.CONFIG_FILE).is_file() and (path / ckpt.WEIGHTS_FILE).is_file():
        return path
    return ckpt.newest_valid_checkpoint(path)


def load_base(base: str | Path, device: torch.device) -> tuple[GPT, ChatTokenizer, dict]:
    """The base model with chat-token rows added (kept as they are if it was tuned before)."""
    checkpoint = resolve_checkpoint(base)
    meta = ckpt.read_checkpoint_config(checkpoint)
    if not meta.get("tokenizer_path"):
        raise UserError(f"{checkpoint}/config.json records no tokenizer_path: not a run of `ptgpt train`?")
    tok = load_chat_tokenizer(meta["tokenizer_path"])
    model = ckpt.load_model(checkpoint)
    if "chat" not in meta:
        model = add_chat_tokens(model, tok)
    return model.to(device), tok, {**meta, "checkpoint": str(checkpoint.resolve())}


def sft(c: SFTConfig) -> dict:
    """Fine-tune (or continue) c.run_dir up to c.max_steps; returns a summary dict."""
    device = pick_device(c.device)
    threads = torch.get_num_threads()
    if c.threads:
        torch.set_num_threads(c.threads)
    try:
        return _sft(c, device)
    finally:
        torch.set_num_threads(threads)


def _sft(c: SFTConfig, device: torch.device) -> dict:
    run_dir = Path(c.run_dir)
    resume_dir = ckpt.latest_valid_training_checkpoint(run_dir)
    base_model, tok, base_meta = load_base(c.base, device)
    max_len = min(c.max_len or base_model.config.max_seq_len, base_model.config.max_seq_len)
    train_examples, dropped = encode_examples(tok, read_conversations(c.data), max_len)
    if not train_examples:
        raise DataError(f"{c.data}: no conversation has an assistant token within {max_len} tokens")
    val_examples = encode_examples(tok, read_conversations(c.val_data), max_len)[0] if c.val_data else []
    pad_id = tok.eos

    sampler = EpochSampler(len(train_examples), c.batch_size, c.seed)
    optimizer_state = None
    start_step = 0
    if resume_dir is not None:
        model = ckpt.load_model(resume_dir, device=device)
        trainer, opt_tensors, trainer_tensors = ckpt.load_training_checkpoint(resume_dir, model, device)
        optimizer_state = ckpt.optimizer_state_from_tensors(opt_tensors, trainer["optimizer"])
        sampler.load_state_dict(trainer["sampler"])
        torch.set_rng_state(trainer_tensors["rng.torch_cpu"])
        start_step = int(trainer["step"])
    else:
        model = base_model
    del base_model
    model.train()
    optimizer = build_optimizer(model, "adamw", c.lr, c.weight_decay)  # pre-training's AdamW, fused
    if optimizer_state is not None:
        optimizer.load_state_dict(optimizer_state)

    extra = {
        "tokenizer_path": base_meta["tokenizer_path"],
        "tokenizer_sha256": base_meta.get("tokenizer_sha256"),
        "corpus": base_meta.get("corpus"),
        "chat": chat_metadata(tok),
        "base_checkpoint": base_meta["checkpoint"],
        "sft": asdict(c),
    }
    run_dir.mkdir(parents=True, exist_ok=True)
    write_json_atomic(
        run_dir / RUN_CONFIG_FILE,
        {
            "sft": asdict(c),
            "model": model.config.to_dict(),
            "base_checkpoint": base_meta["checkpoint"],
            "tokenizer_path": base_meta["tokenizer_path"],
            "chat": chat_metadata(tok),
            "train_examples": len(train_examples),
            "dropped_examples": dropped,
            "max_len": max_len,
        },
    )
    logger = MetricsLogger(run_dir, resume_step=start_step, tensorboard=c.tensorboard)
    bar = ProgressBar(start_step, c.max_steps, enabled=c.progress)
    where = (
        f"resuming from {resume_dir}"
        if resume_dir is not None
        else f"starting from {base_meta['checkpoint']}"
    )
    bar.write(
        f"sft {where}: {len(train_examples)} conversations ({dropped} dropped: no reply within {max_len} "
        f"tokens), batch {c.batch_size}, device {device}"
    )
    summary: dict = {"run_dir": str(run_dir), "start_step": start_step, "losses": []}
    step, last_checkpoint, val_loss = start_step, resume_dir, None
    t_last, tokens_since = time.perf_counter(), 0
    try:
        while step < c.max_steps:
            lr = lr_at(step, c)
            for group in optimizer.param_groups:
                group["lr"] = lr
            x, y = collate([train_examples[i] for i in sampler.next_batch()], pad_id)
            x, y = x.to(device), y.to(device)
            out = model(x, y)
            out.total_loss().backward()
            grad_norm = (
                torch.nn.utils.clip_grad_norm_(model.parameters(), c.grad_clip) if c.grad_clip > 0 else None
            )
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            step += 1
            tokens_since += int((y != IGNORE_INDEX).sum())
            last = step == c.max_steps
            evaluating = bool(val_examples) and c.eval_every > 0 and (step % c.eval_every == 0 or last)
            if step % c.log_every == 0 or evaluating or last:
                elapsed = time.perf_counter() - t_last
                record = {
                    "step": step,
                    "loss": out.loss.item(),
                    "lr": lr,
                    "grad_norm": grad_norm.item() if grad_norm is not None else None,
                    "assistant_tokens_per_s": tokens_since / elapsed,
                    "epoch": sampler.epoch,
                }
                if evaluating:
                    val_loss = assistant_loss(model, val_examples, pad_id, c.batch_size, device)
                    record["val_loss"] = val_loss
                    bar.write(f"step {step}: validation loss on assistant tokens {val_loss:.4f}")
                logger.log(record)
                bar.update(step, record["loss"], record["assistant_tokens_per_s"])
                summary["losses"].append((step, record["loss"]))
                t_last, tokens_since = time.perf_counter(), 0
            if step % c.checkpoint_every == 0 or last:
                state = {"sampler": sampler.state_dict(), "tokens_seen": 0}
                tensors = {"rng.torch_cpu": torch.get_rng_state()}
                last_checkpoint = ckpt.save_training_checkpoint(
                    run_dir, step, model, optimizer, state, tensors, extra=extra, keep_last=c.keep_last
                )
    finally:
        logger.close()
        bar.close()
    if c.plot and summary["losses"]:
        plot_run(run_dir)
    summary.update(
        step=step,
        final_loss=summary["losses"][-1][1] if summary["losses"] else None,
        val_loss=val_loss,
        checkpoint=str(last_checkpoint) if last_checkpoint is not None else None,
    )
    return summary


# -----------------------------------------------------------------------------------------------
# Scoring replies


def greedy_reply(model: GPT, tok: ChatTokenizer, prompt: str, max_new_tokens: int = 48) -> str:
    """The model's greedy answer to one user message in the chat template."""
    ids, _ = encode_chat(tok, [{"role": "user", "content": prompt}], add_generation_prompt=True)
    ids = ids[-(model.config.max_seq_len - 1) :]
    sampling = SamplingConfig(max_new_tokens=max_new_tokens, temperature=0.0, top_k=None)
    return tok.sp.decode(list(stream_tokens(model, ids, {tok.end, tok.eos}, sampling)))
