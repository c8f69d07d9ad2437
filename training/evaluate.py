"""Evaluation: validation loss, perplexity and bits per byte, and samples from fixed Portuguese prompts.

Bits per byte is the figure to compare across tokenizers: the loss per token depends on how much text
a token covers, the loss per byte of UTF-8 text does not. With the summed cross-entropy in nats over
every target token of a split and the split's UTF-8 bytes (training/data.py spreads each paragraph's
bytes over its tokens, boundary tokens count 0 bytes):

    bpb = total nats / (ln 2 * total bytes)
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable
from pathlib import Path

import torch
import torch.distributed as dist
import torch.nn.functional as F

from training.data import IGNORE_INDEX, iter_eval_windows
from training.precision import choose_precision, cuda_capability

SAMPLE_PROMPTS = [
    "Era uma vez",
    "O rio corria devagar",
    "Capítulo I",
    "Disse-lhe a mãe que",
]


def autocast_context(device: torch.device, precision: str = "auto") -> contextlib.AbstractContextManager:
    """The autocast a run of `precision` trains with, so it is evaluated in the numbers it trained in (a
    `--precision fp32` run is not scored in bf16). "auto": bf16 on Ampere or newer, fp16 on older GPUs (a
    T4 would only emulate bf16, many times slower), nothing (fp32) on CPU and MPS."""
    kind = choose_precision(precision, device.type, cuda_capability(device))
    if kind == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16 if kind == "bf16" else torch.float16)


@torch.no_grad()
def evaluate(
    model: torch.nn.Module,
    corpus_dir: str | Path,
    split: str = "validation",
    block_size: int = 256,
    batch_size: int = 8,
    max_batches: int | None = None,
    device: str | torch.device = "cpu",
    precision: str = "auto",
) -> dict:
    """Loss (nats/token), perplexity and bits per byte of `model` on a split (its first max_batches
    batches per rank, or all of it), under the autocast of the run's `precision`. Under torch.distributed every rank reads its share of row groups
    and the sums are all-reduced once at the end, so every rank returns the same figures."""
    device = torch.device(device)
    was_training = model.training
    model.eval()
    sums = torch.zeros(3, dtype=torch.float64, device=device)  # nats, target tokens, bytes
    rank, world = (dist.get_rank(), dist.get_world_size()) if dist.is_initialized() else (0, 1)
    try:
        for i, (x, y, n_bytes) in enumerate(
            iter_eval_windows(corpus_dir, split, block_size, batch_size, rank, world)
        ):
            if max_batches is not None and i >= max_batches:
                break
            x, y = x.to(device), y.to(device)
            with autocast_context(device, precision):
                logits = model(x).logits
            nats = F.cross_entropy(
                logits.float().view(-1, logits.size(-1)),
                y.view(-1),
                ignore_index=IGNORE_INDEX,
                reduction="sum",
            )
            sums += torch.stack([nats.double(), (y != IGNORE_INDEX).sum().double(), sums.new_tensor(n_bytes)])
    finally:
        model.train(was_training)
    if world > 1:
        dist.all_reduce(sums)
    nats, tokens, n_bytes = sums.tolist()
    if tokens == 0:
        raise ValueError(f"split {split!r} of {corpus_dir} has no target tokens to evaluate")
    loss = nats / tokens
    return {
        "loss": loss,
        "perplexity": math.exp(min(loss, 700.0)),
        "bpb": nats / (math.log(2) * n_bytes) if n_bytes else float("nan"),
        "tokens": int(tokens),
        "bytes": int(n_bytes),
    }


def load_tokenizer(path: str | Path):
    """A SentencePieceProcessor for the corpus tokenizer."""
    import sentencepiece as spm

    return spm.SentencePieceProcessor(model_file=str(path))


@torch.no_grad()
def generate_samples(
    model: torch.nn.Module,
    tokenizer,
    prompts: list[str] = SAMPLE_PROMPTS,
    max_new_tokens: int = 48,
    temperature: float = 0.8,
    top_k: int | None = 50,
    top_p: float | None = None,
    seed: int = 1234,
    bos_id: int | None = None,
    device: str | torch.device = "cpu",
    notify: Callable[[str], None] | None = None,
) -> list[str]:
    """Continue each prompt (BOS + its tokens); returns prompt + continuation as text.

    A private, seeded generator: the same checkpoint gives the same samples, and the global RNG that
    training relies on is untouched. max_new_tokens may exceed the context (GPT.generate slides its
    window). A prompt longer than the context keeps its last max_seq_len - 1 tokens, and a continuation
    that ends at the end-of-text token is shorter than asked: `notify` gets a sentence for each.
    """
    device = torch.device(device)
    bos = tokenizer.bos_id() if bos_id is None else bos_id
    eos = tokenizer.eos_id()
    generator = torch.Generator(device=device).manual_seed(seed)
    max_len = model.config.max_seq_len
    texts = []
    for n, prompt in enumerate(prompts, 1):
        ids = ([bos] if bos >= 0 else []) + tokenizer.encode(prompt)
        if len(ids) > max_len - 1 and notify is not None:
            notify(
                f"prompt {n} has {len(ids):,} tokens and the model's context is {max_len}: "
                f"kept its last {max_len - 1} tokens"
            )
        ids = ids[-(max_len - 1) :]
        x = torch.tensor([ids], dtype=torch.long, device=device)
        # fp32 (no autocast): a few hundred tokens cost nothing, and the KV cache keeps the weights' dtype
        out = model.generate(
            x, max_new_tokens, temperature=temperature, top_k=top_k, top_p=top_p, eos=eos, generator=generator
        )
        new = out[0, len(ids) :].tolist()
        if eos in new and notify is not None:
            notify(
                f"prompt {n}: the model ended the text after {new.index(eos)} of {max_new_tokens} new tokens"
            )
        # decode prompt and continuation together, so the space between them survives
        # (ids past the tokenizer's vocabulary exist when the model's vocab_size was padded up)
        n_pieces = tokenizer.get_piece_size()
        texts.append(tokenizer.decode([t for t in out[0].tolist() if t not in (bos, eos) and t < n_pieces]))
    return texts
