"""What only a GPU can show, in one run: the python half of bench/gpu_check.sh (read that first).

    python bench/gpu_check.py                         # on a CUDA GPU (H100/H200): a few minutes
    python bench/gpu_check.py --device cpu --quick    # smoke test of every part on a CPU: tiny settings

Parts (each one a row of the final table, and a key of the JSON file; a part that fails is reported
as failed and the others still run):

  train/<preset>   tokens/s and MFU of a full training step (fwd, bwd, clip, AdamW) of base and
                   base-moe, bf16 autocast + torch.compile, AdamW built as the trainer builds it
  adamw            the trainer's AdamW is fused (on CUDA and CPU); ms per step fused vs foreach
  moe_grouped      forward+backward of one MoE layer: grouped_mm vs the per-expert loop (and agreement)
  data_wait        a 50-step `training.train` under torchrun on real shards: data-wait fraction,
                   tokens/s, MFU from its metrics.jsonl
  nccl             torchrun with one process: init nccl (gloo on CPU), all_reduce, barrier
  hf_export        export to transformers (Llama and Qwen3-MoE with QK-norm), logits equal on the device

Imports only torch, numpy and this repository (transformers for hf_export, pyarrow/sentencepiece for
the trainer): no prefect, no click.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from training.flops import mfu, peak_flops  # noqa: E402
from training.model import GPT, ModelConfig, MoE, grouped_mm_supported  # noqa: E402
from training.optim import build_optimizer  # noqa: E402

DEFAULT_CORPUS = REPO / "data" / "bench-recipe" / "corpus-8k"


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn: Callable[[], object], device: torch.device, n: int) -> list[float]:
    """Seconds of each of n calls (the device synchronised around each)."""
    times = []
    for _ in range(n):
        sync(device)
        t0 = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - t0)
    return times


def autocast(device: torch.device, bf16: bool) -> contextlib.AbstractContextManager:
    return torch.autocast(device.type, dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()


# -----------------------------------------------------------------------------------------------
# Parts


def part_train(preset: str, args: argparse.Namespace, device: torch.device) -> dict:
    """One full training step per call, as the trainer does it; tokens/s from the median step."""
    batch, seq = (2, 64) if args.quick else (args.batch, args.seq)
    config = ModelConfig.preset(preset, max_seq_len=max(seq, ModelConfig.preset(preset).max_seq_len))
    torch.manual_seed(0)
    model = GPT(config).to(device)
    optimizer = build_optimizer(model, "adamw")  # the trainer's default: fused where torch has it
    run = torch.compile(model) if args.compile else model
    idx = torch.randint(0, config.vocab_size, (batch, seq + 1), device=device)

    def step() -> None:
        with autocast(device, args.bf16):
            loss = run(idx[:, :-1], idx[:, 1:]).total_loss()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    warm = timed(step, device, 1 if args.quick else 3)  # compilation happens here
    times = timed(step, device, 2 if args.quick else args.steps)
    tps = batch * seq / statistics.median(times)
    peak = peak_flops(device)
    u = mfu(tps, model.flops_per_token(seq), peak)
    return {
        "tokens_per_s": round(tps),
        "mfu": u,
        "params_m": model.num_params() / 1e6,
        "active_params_m": model.num_params(active=True) / 1e6,
        "warmup_s": round(sum(warm), 1),
        "batch": batch,
        "seq": seq,
        "compile": args.compile,
        "bf16": args.bf16,
        "fused_adamw": bool(optimizer.param_groups[0].get("fused")),
        "summary": f"{tps:,.0f} tok/s, MFU {'unknown' if u is None else f'{u:.1%}'}",
    }


def part_adamw(args: argparse.Namespace, device: torch.device) -> dict:
    """Is the trainer's AdamW fused here, and what does one step cost fused vs foreach?"""
    config = ModelConfig.preset("tiny" if args.quick else "base")
    model = GPT(config).to(device)
    for p in model.parameters():
        p.grad = torch.randn_like(p) * 1e-3
    ms = {}
    for fused in (True, False):
        opt = build_optimizer(model, "adamw", fused=fused)
        timed(opt.step, device, 2)
        ms["fused" if fused else "foreach"] = 1e3 * statistics.median(
            timed(opt.step, device, 3 if args.quick else 10)
        )
    # training/train.py builds AdamW with build_optimizer's default (fused where torch has the kernel)
    trainer_fused = bool(build_optimizer(model, "adamw").param_groups[0].get("fused"))
    return {
        **{f"{k}_ms": round(v, 2) for k, v in ms.items()},
        "trainer_fused": trainer_fused,
        "summary": f"trainer fused: {trainer_fused}; step {ms['fused']:.1f} ms fused vs {ms['foreach']:.1f} foreach",
    }


