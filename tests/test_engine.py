"""The generation engine (training/engine.py): one loop for generate, chat and eval, sampling values
checked in one place, stop ids, streaming text, and a history fit that is linear in what it keeps."""

from __future__ import annotations

import math

import pytest
import torch
from chat_factory import write_sample_corpus

from common.errors import UserError
from training.chat import (
    ChatSession,
    ChatTokenizer,
    add_chat_tokens,
    encode_chat,
    fit_history,
    load_chat_tokenizer,
)
from training.engine import (
    SamplingConfig,
    SamplingError,
    continue_ids,
    decode_batch,
    sample_texts,
    stream_text,
    stream_tokens,
)
from training.evaluate import generate_samples
from training.model import GPT, ModelConfig


def make(seed: int = 0, **overrides) -> GPT:
    torch.manual_seed(seed)
    return GPT(ModelConfig.preset("tiny", **overrides))


@pytest.fixture(scope="module")
def tok(tmp_path_factory) -> ChatTokenizer:
    corpus = write_sample_corpus(tmp_path_factory.mktemp("corpus"))
    return load_chat_tokenizer(corpus / "tokenizer.model")


BAD_SAMPLING = [
    ("NaN temperature", {"temperature": math.nan}, "temperature"),
    ("infinite temperature", {"temperature": math.inf}, "temperature"),
    ("negative temperature", {"temperature": -0.5}, "temperature"),
    ("top_p 0 is not 'off'", {"top_p": 0.0}, "top_p"),
    ("top_p above 1", {"top_p": 1.5}, "top_p"),
    ("NaN top_p", {"top_p": math.nan}, "top_p"),
    ("top_k 0", {"top_k": 0}, "top_k"),
    ("negative seed", {"seed": -1}, "seed"),
    ("seed 2**63", {"seed": 2**63}, "seed"),
    ("seed 2**70", {"seed": 2**70}, "seed"),
    ("float seed", {"seed": 1.5}, "seed"),
    ("negative max_new_tokens", {"max_new_tokens": -1}, "max_new_tokens"),
    ("NaN max_new_tokens", {"max_new_tokens": math.nan}, "max_new_tokens"),
    ("bool max_new_tokens", {"max_new_tokens": True}, "max_new_tokens"),
]


@pytest.mark.parametrize("name, values, field", BAD_SAMPLING, ids=[c[0] for c in BAD_SAMPLING])
def test_bad_sampling_values_are_one_clear_error(name, values, field) -> None:
    config = SamplingConfig(**values)
    with pytest.raises(SamplingError, match=field) as info:
        config.validated()
    assert isinstance(info.value, UserError) and isinstance(info.value, ValueError)
    assert "\n" not in str(info.value)
    model = make()  # and the loop itself refuses them: no caller can skip the check
    with pytest.raises(SamplingError, match=field):
        list(stream_tokens(model, [1, 2, 3], (), config))


def test_good_sampling_values_pass_and_the_context_bounds_a_reply() -> None:
    config = SamplingConfig(max_new_tokens=5, temperature=1, top_k=3, top_p=1, seed=2**63 - 1).validated()
    assert isinstance(config.temperature, float) and config.top_p == 1.0 and config.seed == 2**63 - 1
    with pytest.raises(SamplingError, match="16-token context"):
        SamplingConfig(max_new_tokens=17).validated(context=16)
    model = make()
    out = list(stream_tokens(model, [1, 2], (), SamplingConfig(4, 1.0, None, None, seed=2**63 - 1)))
    assert len(out) == 4


def test_generate_and_streaming_are_one_loop() -> None:
    """GPT.generate (ptgpt generate, eval) and stream_tokens (chat, server) give the same tokens, greedy
    and seeded, so there is one decoding loop to trust."""
    model = make()
    prompt = [5, 17, 33, 2, 90]
    x = torch.tensor([prompt])
    greedy = model.generate(x, 20, temperature=0)[0, 5:].tolist()
    assert list(stream_tokens(model, prompt, (), SamplingConfig(20, 0.0, None))) == greedy
    gen = torch.Generator().manual_seed(7)
    sampled = model.generate(x, 20, temperature=1.3, top_k=40, top_p=0.95, generator=gen)[0, 5:].tolist()
    config = SamplingConfig(20, 1.3, top_k=40, top_p=0.95, seed=7)
    assert continue_ids(model, prompt, config) == sampled
    assert continue_ids(model, prompt, config) == sampled  # a seed repeats, the global RNG aside
    assert sampled != greedy


def test_a_stop_id_ends_the_reply_and_is_not_yielded() -> None:
    model = make()
    prompt, config = [5, 17, 33], SamplingConfig(12, 1.0, None, seed=3)
    free = continue_ids(model, prompt, config)
    stop = free[3]
    assert continue_ids(model, prompt, config, stop_ids=[stop, 511]) == free[: free.index(stop)]


def test_without_sliding_the_reply_stops_at_the_context_with_sliding_it_goes_on() -> None:
    model = make(max_seq_len=16)
    prompt = list(range(10, 22))  # 12 tokens: room for 4
    assert len(continue_ids(model, prompt, SamplingConfig(30, 0.0, None))) == 4
    assert len(continue_ids(model, prompt, SamplingConfig(30, 0.0, None), slide=True)) == 30
    with pytest.raises(ValueError, match="no room"):
        continue_ids(model, list(range(16)), SamplingConfig(3, 0.0, None))


