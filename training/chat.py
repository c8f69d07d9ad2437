"""Chat on top of a pre-trained model: reserved special tokens, the chat template, streamed replies.

The corpus tokenizer (SentencePiece, docs/formats.md) has no chat tokens, and retraining it would
change every id the base model learned. So the chat tokens are *appended* after its pieces:

    ids 0 .. V_sp-1          SentencePiece pieces (unk 0, bos 1, eos 2, pad 3, then text)
    V_sp + 0 .. V_sp + 3     <|system|>  <|user|>  <|assistant|>  <|end|>

and `add_chat_tokens` gives the model embedding and output rows for them (see docs/chat.md for why
the base model's outputs on ordinary text do not change). A conversation is encoded as

    <bos> <|user|> text <|end|> <|assistant|> text <|end|> <|user|> ...

where each `text` is SentencePiece-encoded on its own, so no user text can ever produce a special
token id. `render_chat` writes the same thing as a string (the form Hugging Face's
`apply_chat_template` produces from the template in `HF_CHAT_TEMPLATE`).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch

from common.errors import UserError
from training.engine import SamplingConfig, room_for, stream_text, stream_tokens
from training.model import GPT

SPECIAL_TOKENS = ("<|system|>", "<|user|>", "<|assistant|>", "<|end|>")
ROLES = ("system", "user", "assistant")
TEMPLATE_NAME = "ptgpt-chat-1"  # recorded in checkpoints; bump when the layout above changes

# Jinja for transformers' apply_chat_template, producing exactly render_chat's string.
HF_CHAT_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}"
    "{{ '<|' + message['role'] + '|>' + message['content'] + '<|end|>' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|assistant|>' }}{% endif %}"
)


@dataclass
class ChatTokenizer:
    """The corpus SentencePiece model plus the chat tokens appended after its pieces."""

    sp: object  # sentencepiece.SentencePieceProcessor
    path: str

    @property
    def base_size(self) -> int:
        return self.sp.get_piece_size()

    @property
    def vocab_size(self) -> int:
        """Ids in use: the pieces plus the special tokens (the model may have more rows)."""
        return self.base_size + len(SPECIAL_TOKENS)

    @property
    def bos(self) -> int:
        return self.sp.bos_id()

    @property
    def eos(self) -> int:
        return self.sp.eos_id()

    def special_id(self, token: str) -> int:
        return self.base_size + SPECIAL_TOKENS.index(token)

    @property
    def end(self) -> int:
        return self.special_id("<|end|>")

    def role_id(self, role: str) -> int:
        return self.special_id(f"<|{role}|>")

    def special_ids(self) -> dict[str, int]:
        return {t: self.special_id(t) for t in SPECIAL_TOKENS}

    def encode(self, text: str) -> list[int]:
        """Plain text to piece ids as it starts a paragraph (SentencePiece's dummy-prefix `▁` first)."""
        return self.sp.encode(text)

    def encode_content(self, text: str) -> list[int]:
        """A message's text to piece ids, *without* the dummy prefix: text right after a special token
        is not the start of a paragraph. This is what transformers' Llama tokenizer does after an added
        token (legacy=False), so `apply_chat_template` gives the ids encode_chat gives. Never a
        special id, whatever the text says. (The trick: encode behind a fixed piece, then drop it.)"""
        anchor = self.sp.id_to_piece(self.sp.unk_id())
        return self.sp.encode(anchor + text)[len(self.sp.encode(anchor)) :]

    def decode(self, ids: list[int]) -> str:
        """Piece ids to text; special ids are written as their token strings, BOS/EOS dropped."""
        out, run = [], []
        for i in ids:
            if i >= self.base_size:
                out.append(self.sp.decode(run))
                run = []
                k = i - self.base_size
                out.append(SPECIAL_TOKENS[k] if k < len(SPECIAL_TOKENS) else "")
            elif i not in (self.bos, self.eos):
                run.append(i)
        out.append(self.sp.decode(run))
        return "".join(out)


def load_chat_tokenizer(path: str | Path) -> ChatTokenizer:
    import sentencepiece as spm

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"tokenizer model not found: {path}")
    return ChatTokenizer(spm.SentencePieceProcessor(model_file=str(path)), str(path))


# -----------------------------------------------------------------------------------------------
# Messages and the template