def part_moe_grouped(args: argparse.Namespace, device: torch.device) -> dict:
    """One MoE layer, forward + backward: one grouped_mm vs the per-expert loop (eager, interleaved)."""
    tokens = 512 if args.quick else args.batch * args.seq
    config = ModelConfig.preset("tiny-moe" if args.quick else "base-moe")
    dtype = torch.bfloat16 if args.bf16 else torch.float32
    probe = torch.empty(1, device=device, dtype=dtype)
    if not grouped_mm_supported(probe, config.n_embd, config.expert_hidden):
        return {"summary": f"grouped_mm not supported for {dtype} on {device}", "status": "skipped"}
    torch.manual_seed(0)
    moe = MoE(config).to(device)
    torch.nn.init.normal_(moe.router.weight, std=0.02)
    torch.nn.init.normal_(moe.w_in, std=0.02)
    torch.nn.init.normal_(moe.w_out, std=0.02)
    moe = moe.to(dtype)
    x = torch.randn(1, tokens, config.n_embd, device=device, dtype=dtype, requires_grad=True)
    results = {}

    def run(impl: str) -> Callable[[], None]:
        def fn() -> None:
            moe.impl = impl
            out, aux = moe(x)
            (out.float().square().mean() + aux["load_balance_loss"] + aux["z_loss"]).backward()
            results[impl] = (out.detach().float(), x.grad.detach().float().clone())
            x.grad = None
            moe.zero_grad(set_to_none=True)

        return fn

    fns = {impl: run(impl) for impl in ("grouped", "loop")}
    for fn in fns.values():
        timed(fn, device, 2)
    times: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(3 if args.quick else 10):
        for k, fn in fns.items():
            times[k] += timed(fn, device, 1)
    med = {k: statistics.median(v) for k, v in times.items()}
    (out_g, grad_g), (out_l, grad_l) = results["grouped"], results["loop"]
    rel = max(
        ((out_g - out_l).norm() / out_l.norm()).item(), ((grad_g - grad_l).norm() / grad_l.norm()).item()
    )
    speedup = med["loop"] / med["grouped"]
    return {
        "grouped_ms": round(1e3 * med["grouped"], 2),
        "loop_ms": round(1e3 * med["loop"], 2),
        "speedup": speedup,
        "max_rel_diff": rel,
        "tokens": tokens,
        "dtype": str(dtype),
        "status": "ok" if rel < (2e-2 if dtype == torch.bfloat16 else 1e-5) else "FAILED: outputs differ",
        "summary": f"grouped {speedup:.1f}x the loop (fwd+bwd), rel. diff {rel:.1e}",
    }


def torchrun(nproc: int, argv: list[str], timeout: float) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}", *argv]
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
    }
    return subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)