def test_sample_texts_are_what_generate_samples_gave(tok) -> None:
    """`ptgpt generate` and demo now call sample_texts; its texts are the old path's, bit for bit."""
    model = make(vocab_size=tok.base_size + 8, max_seq_len=32)
    prompts = ["Era uma vez", "O rio corria devagar " * 10]  # the second is longer than the context
    notes = []
    ours = sample_texts(
        model, tok, prompts, SamplingConfig(40, 0.8, 50, None, seed=1234), notify=notes.append
    )
    old = generate_samples(model, tok.sp, prompts, max_new_tokens=40, temperature=0.8, top_k=50, seed=1234)
    assert ours == old and ours[0].startswith("Era uma vez")
    assert any("kept its last 31 tokens" in n for n in notes)


def test_stream_text_pieces_join_to_the_decoded_text(tok) -> None:
    text = "Ó mãe, «coração» — ½ pão e 🌊 açúcar!"
    ids = tok.sp.encode(text)
    pieces = list(stream_text(tok, iter(ids + [tok.end])))  # a stray special id is not shown
    assert "".join(pieces) == tok.sp.decode(ids) and not any("\ufffd" in p for p in pieces)
    assert len(pieces) > 3  # it streams: text arrives as it is decoded, not at the end


def reference_fit(tok, messages, max_tokens):
    """The old fit_history: re-encode the whole conversation after every dropped turn."""
    system = messages[:1] if messages and messages[0]["role"] == "system" else []
    turns, dropped = messages[len(system) :], 0
    while len(turns) > 1 and len(encode_chat(tok, system + turns, True)[0]) > max_tokens:
        turns, dropped = turns[1:], dropped + 1
    while turns and turns[0]["role"] == "assistant" and len(turns) > 1:
        turns, dropped = turns[1:], dropped + 1
    return system + turns, dropped


def conversation(n: int, system: bool = True) -> list[dict]:
    messages = [{"role": "system", "content": "Sê breve."}] if system else []
    for i in range(n):
        role = "user" if i % 2 == 0 else "assistant"
        messages.append({"role": role, "content": f"Mensagem {i} " + "sobre o rio " * (i % 7)})
    return messages


@pytest.mark.parametrize("budget", [20, 45, 80, 150, 10_000])
@pytest.mark.parametrize("system", [True, False])
def test_fit_history_keeps_what_the_old_quadratic_fit_kept(tok, budget, system) -> None:
    messages = conversation(31, system)
    assert fit_history(tok, messages, budget) == reference_fit(tok, messages, budget)


def test_fit_history_measures_each_kept_message_once(tok) -> None:
    """10,000 messages (the server's hostile request) cost what the kept turns cost, not 10,000 encodes
    of the whole conversation."""

    class Counting(ChatTokenizer):
        calls = 0

        def encode_content(self, text: str) -> list[int]:
            Counting.calls += 1
            return super().encode_content(text)

    counting = Counting(tok.sp, tok.path)
    messages = conversation(10_000)
    kept, dropped = fit_history(counting, messages, 120)
    assert dropped == len(messages) - len(kept) > 9_000 and kept[1]["role"] == "user"
    # the kept ones (the system message among them), the one that did not fit, and at most one
    # assistant turn measured, then dropped because a conversation starts on a user turn
    assert Counting.calls <= len(kept) + 2
    assert len(encode_chat(tok, kept, True)[0]) <= 120


def test_chat_session_checks_sampling_before_the_first_piece(tok) -> None:
    model = add_chat_tokens(make(vocab_size=tok.base_size, max_seq_len=64), tok)
    session = ChatSession(model, tok)
    prompt, _ = session.chat_prompt([{"role": "user", "content": "Olá"}], reserve=8)
    for bad in (SamplingConfig(8, math.nan), SamplingConfig(8, seed=2**70), SamplingConfig(8, top_p=0.0)):
        with pytest.raises(SamplingError):
            next(session.stream(prompt, bad))
    *pieces, reply = session.stream(prompt, SamplingConfig(8, 0.0, None))
    assert reply.completion_tokens <= 8 and reply.text == "".join(pieces)
    assert reply.finish_reason == ("length" if reply.completion_tokens == 8 else "stop")


def test_lone_surrogates_in_messages_are_refused(tok) -> None:
    from training.chat import check_messages

    with pytest.raises(ValueError, match="not valid Unicode"):
        check_messages([{"role": "user", "content": "ol\udcff"}])
    assert check_messages([{"role": "user", "content": "olá 🌊"}])[0]["content"] == "olá 🌊"


@pytest.mark.parametrize("name", ["tiny", "tiny-moe"])
def test_a_batch_of_prompts_gives_each_its_solo_reply(name) -> None:
    """decode_batch (several requests in one forward per step) left-pads the prompts and hides the pads:
    each row's tokens are those of the same request alone, greedy or seeded, with its own stops."""
    torch.manual_seed(0)
    model = GPT(ModelConfig.preset(name, max_seq_len=48))
    prompts = [[7, 8, 9], list(range(20, 40)), [100], list(range(300, 310))]
    samplings = [
        SamplingConfig(12, 0.0, None),
        SamplingConfig(6, 1.0, 50, 0.9, seed=1),
        SamplingConfig(20, 0.7, None, seed=2),
        SamplingConfig(3, 1.2, 5, seed=3),
    ]
    solo = [continue_ids(model, p, s) for p, s in zip(prompts, samplings, strict=True)]
    stops = [[], [], [solo[2][5]], []]  # the third row stops where its solo reply has this token
    solo[2] = solo[2][: solo[2].index(stops[2][0])]
    rows = [[] for _ in prompts]
    for step in decode_batch(model, prompts, samplings, stops):
        for row, token in zip(rows, step, strict=True):
            if token is not None:
                row.append(token)
    assert rows == solo
    assert model.training  # back in the mode it was in