def check_messages(messages: object, where: str = "messages") -> list[dict]:
    """A list of {"role", "content"} with known roles and string contents, else ValueError saying what."""
    if not isinstance(messages, list) or not messages:
        raise ValueError(f"{where} must be a non-empty list of {{'role', 'content'}} objects")
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or "role" not in m or "content" not in m:
            raise ValueError(f"{where}[{i}] must be an object with 'role' and 'content'")
        if m["role"] not in ROLES:
            raise ValueError(f"{where}[{i}].role is {m['role']!r}; expected one of {', '.join(ROLES)}")
        if not isinstance(m["content"], str):
            raise ValueError(f"{where}[{i}].content must be a string")
        if not m["content"].isascii():
            try:
                m["content"].encode("utf-8")
            except UnicodeEncodeError:
                raise ValueError(f"{where}[{i}].content is not valid Unicode (a lone surrogate)") from None
    return [{"role": m["role"], "content": m["content"]} for m in messages]


def render_chat(messages: list[dict], add_generation_prompt: bool = False, bos_token: str = "<s>") -> str:
    """The conversation as one string (what HF_CHAT_TEMPLATE renders)."""
    text = bos_token + "".join(f"<|{m['role']}|>{m['content']}<|end|>" for m in messages)
    return text + ("<|assistant|>" if add_generation_prompt else "")


def parse_chat(text: str, bos_token: str = "<s>") -> list[dict]:
    """The inverse of render_chat (without a generation prompt)."""
    if not text.startswith(bos_token):
        raise ValueError("a rendered chat starts with the BOS token")
    rest, messages = text[len(bos_token) :], []
    while rest:
        role = next((r for r in ROLES if rest.startswith(f"<|{r}|>")), None)
        if role is None:
            raise ValueError(f"expected a role token at {rest[:20]!r}")
        rest = rest[len(role) + 4 :]
        content, sep, rest = rest.partition("<|end|>")
        if not sep:
            raise ValueError(f"message of {role} is not closed by <|end|>")
        messages.append({"role": role, "content": content})
    return messages


def encode_chat(
    tok: ChatTokenizer, messages: list[dict], add_generation_prompt: bool = False
) -> tuple[list[int], list[bool]]:
    """Token ids of a conversation and, per id, whether it is assistant output (text and its <|end|>).

    Training predicts ids[t] from ids[:t] and scores only positions where the flag is set: the model
    learns to write replies and to stop, never to imitate the user's turns.
    """
    ids, assistant = [tok.bos], [False]
    for m in messages:
        content = tok.encode_content(m["content"]) + [tok.end]
        ids += [tok.role_id(m["role"])] + content
        assistant += [False] + [m["role"] == "assistant"] * len(content)
    if add_generation_prompt:
        ids.append(tok.role_id("assistant"))
        assistant.append(False)
    return ids, assistant


def decode_chat(tok: ChatTokenizer, ids: list[int]) -> list[dict]:
    """Messages back from encode_chat's ids, split at the special ids (so any content survives)."""
    if not ids or ids[0] != tok.bos:
        raise ValueError("an encoded chat starts with BOS")
    roles = {tok.role_id(r): r for r in ROLES}
    messages, role, run = [], None, []
    for i in ids[1:]:
        if i in roles and role is None:
            role, run = roles[i], []
        elif i == tok.end and role is not None:
            messages.append({"role": role, "content": tok.sp.decode(run)})
            role = None
        elif role is not None and i < tok.base_size:
            run.append(i)
        else:
            raise ValueError(f"unexpected token id {i} in an encoded chat")
    if role is not None:
        raise ValueError(f"the last message ({role}) is not closed by <|end|>")
    return messages


def fit_history(tok: ChatTokenizer, messages: list[dict], max_tokens: int) -> tuple[list[dict], int]:
    """Drop the oldest turns (a leading system message stays) until the prompt fits in max_tokens.

    Returns (kept messages, number dropped). The last message always stays; a last message that alone
    does not fit is an error for the caller to report. Linear in what is kept: a message costs
    <|role|> + its text + <|end|> on its own (encode_chat's layout), so the turns are measured once
    each, newest first, and measuring stops at the first that no longer fits.
    """
    system = messages[:1] if messages and messages[0]["role"] == "system" else []
    turns = messages[len(system) :]

    def size(m: dict) -> int:
        return len(tok.encode_content(m["content"])) + 2

    budget = max_tokens - 2 - sum(size(m) for m in system)  # BOS and the generation prompt
    first = len(turns)  # turns[first:] are kept
    while first > 0:
        cost = size(turns[first - 1])
        if first < len(turns) and cost > budget:
            break
        budget -= cost
        first -= 1
    while first < len(turns) - 1 and turns[first]["role"] == "assistant":  # start on a user turn
        first += 1
    return system + turns[first:], first


# -----------------------------------------------------------------------------------------------
# The model side: rows for the new tokens