def part_data_wait(args: argparse.Namespace, device: torch.device, out: Path) -> dict:
    """A 50-step training run on real shards, under torchrun: how long does the GPU wait for data?"""
    if not (args.corpus / "manifest.json").exists():
        return {"status": "skipped", "summary": f"no corpus at {args.corpus} (build one, or pass --corpus)"}
    run_dir = Path(tempfile.mkdtemp(prefix="gpu-check-run-", dir=out))
    steps = 6 if args.quick else 50
    flags = {
        "corpus": args.corpus,
        "run-dir": run_dir,
        "preset": "tiny" if args.quick else "base",
        "max-steps": steps,
        "batch-size": 2 if args.quick else args.batch,
        "block-size": 64 if args.quick else args.seq,
        "warmup-steps": 5,
        "eval-every": 0,
        "log-every": 2 if args.quick else 10,
        "checkpoint-every": 100000,
        "samples": "false",
        "tensorboard": "false",
        "plot": "false",
        "progress": "false",
        "resume": "false",
        "compile": str(args.compile).lower(),
        "device": device.type,
    }
    argv = ["-m", "training.train", *[str(s) for k, v in flags.items() for s in (f"--{k}", v)]]
    proc = torchrun(1, argv, timeout=args.timeout)
    if proc.returncode != 0:
        return {"status": f"FAILED (exit {proc.returncode})", "summary": proc.stderr.strip()[-300:]}
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    steady = [r for r in records[1:] if "data_wait_frac" in r] or records  # the first holds compilation
    wait = statistics.mean(r["data_wait_frac"] for r in steady)
    tps = statistics.mean(r["tokens_per_s"] for r in steady)
    mfus = [r["mfu"] for r in steady if "mfu" in r]
    u = statistics.mean(mfus) if mfus else None
    return {
        "data_wait_frac": wait,
        "tokens_per_s": round(tps),
        "mfu": u,
        "steps": steps,
        "status": "ok",
        "summary": f"data wait {wait:.1%} of step time; {tps:,.0f} tok/s, MFU "
        + ("unknown" if u is None else f"{u:.1%}"),
    }


def part_nccl(args: argparse.Namespace, device: torch.device) -> dict:
    backend = "nccl" if device.type == "cuda" else "gloo"
    argv = [str(Path(__file__).resolve()), "--dist-worker", "--device", device.type]
    proc = torchrun(1, argv, timeout=120)
    ok = proc.returncode == 0 and f"dist-worker ok {backend}" in proc.stdout
    return {
        "backend": backend,
        "status": "ok" if ok else f"FAILED (exit {proc.returncode})",
        "summary": f"torchrun 1 process, {backend}: "
        + ("init + all_reduce + barrier ok" if ok else proc.stderr[-300:]),
    }


def dist_worker(device_kind: str) -> None:
    """Run by torchrun (part_nccl): join the group, all_reduce, barrier, leave."""
    import torch.distributed as dist

    backend = "nccl" if device_kind == "cuda" else "gloo"
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = torch.device("cuda", local_rank) if device_kind == "cuda" else torch.device("cpu")
    if device.type == "cuda":
        torch.cuda.set_device(device)
    dist.init_process_group(backend=backend)
    t = torch.ones(4, device=device)
    dist.all_reduce(t)
    dist.barrier()
    assert t.sum().item() == 4 * dist.get_world_size()
    dist.destroy_process_group()
    print(f"dist-worker ok {backend}", flush=True)


def part_hf_export(args: argparse.Namespace, device: torch.device) -> dict:
    """Export (Llama; Qwen3-MoE with QK-norm), load with transformers on the device, compare logits in fp32."""
    import transformers

    from export.hf import export_model

    previous = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False  # compare fp32 with fp32
    worst, classes = 0.0, []
    try:
        size = "tiny" if args.quick else "small"
        for preset, overrides in ((size, {}), (f"{size}-moe", {"qk_norm": True})):
            torch.manual_seed(0)
            model = GPT(ModelConfig.preset(preset, **overrides)).to(device).eval()
            with torch.no_grad():  # norm gains start at 1: make them differ, so that a wrong mapping shows
                for name, param in model.named_parameters():
                    if name.endswith("norm.weight"):
                        param.uniform_(0.5, 1.5)
            with tempfile.TemporaryDirectory() as tmp:
                export_model(model, Path(tmp) / "hf")
                hf = transformers.AutoModelForCausalLM.from_pretrained(Path(tmp) / "hf", dtype=torch.float32)
                hf = hf.to(device).eval()
            idx = torch.randint(0, model.config.vocab_size, (2, 64), device=device)
            with torch.no_grad():
                worst = max(worst, (hf(idx).logits - model(idx).logits).abs().max().item())
            classes.append(type(hf).__name__)
    finally:
        torch.backends.cuda.matmul.allow_tf32 = previous
    return {
        "max_abs_diff": worst,
        "classes": classes,
        "status": "ok" if worst < 1e-3 else "FAILED: logits differ",
        "summary": f"{' + '.join(classes)}: max |logit diff| {worst:.1e}",
    }


