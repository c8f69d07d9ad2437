"""Generation: one decoding loop behind `ptgpt generate`, chat, the server, evaluation and training samples.

    SamplingConfig.validated()   the one place sampling values are checked (CLI, server, library calls)
    sample_next_token            temperature, top-k, top-p over a (B, V) batch of logits
    _loop                        the loop: prefill, KV cache, sliding window past the context
    decode                       rows sampled alike, stop ids
    decode_batch                 prompts of different lengths, each with its own sampling, in one forward
    generate, continue_ids, stream_tokens, sample_texts   what callers use
    stream_text                  text pieces as tokens arrive, safe for byte-fallback pieces

Every caller goes through `_loop`, so a fix to caching, sliding or stopping reaches all of them.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, replace

import torch

from common.errors import UserError
from training.model import GPT, KVCache

MAX_SEED = 2**63  # torch.Generator.manual_seed takes a signed 64-bit value; seeds are [0, 2**63)


class SamplingError(UserError, ValueError):
    """A sampling value out of range: the CLI prints it as one line, the server answers 400."""


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_real(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


@dataclass
class SamplingConfig:
    max_new_tokens: int = 256
    temperature: float = 0.8  # 0: greedy
    top_k: int | None = 50  # None: no top-k
    top_p: float | None = None  # None: no nucleus; 0 is an error, not "off"
    seed: int | None = None  # None: the global torch RNG

    def validated(self, context: int | None = None) -> SamplingConfig:
        """A checked copy (numbers as ints and floats), else SamplingError saying which value and why.

        With `context`, the reply must fit in it (max_new_tokens <= context): what a server promises;
        `ptgpt generate` passes none and slides its window past the context instead.
        """

        def bad(message: str) -> None:
            raise SamplingError(message)

        if not _is_int(self.max_new_tokens) or self.max_new_tokens < 0:
            bad(f"max_new_tokens must be an integer >= 0, got {self.max_new_tokens!r}")
        if context is not None and self.max_new_tokens > context:
            bad(f"max_new_tokens={self.max_new_tokens} exceeds the model's {context}-token context")
        if not _is_real(self.temperature) or self.temperature < 0:
            bad(f"temperature must be a finite number >= 0 (0: greedy), got {self.temperature!r}")
        if self.top_k is not None and (not _is_int(self.top_k) or self.top_k < 1):
            bad(f"top_k must be an integer >= 1 (or unset), got {self.top_k!r}")
        if self.top_p is not None and (not _is_real(self.top_p) or not 0 < self.top_p <= 1):
            bad(f"top_p must be in (0, 1] (or unset for no nucleus sampling), got {self.top_p!r}")
        if self.seed is not None and (not _is_int(self.seed) or not 0 <= self.seed < MAX_SEED):
            bad(f"seed must be an integer in [0, 2**63), got {self.seed!r}")
        return replace(
            self,
            max_new_tokens=int(self.max_new_tokens),
            temperature=float(self.temperature),
            top_p=None if self.top_p is None else float(self.top_p),
        )

    def generator(self, device: torch.device | str) -> torch.Generator | None:
        """A private generator for a seeded request (replies repeat, the global RNG is untouched)."""
        if self.seed is None:
            return None
        return torch.Generator(device=device).manual_seed(self.seed)


def sample_next_token(
    logits: torch.Tensor,
    temperature: float,
    top_k: int | None = None,
    top_p: float | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """logits: (B, V) -> token ids (B,)."""
    if temperature == 0:
        return logits.argmax(dim=-1)
    logits = logits.float() / temperature
    if top_k is not None and top_k < logits.shape[-1]:
        kth = logits.topk(top_k, dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p is not None and top_p < 1.0:
        sorted_logits, sorted_idx = logits.sort(dim=-1, descending=True)
        probs = sorted_logits.softmax(dim=-1)
        # drop a token when the tokens before it already reach top_p (the most likely always stays)
        drop = probs.cumsum(dim=-1) - probs >= top_p
        sorted_logits = sorted_logits.masked_fill(drop, float("-inf"))
        logits = torch.full_like(logits, float("-inf")).scatter(-1, sorted_idx, sorted_logits)
    probs = logits.softmax(dim=-1)
    return torch.multinomial(probs, num_samples=1, generator=generator).squeeze(-1)


def room_for(model: GPT, n_prompt: int, max_new_tokens: int) -> int:
    """New tokens a reply may have without sliding: max_new_tokens, cut to what the context leaves."""
    return min(max_new_tokens, model.config.max_seq_len - n_prompt)


# A chooser turns the last logits (B, V) and the step number into the next tokens (B,) and whether any
# row goes on; `_loop` does the rest.
Chooser = Callable[[torch.Tensor, int], tuple[torch.Tensor, bool]]


def _loop(
    model: GPT,
    ids: torch.Tensor,
    n_new: int,
    choose: Chooser,
    slide: bool = False,
    key_mask: torch.Tensor | None = None,
) -> Iterator[torch.Tensor]:
    """The one decoding loop: prefill, then one cached forward per new token, for up to n_new steps.

    With `slide`, generation goes past the context: when the cache is full it is recomputed over the
    last max_seq_len // 2 tokens, so each new token sees between half and all of a context, and the
    recomputation happens once every max_seq_len // 2 tokens. key_mask (B, T + n_new): False at left
    padding (never with slide). The model is in eval mode meanwhile, and back in its mode after.
    """
    context = model.config.max_seq_len
    keep = max(1, context // 2)  # tokens the cache is recomputed over when it is full
    was_training = model.training
    model.eval()
    try:
        length = min(context, ids.shape[1] + n_new)
        cache = KVCache(model.config, ids.shape[0], length, ids.device, model.tok_emb.weight.dtype)
        cache.key_mask = key_mask
        logits = model(ids, kv_cache=cache).logits[:, -1]
        recent = [ids]  # what the window is recomputed from
        for step in range(n_new):
            nxt, more = choose(logits, step)
            yield nxt
            if step == n_new - 1 or not more:
                return
            if slide and cache.pos == cache.max_len:  # full: recompute over the last `keep`
                window = torch.cat([*recent, nxt[:, None]], dim=1)[:, -keep:]
                recent = [window]
                cache.pos = 0
                logits = model(window, kv_cache=cache).logits[:, -1]
            else:
                if slide:
                    recent.append(nxt[:, None])
                logits = model(nxt[:, None], kv_cache=cache).logits[:, -1]
    finally:
        model.train(was_training)


@torch.no_grad()  # not inference_mode: callers may feed the returned ids to a training forward
def decode(
    model: GPT,
    ids: torch.Tensor,
    sampling: SamplingConfig,
    stop_ids: Sequence[int] = (),
    slide: bool = False,
    generator: torch.Generator | None = None,
) -> Iterator[torch.Tensor]:
    """Yield the next token of every row of ids (B, T), one (B,) tensor per step, all rows sampled alike.

    A row that produced a stop id goes on producing stop_ids[0]; the loop ends when every row has
    stopped or after max_new_tokens steps. Without `slide` the prompt plus the reply stay inside the
    context (max_new_tokens shrinks to fit); with it, generation slides past the context (`_loop`).
    The prompt itself must fit the context (callers crop it and say so). `generator` overrides the
    one the sampling seed would make (several calls sharing one seeded stream).
    """
    sampling = sampling.validated()
    if ids.dim() != 2 or ids.shape[1] == 0:
        raise ValueError(f"ids must be (batch, time) with time >= 1, got shape {tuple(ids.shape)}")
    context = model.config.max_seq_len
    n_prompt = ids.shape[1]
    if n_prompt > context:
        raise ValueError(f"the prompt ({n_prompt} tokens) exceeds max_seq_len={context}: crop it")
    n_new = sampling.max_new_tokens if slide else room_for(model, n_prompt, sampling.max_new_tokens)
    if n_new < 1 and sampling.max_new_tokens > 0:
        raise ValueError(f"prompt of {n_prompt} tokens leaves no room in a {context}-token context")
    if n_new < 1:
        return
    if generator is None:
        generator = sampling.generator(ids.device)
    stop = torch.tensor(list(stop_ids), dtype=ids.dtype, device=ids.device) if stop_ids else None
    done = torch.zeros(ids.shape[0], dtype=torch.bool, device=ids.device)

    def choose(logits: torch.Tensor, step: int) -> tuple[torch.Tensor, bool]:
        nxt = sample_next_token(logits, sampling.temperature, sampling.top_k, sampling.top_p, generator)
        if stop is None:
            return nxt, True
        nxt = torch.where(done, stop[0], nxt)
        done.logical_or_(torch.isin(nxt, stop))
        return nxt, not bool(done.all())

    yield from _loop(model, ids, n_new, choose, slide)


def generate(
    model: GPT,
    ids: torch.Tensor,
    sampling: SamplingConfig,
    stop_ids: Sequence[int] = (),
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """ids (B, T) and their continuations, (B, T + new), sliding past the context; finished rows padded
    with stop_ids[0]."""
    steps = list(decode(model, ids, sampling, stop_ids, slide=True, generator=generator))
    return torch.cat([ids, *(s[:, None] for s in steps)], dim=1)


def stream_tokens(
    model: GPT,
    prompt: list[int],
    stop_ids: Iterable[int],
    sampling: SamplingConfig,
    slide: bool = False,
    generator: torch.Generator | None = None,
) -> Iterator[int]:
    """The continuation of one prompt token by token; stops before a stop id (which is not yielded)."""
    stops = sorted(set(stop_ids))
    x = torch.tensor([prompt], dtype=torch.long, device=model.tok_emb.weight.device)
    for nxt in decode(model, x, sampling, stops, slide=slide, generator=generator):
        token = int(nxt[0])
        if token in stops:
            return
        yield token


def continue_ids(
    model: GPT,
    prompt: list[int],
    sampling: SamplingConfig,
    stop_ids: Iterable[int] = (),
    slide: bool = False,
    generator: torch.Generator | None = None,
) -> list[int]:
    """The new ids after prompt (a stop id ends them and is left out). Eval's greedy continuations:
    continue_ids(model, ids, SamplingConfig(n, temperature=0.0, top_k=None))."""
    return list(stream_tokens(model, prompt, stop_ids, sampling, slide, generator))


@torch.no_grad()
def decode_batch(
    model: GPT,
    prompts: Sequence[list[int]],
    samplings: Sequence[SamplingConfig],
    stop_ids: Sequence[Iterable[int]],
) -> Iterator[list[int | None]]:
    """Several prompts, each with its own sampling and stop ids, decoded together: one forward per
    step for all of them (the server's waiting requests). Yields, per step, one entry per prompt: its
    new token, or None once it has stopped (a stop id is not yielded) or reached its length.

    The prompts are left-padded to the longest and the pads hidden from attention (KVCache.key_mask).
    RoPE makes a score depend only on the distance between two positions, so shifting a row by its
    padding changes its tokens by rounding only: greedy and seeded replies are a solo call's. All rows
    share the padded length in the context: a row gets at most max_seq_len - (longest prompt) tokens,
    so batch prompts of similar length (or give a row that needs more room its own call).
    """
    samplings = [s.validated() for s in samplings]
    if not prompts or not len(prompts) == len(samplings) == len(stop_ids) or min(map(len, prompts)) == 0:
        raise ValueError("decode_batch needs one non-empty prompt, one sampling and one stop set per row")
    context, width = model.config.max_seq_len, max(map(len, prompts))
    if width >= context:
        raise ValueError(f"the longest prompt ({width} tokens) leaves no room in a {context}-token context")
    device = model.tok_emb.weight.device
    lengths = [min(s.max_new_tokens, context - width) for s in samplings]
    steps = max(lengths)
    if steps == 0:
        return
    stops = [set(s) for s in stop_ids]
    generators = [s.generator(device) for s in samplings]
    ids = torch.zeros(len(prompts), width, dtype=torch.long, device=device)
    key_mask = torch.ones(len(prompts), width + steps, dtype=torch.bool, device=device)
    for i, p in enumerate(prompts):
        ids[i, width - len(p) :] = torch.tensor(p, dtype=torch.long)
        key_mask[i, : width - len(p)] = False
    live = [n > 0 for n in lengths]
    tokens: list[int | None] = []

    def choose(logits: torch.Tensor, step: int) -> tuple[torch.Tensor, bool]:
        tokens.clear()
        for i, s in enumerate(samplings):
            token = None
            if live[i]:
                row = logits[i : i + 1]
                token = int(sample_next_token(row, s.temperature, s.top_k, s.top_p, generators[i]))
                if token in stops[i]:
                    token, live[i] = None, False
                elif step == lengths[i] - 1:
                    live[i] = False
            tokens.append(token)
        return torch.tensor([t or 0 for t in tokens], dtype=torch.long, device=device), any(live)

    for _ in _loop(model, ids, steps, choose, key_mask=key_mask):
        yield list(tokens)


def text_of(tok, ids: Iterable[int]) -> str:
    """Ordinary text of ids: BOS, EOS, special and padding ids (past the SentencePiece pieces) left out."""
    return tok.sp.decode([t for t in ids if t < tok.base_size and t not in (tok.bos, tok.eos)])


def sample_texts(
    model: GPT,
    tok,
    prompts: Sequence[str],
    sampling: SamplingConfig,
    bos: int | None = None,
    notify: Callable[[str], None] | None = None,
) -> list[str]:
    """Continue each prompt (BOS + its tokens) past the context if asked; prompt + continuation as text.

    `tok` is a training.chat.ChatTokenizer (or anything with sp, bos, eos, base_size). One generator
    from the seed serves every prompt in turn, so the same checkpoint gives the same samples. A prompt
    longer than the context keeps its last max_seq_len - 1 tokens, and a continuation that ends at EOS
    is shorter than asked: `notify` gets a sentence for each.
    """
    sampling = sampling.validated()
    device = model.tok_emb.weight.device
    bos = tok.bos if bos is None else bos
    max_len = model.config.max_seq_len
    generator = sampling.generator(device)
    texts = []
    for n, prompt in enumerate(prompts, 1):
        ids = ([bos] if bos >= 0 else []) + tok.sp.encode(prompt)
        if len(ids) > max_len - 1 and notify is not None:
            notify(
                f"prompt {n} has {len(ids):,} tokens and the model's context is {max_len}: "
                f"kept its last {max_len - 1} tokens"
            )
        ids = ids[-(max_len - 1) :]
        # fp32 (no autocast): a few hundred tokens cost nothing, and the KV cache keeps the weights' dtype
        new = continue_ids(model, ids, sampling, [tok.eos], slide=True, generator=generator)
        if len(new) < sampling.max_new_tokens and notify is not None:
            notify(
                f"prompt {n}: the model ended the text after {len(new)} of {sampling.max_new_tokens} new tokens"
            )
        # decoded together, so the space between prompt and continuation survives
        texts.append(text_of(tok, ids + new))
    return texts


def stream_text(tok, tokens: Iterable[int]) -> Iterator[str]:
    """Text pieces as tokens arrive. A character split over byte-fallback tokens is held back until
    whole, and the text is decoded as a whole each time so SentencePiece's spacing stays right."""
    ids: list[int] = []
    sent = ""
    for t in tokens:
        if t >= tok.base_size:
            continue  # a stray special token (not a stop id) is not shown
        ids.append(t)
        text = tok.sp.decode(ids)
        if text.endswith("\ufffd"):
            continue
        if len(text) > len(sent) and text.startswith(sent):
            yield text[len(sent) :]
            sent = text
    text = tok.sp.decode(ids)
    if len(text) > len(sent) and text.startswith(sent):
        yield text[len(sent) :]
