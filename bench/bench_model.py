"""Forward+backward throughput of the decoder: dense MHA vs dense GQA vs MoE, grouped vs loop experts.

    python bench/bench_model.py                  # CPU: "small" presets, fp32, eager
    python bench/bench_model.py --device cuda    # GPU: "base" presets, bf16 autocast, eager and torch.compile

Prints tokens/s per configuration (from the median step time, so that a busy shared machine's
bursts do not dominate), MFU on a GPU (peak from training/flops.py; "unknown" for a GPU not in the
table), and the MoE speed ratio of the grouped matmul over the per-expert loop, measured with the two
models' steps interleaved in the same process. Imports only torch and this repository, so it runs
on a bare GPU image.
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from training.flops import mfu, peak_flops  # noqa: E402
from training.model import GPT, ModelConfig, grouped_mm_supported  # noqa: E402

# mode -> (torch.compile, bf16 autocast)
MODES = {"fp32": (False, False), "bf16": (False, True), "bf16+compile": (True, True)}


def configs(size: str) -> dict[str, ModelConfig]:
    """Dense multi-head, dense grouped-query and MoE variants of one preset family."""
    gqa, moe = ModelConfig.preset(size), ModelConfig.preset(f"{size}-moe")
    return {
        "dense-MHA": ModelConfig.preset(size, n_kv_head=gqa.n_head),
        "dense-GQA": gqa,
        f"MoE-{moe.n_experts}x-top{moe.top_k}": moe,
    }


def make_step(
    config: ModelConfig, device: torch.device, batch: int, seq: int, mode: str
) -> tuple[Callable[[], float], GPT]:
    """A function running one forward+backward on random tokens and returning its wall time in seconds."""
    compile_model, bf16 = MODES[mode]
    torch.manual_seed(0)
    model = GPT(config).to(device)
    run = torch.compile(model) if compile_model else model
    idx = torch.randint(0, config.vocab_size, (batch, seq + 1), device=device)

    def step() -> float:
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        t0 = time.perf_counter()
        autocast = torch.autocast(device.type, dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()
        with autocast:
            out = run(idx[:, :-1], targets=idx[:, 1:])
        out.total_loss().backward()
        model.zero_grad(set_to_none=True)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        return time.perf_counter() - t0

    return step, model


def median_step_times(steps: dict[str, Callable[[], float]], n: int, warmup: int) -> dict[str, float]:
    """Median step time of each step function, running them interleaved (a, b, a, b, ...)."""
    for step in steps.values():
        for _ in range(warmup):
            step()
    times: dict[str, list[float]] = {name: [] for name in steps}
    for _ in range(n):
        for name, step in steps.items():
            times[name].append(step())
    return {name: statistics.median(t) for name, t in times.items()}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--size", choices=["tiny", "small", "base"], help="preset family [cpu: small, cuda: base]")
    p.add_argument("--batch", type=int, help="sequences per step [cpu: 4, cuda: 16]")
    p.add_argument("--seq", type=int, help="tokens per sequence [cpu: 256, cuda: 1024]")
    p.add_argument("--steps", type=int, help="timed steps per configuration [cpu: 5, cuda: 20]")
    p.add_argument("--modes", help=f"comma-separated from {list(MODES)} [cpu: fp32, cuda: bf16,bf16+compile]")
    p.add_argument("--threads", type=int, help="CPU threads for torch (1 is steadier on a shared machine)")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    cuda = args.device == "cuda"
    if cuda and not torch.cuda.is_available():
        sys.exit("--device cuda: no CUDA device visible to torch")
    device = torch.device(args.device)
    size = args.size or ("base" if cuda else "small")
    batch = args.batch or (16 if cuda else 4)
    seq = args.seq or (1024 if cuda else 256)
    n_steps = args.steps or (20 if cuda else 5)
    modes = (args.modes or ("bf16,bf16+compile" if cuda else "fp32")).split(",")
    if unknown := [m for m in modes if m not in MODES]:
        sys.exit(f"unknown mode(s) {unknown}; choose from {list(MODES)}")
    if cuda:
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    peak = peak_flops(device)
    name = torch.cuda.get_device_name(device) if cuda else f"CPU ({torch.get_num_threads()} threads)"
    print(f"torch {torch.__version__} on {name}; peak bf16 FLOP/s: {f'{peak:.3g}' if peak else 'unknown'}")
    print(f"presets '{size}' / '{size}-moe', batch {batch} x seq {seq}, median of {n_steps} fwd+bwd steps\n")

    print(f"{'config':<16}{'mode':<14}{'params':>10}{'active':>10}{'tokens/s':>12}{'MFU':>8}")
    for label, cfg in configs(size).items():
        for mode in modes:
            step, model = make_step(cfg, device, batch, seq, mode)
            warmup = 3 if MODES[mode][0] else 1  # compilation happens in the first calls
            tps = batch * seq / median_step_times({mode: step}, n_steps, warmup)[mode]
            u = mfu(tps, model.flops_per_token(seq), peak)
            total, active = model.num_params() / 1e6, model.num_params(active=True) / 1e6
            mfu_text = f"{u:.1%}" if u is not None else "unknown"
            print(f"{label:<16}{mode:<14}{total:>9.1f}M{active:>9.1f}M{tps:>12,.0f}{mfu_text:>8}", flush=True)
            del step, model
            if cuda:
                torch.cuda.empty_cache()

    # Grouped vs loop experts on the same MoE model, eager (the loop has data-dependent shapes).
    moe, mode = ModelConfig.preset(f"{size}-moe"), modes[0].removesuffix("+compile")
    probe = torch.empty(1, device=device, dtype=torch.bfloat16 if MODES[mode][1] else torch.float32)
    if not grouped_mm_supported(probe, moe.n_embd, moe.expert_hidden):
        print(
            f"\nMoE grouped vs loop: grouped_mm is not supported here for {probe.dtype}; the model uses the loop"
        )
        return
    steps = {impl: make_step(ModelConfig.preset(f"{size}-moe", moe_impl=impl), device, batch, seq, mode)[0]
             for impl in ("grouped", "loop")}  # fmt: skip
    t = median_step_times(steps, n_steps, warmup=1)
    print(
        f"\nMoE {moe.n_experts}x top-{moe.top_k} ({mode}, eager, interleaved): "
        f"grouped {batch * seq / t['grouped']:,.0f} tok/s, loop {batch * seq / t['loop']:,.0f} tok/s, "
        f"grouped/loop speed = {t['loop'] / t['grouped']:.2f}x"
    )


if __name__ == "__main__":
    main()
