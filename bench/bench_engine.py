"""The generation engine on CPU: fitting a long chat history, and decoding tokens/s for chat and generate.

    python bench/bench_engine.py [--messages 10000] [--tokens 128]

fit_history is timed on a conversation of --messages turns (the server's hostile request) next to the
old fit, which re-encoded the whole conversation for every dropped turn (timed on fewer turns, where
it finishes). Decoding: a tiny-preset model on the sample-book tokenizer, greedy and sampled, one
prompt (chat's stream_tokens) and a batch of 8 (GPT.generate); then 1, 4 and 16 concurrent
requests one after another vs together (decode_batch). All run the same engine loop.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from chat_factory import write_sample_corpus  # noqa: E402

from training.chat import encode_chat, fit_history, load_chat_tokenizer  # noqa: E402
from training.engine import SamplingConfig, continue_ids, decode_batch  # noqa: E402
from training.model import GPT, ModelConfig  # noqa: E402


def old_fit(tok, messages, max_tokens):
    system = messages[:1] if messages and messages[0]["role"] == "system" else []
    turns = messages[len(system) :]
    while len(turns) > 1 and len(encode_chat(tok, system + turns, True)[0]) > max_tokens:
        turns = turns[1:]
    return system + turns


def conversation(n: int) -> list[dict]:
    return [
        {"role": "user" if i % 2 == 0 else "assistant", "content": f"Mensagem {i} sobre o rio e o mar."}
        for i in range(n)
    ]


def seconds(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--messages", type=int, default=10_000)
    parser.add_argument("--old-messages", type=int, default=500)
    parser.add_argument("--tokens", type=int, default=128)
    args = parser.parse_args()
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        tok = load_chat_tokenizer(write_sample_corpus(Path(tmp) / "corpus") / "tokenizer.model")
    for n in (args.old_messages, args.messages):
        messages = conversation(n)
        new = seconds(lambda m=messages: fit_history(tok, m, 1024))
        line = f"fit_history, {n:,} messages into 1024 tokens: {new * 1e3:.1f} ms"
        if n <= args.old_messages:
            old = seconds(lambda m=messages: old_fit(tok, m, 1024))
            line += f" (old quadratic fit: {old * 1e3:.0f} ms)"
        print(line)

    torch.manual_seed(0)
    model = GPT(ModelConfig.preset("tiny", vocab_size=tok.vocab_size, max_seq_len=512)).eval()
    prompt = tok.encode("Era uma vez um rei que tinha três filhas")
    batch = torch.tensor([prompt] * 8)
    for name, sampling in (
        ("greedy", SamplingConfig(args.tokens, 0.0, None)),
        ("sampled", SamplingConfig(args.tokens, 0.8, 50, 0.95, seed=0)),
    ):
        s = seconds(lambda c=sampling: continue_ids(model, prompt, c))
        b = seconds(
            lambda c=sampling: model.generate(batch, c.max_new_tokens, c.temperature, c.top_k, c.top_p)
        )
        print(
            f"decode {name}, tiny preset, 1 thread: {args.tokens / s:,.0f} tokens/s for one prompt, "
            f"{8 * args.tokens / b:,.0f} tokens/s for a batch of 8"
        )
    bench_batches(model, tok, args.tokens)


def bench_batches(model, tok, tokens: int) -> None:
    """Concurrent requests: n prompts of different lengths answered one after another (the server
    today) or together through decode_batch, seeded sampling, tokens/s over all of them."""
    continue_ids(model, tok.encode("Era"), SamplingConfig(8, 0.8))  # warm up
    texts = ["Era uma vez", "O rio corria devagar entre as pedras", "Disse-lhe a mãe que", "Capítulo I"]
    for n in (1, 4, 16):
        prompts = [tok.encode(texts[i % 4] * (1 + i % 3)) for i in range(n)]
        samplings = [SamplingConfig(tokens, 0.8, 50, seed=i) for i in range(n)]
        solo = seconds(
            lambda p=prompts, c=samplings: [continue_ids(model, x, s) for x, s in zip(p, c, strict=True)]
        )
        together = seconds(lambda p=prompts, c=samplings: list(decode_batch(model, p, c, [[]] * len(p))))
        print(
            f"{n:2d} concurrent requests x {tokens} tokens: one after another {n * tokens / solo:,.0f} "
            f"tokens/s, batched {n * tokens / together:,.0f} tokens/s ({solo / together:.1f}x)"
        )


if __name__ == "__main__":
    main()
