"""`ptgpt serve-model` under concurrent clients: throughput and latency at 1, 4 and 16 clients, on CPU.

Starts the real command in a subprocess (from this checkout, or `--code DIR` for another one, e.g. an
older checkout whose server you want to compare) on a small random chat model built like the tests'
(tests/chat_factory.py), then runs N client threads, each sending `--requests` chat completions one
after another. Prints, per level: requests/s, completion tokens/s, latency p50/p95 (whole reply) and,
for streamed replies, time to the first content event p50/p95.

    python bench/bench_serve.py                          # this checkout
    python bench/bench_serve.py --code /work/main        # another checkout's serve-model
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import requests

ROOT = Path(__file__).resolve().parents[1]
# A model big enough that a forward pass costs more than the HTTP around it (about 1 ms a token).
MODEL = {"n_layer": 4, "n_embd": 128, "n_head": 4, "n_kv_head": 2, "mlp_hidden": 384, "max_seq_len": 256}


def build_chat_checkpoint(root: Path) -> Path:
    sys.path.insert(0, str(ROOT / "tests"))
    from chat_factory import write_chat_checkpoint

    return write_chat_checkpoint(root, **MODEL)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(code: Path, checkpoint: Path, port: int) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(code)}
    cmd = [sys.executable, "-m", "ptgpt", "serve-model", "--run", str(checkpoint), "--port", str(port)]
    proc = subprocess.Popen(cmd, cwd=code, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            requests.get(f"http://127.0.0.1:{port}/v1/models", timeout=2)
            return proc
        except requests.RequestException:  # not listening yet, or bound but still loading the model
            if proc.poll() is not None:
                raise SystemExit(f"the server exited with {proc.returncode}") from None
            time.sleep(0.3)
    proc.kill()
    raise SystemExit("the server did not answer within 120 s")


def client(url: str, index: int, n: int, max_tokens: int, stream: bool, out: list) -> None:
    with requests.Session() as http:
        for k in range(n):
            body = {
                "messages": [
                    {"role": "user", "content": f"Pergunta {index}-{k}: quem escreveu «Os Lusíadas»?"}
                ],
                "max_tokens": max_tokens,
                "seed": 1000 * index + k,
                "stream": stream,
            }
            start = time.perf_counter()
            r = http.post(url + "/v1/chat/completions", json=body, timeout=300, stream=stream)
            r.raise_for_status()
            first, tokens = None, 0
            if stream:
                for line in r.iter_lines():
                    if b'"content": "' in line and b'"content": ""' not in line:  # a text piece
                        first = first or time.perf_counter() - start
                        tokens += 1  # about one token a piece
            else:
                tokens = r.json()["usage"]["completion_tokens"]
            out.append((time.perf_counter() - start, first, tokens))


def level(url: str, clients: int, per_client: int, max_tokens: int, stream: bool) -> dict:
    results: list = []
    threads = [
        threading.Thread(target=client, args=(url, i, per_client, max_tokens, stream, results))
        for i in range(clients)
    ]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - start
    latencies = sorted(r[0] for r in results)
    firsts = sorted(r[1] for r in results if r[1] is not None)

    def pct(xs: list, q: float) -> float:
        return xs[min(len(xs) - 1, round(q * (len(xs) - 1)))] if xs else float("nan")

    return {
        "clients": clients,
        "stream": stream,
        "requests": len(results),
        "req_per_s": len(results) / wall,
        "tokens_per_s": sum(r[2] for r in results) / wall,
        "p50_s": statistics.median(latencies),
        "p95_s": pct(latencies, 0.95),
        "first_p50_s": pct(firsts, 0.5),
        "first_p95_s": pct(firsts, 0.95),
    }


def decode_tokens_per_s(batch: int, steps: int = 48, prompt_len: int = 24) -> float:
    """Tokens/s of the bench model decoding `batch` same-length sequences at once (KV cache, CPU):
    what batching waiting requests through one forward pass could gain at best."""
    import torch

    from training.model import GPT, KVCache, ModelConfig

    torch.manual_seed(0)
    torch.set_num_threads(1)  # one core, as the server's one worker thread gets on a busy machine
    model = GPT(ModelConfig.preset("tiny", **MODEL, vocab_size=404)).eval()
    with torch.no_grad():
        cache = KVCache(model.config, batch, prompt_len + steps + 4, torch.device("cpu"), torch.float32)
        model(torch.randint(0, 400, (batch, prompt_len)), kv_cache=cache)
        for _ in range(4):  # warm-up
            model(torch.randint(0, 400, (batch, 1)), kv_cache=cache)
        start = time.perf_counter()
        for _ in range(steps):
            model(torch.randint(0, 400, (batch, 1)), kv_cache=cache)
        return batch * steps / (time.perf_counter() - start)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--code", type=Path, default=ROOT, help="checkout whose serve-model runs")
    p.add_argument("--levels", default="1,4,16")
    p.add_argument("--requests", type=int, default=4, help="requests per client")
    p.add_argument("--max-tokens", type=int, default=48)
    p.add_argument("--json", type=Path, help="also write the figures here")
    p.add_argument("--batching", action="store_true", help="only: decode tokens/s at batch 1, 4, 16")
    args = p.parse_args()
    if args.batching:
        for batch in (1, 4, 16):
            print(f"decode batch {batch:>2}: {decode_tokens_per_s(batch):8.0f} tokens/s")
        return
    with tempfile.TemporaryDirectory(prefix="bench-serve-") as tmp:
        checkpoint = build_chat_checkpoint(Path(tmp))
        port = free_port()
        proc = start_server(args.code.resolve(), checkpoint, port)
        url = f"http://127.0.0.1:{port}"
        try:
            level(url, 2, 2, args.max_tokens, False)  # warm-up
            rows = [
                level(url, int(n), args.requests, args.max_tokens, stream)
                for n in args.levels.split(",")
                for stream in (False, True)
            ]
        finally:
            proc.terminate()
            proc.wait(timeout=30)
    print(f"serve-model of {args.code}, model {MODEL}, max_tokens {args.max_tokens}")
    print(
        f"{'clients':>7} {'stream':>6} {'reqs':>5} {'req/s':>7} {'tok/s':>7} {'p50 s':>7} {'p95 s':>7} "
        f"{'1st p50':>8} {'1st p95':>8}"
    )
    for r in rows:
        print(
            f"{r['clients']:>7} {str(r['stream']):>6} {r['requests']:>5} {r['req_per_s']:>7.2f} "
            f"{r['tokens_per_s']:>7.1f} {r['p50_s']:>7.3f} {r['p95_s']:>7.3f} "
            f"{r['first_p50_s']:>8.3f} {r['first_p95_s']:>8.3f}"
        )
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
