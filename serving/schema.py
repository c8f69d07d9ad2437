"""What a completion request may contain (OpenAI's names; `top_k` is our extension), checked here.

Python's json module reads NaN, Infinity and 1e999 as floats and keeps lone surrogates (\\ud800) in
strings: each of those used to reach the model and kill the connection mid-reply. So every number
is strict and finite, every text must be encodable as UTF-8, and the bounds that depend on the
model (max_tokens within its context) come in through the validation context. Unknown fields
(`model`, `user`, ...) are ignored, as an OpenAI client sends them.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator

from training.chat import SamplingConfig

MAX_MESSAGES = 2048  # more is a 400: no chat page or client keeps a conversation that long

Integer = Annotated[int, Field(strict=True)]
Number = Annotated[float, Field(strict=True, allow_inf_nan=False)]


def _utf8(text: str) -> str:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as e:
        raise ValueError(f"contains a lone surrogate at character {e.start}, not valid text") from None
    return text


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="ignore")
    include_usage: bool = Field(default=False, strict=True)


class Sampled(BaseModel):
    """The fields both completion routes share: how to sample, whether to stream."""

    model_config = ConfigDict(extra="ignore")

    max_tokens: Integer | None = Field(default=None, ge=1)
    temperature: Number | None = Field(default=None, ge=0, le=2)
    top_p: Number | None = Field(default=None, gt=0, le=1)  # 0 would mean "no token at all"
    top_k: Integer | None = Field(default=None, ge=1)
    seed: Integer | None = Field(default=None, ge=0, lt=2**63)
    n: Literal[1] = 1
    stream: bool = Field(default=False, strict=True)
    stream_options: StreamOptions | None = None

    @field_validator("max_tokens")
    @classmethod
    def _within_context(cls, v: int | None, info: ValidationInfo) -> int | None:
        context = (info.context or {}).get("context")
        if v is not None and context is not None and v > context:
            raise ValueError(f"must be within [1, {context}], the model's context")
        return v

    def sampling(self, context: int) -> SamplingConfig:
        """The engine's settings; an absent max_tokens is half the context (at most 256)."""
        return SamplingConfig(
            max_new_tokens=self.max_tokens or default_max_tokens(context),
            temperature=1.0 if self.temperature is None else self.temperature,
            top_k=self.top_k,
            top_p=self.top_p,
            seed=self.seed,
        )

    @property
    def include_usage(self) -> bool:
        return self.stream_options is not None and self.stream_options.include_usage


class CompletionRequest(Sampled):
    """/v1/completions: a prompt to continue."""

    prompt: str = Field(strict=True)

    @field_validator("prompt")
    @classmethod
    def _text(cls, v: str) -> str:
        return _utf8(v)


class Message(BaseModel):
    model_config = ConfigDict(extra="ignore")

    role: Literal["system", "user", "assistant"]
    content: str = Field(strict=True)

    @field_validator("content")
    @classmethod
    def _text(cls, v: str) -> str:
        return _utf8(v)


class ChatRequest(Sampled):
    """/v1/chat/completions: a conversation to answer."""

    messages: list[Message] = Field(min_length=1, max_length=MAX_MESSAGES)


def default_max_tokens(context: int) -> int:
    """What a request that names no max_tokens gets (and the chat page starts with): room for a prompt."""
    return max(1, min(256, context // 2))