@torch.no_grad()
def add_chat_tokens(model: GPT, tok: ChatTokenizer) -> GPT:
    """A copy of `model` whose vocabulary covers the chat tokens, with their rows set to the mean row.

    The rows of ordinary ids are copied unchanged, so every logit of an ordinary token is bit-for-bit
    the same as before. Each new output row is the mean of the ordinary rows, so a new token's logit is
    the mean of the ordinary logits and, by Jensen's inequality, its probability is at most 1/V (V the
    number of ordinary rows): the base model's next-token distribution on ordinary text moves by at
    most len(SPECIAL_TOKENS)/V of probability mass. Input rows get the mean too (a neutral start).
    Rows a padded vocabulary already had at those ids (never a target in pre-training) are replaced.
    Call it on a base model only: on a tuned model it would reset the learned chat rows.
    """
    from dataclasses import replace

    old = model.config
    first = tok.base_size
    needed = tok.vocab_size
    config = replace(old, vocab_size=max(old.vocab_size, needed))
    new = GPT(config)
    state = model.state_dict()
    for name in ("tok_emb.weight", "lm_head.weight"):
        w = state[name]
        grown = torch.zeros(config.vocab_size, w.shape[1], dtype=w.dtype)
        grown[: w.shape[0]] = w
        grown[first:needed] = w[:first].mean(dim=0)
        state[name] = grown
    new.load_state_dict(state, strict=True)
    return new.to(model.tok_emb.weight.device)


def chat_metadata(tok: ChatTokenizer) -> dict:
    """What a checkpoint records about its chat format (read back by chat, serve-model and export-hf)."""
    return {
        "template": TEMPLATE_NAME,
        "special_tokens": tok.special_ids(),
        "hf_chat_template": HF_CHAT_TEMPLATE,
    }


# -----------------------------------------------------------------------------------------------
# Replies (the loop itself is training/engine.py's)


@dataclass
class Reply:
    """A finished reply: its text, why it stopped ("stop" or "length"), and token counts."""

    text: str
    finish_reason: str
    prompt_tokens: int
    completion_tokens: int


class ChatSession:
    """A loaded chat model: streams replies to messages (chat) or to plain text (completion)."""

    def __init__(self, model: GPT, tok: ChatTokenizer, name: str = "ptgpt"):
        if model.config.vocab_size < tok.vocab_size:
            raise ValueError(
                f"the model has {model.config.vocab_size} token rows but the chat tokenizer needs "
                f"{tok.vocab_size}: tune it with `ptgpt sft` first"
            )
        self.model, self.tok, self.name = model, tok, name

    @property
    def context(self) -> int:
        return self.model.config.max_seq_len

    def chat_prompt(self, messages: list[dict], reserve: int) -> tuple[list[int], int]:
        """Prompt ids for messages, oldest turns dropped so `reserve` tokens are left for the reply."""
        kept, dropped = fit_history(self.tok, messages, self.context - reserve)
        ids, _ = encode_chat(self.tok, kept, add_generation_prompt=True)
        if len(ids) >= self.context:
            raise ValueError(
                f"the last message alone is {len(ids)} tokens; the model's context is {self.context}"
            )
        return ids, dropped

    def stream(self, prompt: list[int], sampling: SamplingConfig, chat: bool = True) -> Iterator[str | Reply]:
        """Text pieces, then one final Reply. Sampling values are checked first (SamplingError)."""
        sampling = sampling.validated()
        stop = {self.tok.end, self.tok.eos} if chat else {self.tok.eos}
        count = 0

        def counted() -> Iterator[int]:
            nonlocal count
            for t in stream_tokens(self.model, prompt, stop, sampling):
                count += 1
                yield t

        pieces = []
        for piece in stream_text(self.tok, counted()):
            pieces.append(piece)
            yield piece
        reason = "length" if count >= room_for(self.model, len(prompt), sampling.max_new_tokens) else "stop"
        yield Reply("".join(pieces), reason, len(prompt), count)

    def reply(self, messages: list[dict], sampling: SamplingConfig) -> Reply:
        prompt, _ = self.chat_prompt(messages, reserve=min(sampling.max_new_tokens, self.context // 2))
        *_, final = self.stream(prompt, sampling)
        return final


def load_chat_session(run_or_checkpoint: str | Path, device: str = "cpu") -> ChatSession:
    """The model and tokenizer of an SFT run (or any checkpoint with chat rows) ready to chat."""
    from training.runs import load_run

    run = load_run(run_or_checkpoint, device)
    if not run.is_chat:
        raise UserError(
            f"{run.checkpoint} is not a chat model (no chat template recorded): "
            f"fine-tune it first with `ptgpt sft --base {run_or_checkpoint} ...`"
        )
    if run.meta["chat"].get("special_tokens") != run.tokenizer.special_ids():
        raise UserError(f"{run.checkpoint} was tuned with other special token ids than its tokenizer gives")
    return ChatSession(run.model, run.tokenizer, name=Path(run_or_checkpoint).name)