# -----------------------------------------------------------------------------------------------


TARGETS = {
    "train/base": "MFU >= 45%",
    "train/base-moe": "MFU >= 35%",
    "moe_grouped": ">= 5x",
    "data_wait": "small",
    "hf_export": "< 1e-3",
}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    p.add_argument("--quick", action="store_true", help="tiny models and few steps (CPU smoke test)")
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--seq", type=int, default=1024)
    p.add_argument("--steps", type=int, default=15, help="timed training steps per preset")
    p.add_argument("--compile", action=argparse.BooleanOptionalAction, help="default: on with cuda")
    p.add_argument(
        "--bf16", action=argparse.BooleanOptionalAction, help="bf16 autocast; default: on with cuda"
    )
    p.add_argument("--corpus", type=Path, default=DEFAULT_CORPUS, help="corpus folder for the data_wait run")
    p.add_argument(
        "--out", type=Path, default=REPO / "data" / "gpu-check", help="folder for the JSON and runs"
    )
    p.add_argument("--parts", help="comma-separated subset of parts")
    p.add_argument("--timeout", type=float, default=300, help="seconds for the data_wait training run")
    p.add_argument("--dist-worker", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.dist_worker:
        dist_worker(args.device)
        return
    if args.device == "cuda" and not torch.cuda.is_available():
        sys.exit("gpu_check: torch sees no CUDA device (use --device cpu --quick for the CPU smoke test)")
    cuda = args.device == "cuda"
    args.compile = cuda if args.compile is None else args.compile
    args.bf16 = cuda if args.bf16 is None else args.bf16
    device = torch.device(args.device)
    if cuda:
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    args.out.mkdir(parents=True, exist_ok=True)
    peak = peak_flops(device)
    name = torch.cuda.get_device_name(device) if cuda else "CPU"
    print(
        f"torch {torch.__version__} on {name}; peak bf16 FLOP/s {f'{peak:.3g}' if peak else 'unknown'}",
        flush=True,
    )

    trains = ("tiny", "tiny-moe") if args.quick else ("base", "base-moe")
    parts: dict[str, Callable[[], dict]] = {
        **{f"train/{t}": (lambda t=t: part_train(t, args, device)) for t in trains},
        "adamw": lambda: part_adamw(args, device),
        "moe_grouped": lambda: part_moe_grouped(args, device),
        "data_wait": lambda: part_data_wait(args, device, args.out),
        "nccl": lambda: part_nccl(args, device),
        "hf_export": lambda: part_hf_export(args, device),
    }
    if args.parts:
        wanted = args.parts.split(",")
        parts = {k: v for k, v in parts.items() if k in wanted or k.split("/")[0] in wanted}
    report: dict = {"torch": torch.__version__, "device": name, "peak_bf16_flops": peak, "parts": {}}
    for key, fn in parts.items():
        t0 = time.perf_counter()
        print(f"-- {key} ...", flush=True)
        try:
            result = fn()
            result.setdefault("status", "ok")
        except Exception as e:  # noqa: BLE001 - one failing part must not hide the others
            traceback.print_exc()
            result = {"status": f"FAILED: {type(e).__name__}", "summary": str(e)[:300]}
        result["seconds"] = round(time.perf_counter() - t0, 1)
        report["parts"][key] = result
        print(f"   {result['status']}: {result.get('summary', '')} ({result['seconds']} s)", flush=True)
        if cuda:
            torch.cuda.empty_cache()

    json_path = args.out / "gpu_check.json"
    json_path.write_text(json.dumps(report, indent=2, default=str) + "\n")
    print(f"\n{'check':<18}{'status':<10}{'target':<14}result")
    for key, r in report["parts"].items():
        target = TARGETS.get(key.replace("tiny", "base"), "")
        print(f"{key:<18}{r['status'][:9]:<10}{target:<14}{r.get('summary', '')}")
    print(f"\nJSON: {json_path}")
    failed = [k for k, r in report["parts"].items() if r["status"].startswith("FAILED")]
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
