"""ptgpt's recommended recipe against a GPT-2-style baseline, at equal parameters and equal wall-clock.

    python bench/bench_recipe.py                       # 10 minutes of training each, real books
    python bench/bench_recipe.py --minutes 3 --threads 1

(a) The baseline is the classic nanoGPT recipe, written here: learned position embeddings, LayerNorm,
4x GELU MLP, fused QKV projection, tied embeddings, AdamW (0.9, 0.95), weight decay on every matrix.
(b) The recipe is training/model.py (RMSNorm, RoPE, SwiGLU) with the options below, its SwiGLU width
chosen so that both models have the same parameter count (to within 1%). With --moe total the
recipe is a Mixture of Experts with that same total count (the dense width shared out among the
experts), so fewer parameters are active per token: equal total, not equal active, parameters.

Both train on the same windows in the same order (two loaders with one seed), with the same CPU
threads, schedule shape (linear warmup, cosine to 10%, as a function of elapsed training time) and
wall-clock budget. Their steps are interleaved (a, b, a, b, ...) and each model's clock counts only
its own steps, so a burst of load from other processes falls on both alike. The validation figures
come from the same windows (the first --val-batches batches of the validation split).

Printed: a pure step-speed ratio (fwd + bwd + clip + optimizer on fixed tokens, interleaved, median),
then per model: parameters, steps, tokens/s, validation loss (nats/token) and bits per byte.

The corpus is built once from ../shared/gutenberg-pt/books with an 8k vocabulary, through the
`ptgpt` command line, and cached under data/ (git-ignored).
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from training.data import LoaderConfig, TokenWindowLoader  # noqa: E402
from training.evaluate import evaluate  # noqa: E402
from training.model import GPT, ModelConfig  # noqa: E402
from training.optim import build_optimizer  # noqa: E402

BOOKS = REPO.parent / "shared" / "gutenberg-pt" / "books"
CORPUS = REPO / "data" / "bench-recipe" / "corpus-8k"


# -----------------------------------------------------------------------------------------------
# (a) the baseline: a GPT-2 in the nanoGPT style


@dataclass
class Output:
    logits: torch.Tensor
    loss: torch.Tensor | None

    def total_loss(self) -> torch.Tensor:
        return self.loss


class GPT2Block(nn.Module):
    def __init__(self, n_embd: int, n_head: int):
        super().__init__()
        self.n_head = n_head
        self.ln_1 = nn.LayerNorm(n_embd)
        self.c_attn = nn.Linear(n_embd, 3 * n_embd, bias=False)
        self.attn_proj = nn.Linear(n_embd, n_embd, bias=False)
        self.ln_2 = nn.LayerNorm(n_embd)
        self.c_fc = nn.Linear(n_embd, 4 * n_embd, bias=False)
        self.mlp_proj = nn.Linear(4 * n_embd, n_embd, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, T, C = x.shape
        q, k, v = self.c_attn(self.ln_1(x)).split(C, dim=2)
        q, k, v = (t.view(B, T, self.n_head, C // self.n_head).transpose(1, 2) for t in (q, k, v))
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        x = x + self.attn_proj(y.transpose(1, 2).reshape(B, T, C))
        return x + self.mlp_proj(F.gelu(self.c_fc(self.ln_2(x))))


class GPT2(nn.Module):
    def __init__(self, vocab_size: int, block_size: int, n_layer: int, n_embd: int, n_head: int):
        super().__init__()
        self.wte = nn.Embedding(vocab_size, n_embd)
        self.wpe = nn.Embedding(block_size, n_embd)
        self.blocks = nn.ModuleList(GPT2Block(n_embd, n_head) for _ in range(n_layer))
        self.ln_f = nn.LayerNorm(n_embd)
        self.lm_head = nn.Linear(n_embd, vocab_size, bias=False)
        self.lm_head.weight = self.wte.weight
        for name, p in self.named_parameters():
            if name.endswith("proj.weight"):
                nn.init.normal_(p, std=0.02 / math.sqrt(2 * n_layer))
            elif p.dim() >= 2:
                nn.init.normal_(p, std=0.02)

    def forward(self, idx: torch.Tensor, targets: torch.Tensor | None = None) -> Output:
        pos = torch.arange(idx.shape[1], device=idx.device)
        x = self.wte(idx) + self.wpe(pos)
        for block in self.blocks:
            x = block(x)
        logits = self.lm_head(self.ln_f(x))
        loss = None
        if targets is not None:
            loss = F.cross_entropy(logits.view(-1, logits.size(-1)), targets.reshape(-1), ignore_index=-1)
        return Output(logits, loss)

    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())


def gpt2_optimizer(model: GPT2, lr: float, weight_decay: float) -> torch.optim.AdamW:
    """nanoGPT's groups: decay every matrix (embeddings included), not the LayerNorm parameters."""
    params = list(model.parameters())
    groups = [
        {"params": [p for p in params if p.dim() >= 2], "weight_decay": weight_decay},
        {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0},
    ]
    return torch.optim.AdamW(groups, lr=lr, betas=(0.9, 0.95), eps=1e-8)


# -----------------------------------------------------------------------------------------------
# (b) the recipe at the same parameter count


def recipe_config(args: argparse.Namespace, vocab: int, target_params: int) -> ModelConfig:
    """training/model.py at the bench's shape, the SwiGLU width (a multiple of 32) matching the baseline."""
    base = dict(
        vocab_size=vocab,
        max_seq_len=args.seq,
        n_layer=args.layers,
        n_embd=args.embd,
        n_head=args.heads,
        n_kv_head=args.kv_heads or args.heads,
        tie_embeddings=True,
        qk_norm=args.qk_norm,
    )
    per_hidden = 3 * args.embd * args.layers  # SwiGLU parameters per unit of hidden width
    without = _count(ModelConfig(**base, mlp_hidden=32)) - 32 * per_hidden
    hidden = max(32, round((target_params - without) / per_hidden / 32) * 32)
    if args.moe == "active":  # same active parameters: experts 1/top_k as wide (the *-moe presets' rule)
        moe = dict(n_experts=args.experts, top_k=args.top_k, expert_hidden=hidden // args.top_k)
        return ModelConfig(**base, mlp_hidden=hidden, **moe)
    if args.moe == "total":  # same total parameters: the dense width shared out among the experts
        router = args.embd * args.experts * args.layers
        width = (target_params - without - router) / (per_hidden * args.experts)
        moe = dict(n_experts=args.experts, top_k=args.top_k, expert_hidden=max(8, round(width / 8) * 8))
        return ModelConfig(**base, mlp_hidden=hidden, **moe)
    return ModelConfig(**base, mlp_hidden=hidden)


def fused_adamw(optimizer) -> bool:
    return any(group.get("fused") for group in optimizer.param_groups)


def _count(config: ModelConfig) -> int:
    with torch.device("meta"):
        return GPT(config).num_params()


# -----------------------------------------------------------------------------------------------
# Training at equal wall-clock


def lr_at(progress: float, lr: float, warmup_frac: float, min_ratio: float = 0.1) -> float:
    """Linear warmup over the first warmup_frac of the budget, then cosine down to lr * min_ratio."""
    if progress < warmup_frac:
        return lr * max(progress, 1e-3) / warmup_frac
    p = min(1.0, (progress - warmup_frac) / max(1e-9, 1 - warmup_frac))
    return lr * (min_ratio + 0.5 * (1 - min_ratio) * (1 + math.cos(math.pi * p)))


@dataclass
class Run:
    name: str
    model: nn.Module
    step_fn: object  # the module called in the step (the model, or its torch.compile wrapper)
    make_optimizer: object  # model -> optimizer
    lr: float
    loader: TokenWindowLoader
    clock: float = 0.0  # seconds spent in this model's own steps
    steps: int = 0
    step_times: list[float] = field(default_factory=list)
    losses: list[float] = field(default_factory=list)
    val_at_step: dict | None = None

    def __post_init__(self) -> None:
        self.optimizer = self.make_optimizer(self.model)

    def step(self, budget: float, warmup_frac: float) -> None:
        lr = lr_at(self.clock / budget, self.lr, warmup_frac)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        t0 = time.perf_counter()
        x, y = next(self.loader)
        loss = self.step_fn(x, y).total_loss()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), 1.0)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        dt = time.perf_counter() - t0
        self.clock += dt
        self.steps += 1
        self.step_times.append(dt)
        self.losses.append(loss.item())


def evaluate_run(run: Run, args: argparse.Namespace) -> dict:
    """Validation figures on the first args.val_batches batches: the same windows for every model."""
    return evaluate(run.model, args.corpus, "validation", args.seq, args.batch, args.val_batches, "cpu")


def pure_step_speed(runs: list[Run], batch: int, seq: int, vocab: int, n: int) -> dict[str, float]:
    """Median seconds of fwd + bwd + clip + optimizer on one fixed batch, the models interleaved.

    Runs on copies of the models, so the training below starts from the same initial weights."""
    import copy

    idx = torch.randint(0, vocab, (batch, seq + 1), generator=torch.Generator().manual_seed(0))
    x, y = idx[:, :-1], idx[:, 1:]
    fns = {}
    for run in runs:
        model = copy.deepcopy(run.model)
        opt = run.make_optimizer(model)
        call = torch.compile(model) if run.step_fn is not run.model else model

        def step(model=model, opt=opt, call=call) -> float:
            t0 = time.perf_counter()
            call(x, y).total_loss().backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            opt.zero_grad(set_to_none=True)
            return time.perf_counter() - t0

        fns[run.name] = step
    for step in fns.values():  # warm-up (and compilation)
        step()
        step()
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(n):
        for name, step in fns.items():
            times[name].append(step())
    return {name: statistics.median(t) for name, t in times.items()}


# -----------------------------------------------------------------------------------------------


def build_corpus(corpus: Path, books: Path) -> None:
    """ptgpt scrape + ptgpt corpus build, once; a finished corpus (manifest.json) is reused."""
    if (corpus / "manifest.json").exists():
        return
    if not books.is_dir():
        sys.exit(f"no books at {books}: pass --books or --corpus with an existing corpus folder")
    ptgpt = Path(sys.executable).with_name("ptgpt")
    raw = corpus.parent / "raw"
    print(f"building the corpus in {corpus} (once; minutes)", flush=True)
    for cmd in (
        [ptgpt, "scrape", "--source", books, "--out", raw, "--rate", "0", "--quiet"],
        [ptgpt, "corpus", "build", "--raw", raw, "--out", corpus, "--vocab-size", "8192", "--quiet"],
    ):
        subprocess.run([str(c) for c in cmd], check=True, cwd=REPO)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--minutes", type=float, default=10.0, help="training wall-clock budget per model")
    p.add_argument("--corpus", type=Path, default=CORPUS, help="corpus folder (built here if missing)")
    p.add_argument("--books", type=Path, default=BOOKS, help="folder of <id>.txt books to build it from")
    p.add_argument("--threads", type=int, help="torch CPU threads (default: torch's)")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--seq", type=int, default=256)
    p.add_argument("--layers", type=int, default=6)
    p.add_argument("--embd", type=int, default=384)
    p.add_argument("--heads", type=int, default=6)
    p.add_argument("--kv-heads", type=int, help="recipe's key/value heads (default: --heads)")
    p.add_argument("--lr", type=float, default=1e-3, help="peak learning rate of both")
    p.add_argument("--warmup-frac", type=float, default=0.05, help="warmup as a fraction of the budget")
    p.add_argument("--optimizer", default="adamw", choices=["adamw", "muon"], help="the recipe's optimizer")
    p.add_argument("--qk-norm", action=argparse.BooleanOptionalAction, default=False)
    p.add_argument(
        "--compile", action=argparse.BooleanOptionalAction, default=False, help="compile the recipe"
    )
    p.add_argument(
        "--fused",
        action=argparse.BooleanOptionalAction,
        help="recipe: fused AdamW (default: the trainer's, fused wherever torch has the kernel)",
    )
    p.add_argument(
        "--moe",
        nargs="?",
        const="active",
        choices=["active", "total"],
        help="recipe: MoE at the baseline's active parameters (experts 1/top-k as wide as the dense "
        "SwiGLU; --moe alone) or its total parameters (the dense width shared out among the experts)",
    )
    p.add_argument("--experts", type=int, default=8, help="with --moe: number of experts")
    p.add_argument("--top-k", type=int, default=2, help="with --moe: experts per token")
    p.add_argument(
        "--baseline",
        default="gpt2",
        choices=["gpt2", "dense"],
        help="gpt2: the nanoGPT-style model; dense: training/model.py dense, AdamW, eager (for --moe etc.)",
    )
    p.add_argument("--eval-at-step", type=int, help="also evaluate each model when it reaches this step")
    p.add_argument(
        "--speed-steps", type=int, default=6, help="interleaved steps per model for the speed ratio"
    )
    p.add_argument("--val-batches", type=int, default=50, help="validation batches (same windows for both)")
    p.add_argument("--seed", type=int, default=1337)
    p.add_argument("--json", type=Path, help="also write the figures here")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    build_corpus(args.corpus, args.books)
    from training.data import CorpusInfo

    vocab = CorpusInfo.from_dir(args.corpus).vocab_size
    torch.manual_seed(args.seed)
    gpt2 = GPT2(vocab, args.seq, args.layers, args.embd, args.heads)
    torch.manual_seed(args.seed)
    config = recipe_config(args, vocab, gpt2.num_params())
    recipe = GPT(config)
    baseline_optimizer = lambda m: gpt2_optimizer(m, args.lr, 0.1)  # noqa: E731
    if args.baseline == "dense":
        torch.manual_seed(args.seed)
        gpt2 = GPT(replace(config, n_experts=0, qk_norm=False))
        baseline_optimizer = lambda m: build_optimizer(m, "adamw", lr=args.lr)  # noqa: E731

    def loader() -> TokenWindowLoader:
        return TokenWindowLoader(args.corpus, LoaderConfig(args.seq, args.batch, seed=args.seed))

    def recipe_optimizer(model: GPT):
        return build_optimizer(
            model, args.optimizer, lr=args.lr, weight_decay=0.1, betas=(0.9, 0.95), fused=args.fused
        )

    runs = [
        Run("baseline", gpt2, gpt2, baseline_optimizer, args.lr, loader()),
        Run(
            "recipe",
            recipe,
            torch.compile(recipe) if args.compile else recipe,
            recipe_optimizer,
            args.lr,
            loader(),
        ),
    ]
    recipe_name = (
        f"{args.optimizer}{' (fused AdamW)' if fused_adamw(runs[1].optimizer) else ''}"
        f"{', qk-norm' if args.qk_norm else ''}"
        f"{', compiled' if args.compile else ''}, SwiGLU {config.mlp_hidden}, kv heads {config.n_kv_head}"
        + (
            f", MoE {config.n_experts}x{config.expert_hidden} top-{config.top_k} (equal {args.moe} params)"
            if config.n_experts
            else ""
        )
    )
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads; shape {args.layers}L x {args.embd} x "
        f"{args.heads}h, T={args.seq}, batch {args.batch}, vocab {vocab}; baseline: {args.baseline}; recipe: {recipe_name}",
        flush=True,
    )
    print(
        f"params: baseline {gpt2.num_params():,}, recipe {recipe.num_params():,} "
        f"({recipe.num_params(active=True):,} active per token)",
        flush=True,
    )

    speed = pure_step_speed(runs, args.batch, args.seq, vocab, args.speed_steps)
    tokens = args.batch * args.seq
    base_s, rec_s = speed["baseline"], speed["recipe"]
    print(
        f"pure step speed (interleaved, median of {args.speed_steps}): baseline {tokens / base_s:,.0f} tok/s, "
        f"recipe {tokens / rec_s:,.0f} tok/s, ratio {base_s / rec_s:.2f}x",
        flush=True,
    )

    budget = args.minutes * 60
    t_start = time.perf_counter()
    while any(r.clock < budget for r in runs):
        for run in runs:
            if run.clock < budget:
                run.step(budget, args.warmup_frac)
                if run.steps == args.eval_at_step:
                    run.val_at_step = evaluate_run(run, args)
        done = min(r.clock for r in runs) / budget
        if runs[0].steps % 10 == 0:
            print(
                f"  {done:4.0%} "
                + "  ".join(f"{r.name} step {r.steps} loss {r.losses[-1]:.3f}" for r in runs),
                flush=True,
            )
    print(f"trained in {time.perf_counter() - t_start:.0f} s of wall-clock for both", flush=True)

    results = {"args": {k: str(v) for k, v in vars(args).items()}, "pure_step_s": speed, "models": {}}
    print(
        f"\n{'model':<16}{'params':>12}{'steps':>8}{'tok/s':>10}{'med step s':>12}{'val loss':>10}{'val bpb':>9}"
    )
    for run in runs:
        val = evaluate_run(run, args)
        tps = run.steps * tokens / run.clock
        med = statistics.median(run.step_times)
        n = sum(p.numel() for p in run.model.parameters())
        print(
            f"{run.name:<16}{n:>12,}{run.steps:>8}{tps:>10,.0f}{med:>12.3f}{val['loss']:>10.4f}{val['bpb']:>9.4f}",
            flush=True,
        )
        results["models"][run.name] = {
            "params": n,
            "steps": run.steps,
            "tokens_per_s": tps,
            "median_step_s": med,
            "val_loss": val["loss"],
            "val_bpb": val["bpb"],
            "val_tokens": val.get("tokens"),
            "val_at_step": run.val_at_step,
        }
    a, b = results["models"]["baseline"], results["models"]["recipe"]
    if a["val_at_step"] and b["val_at_step"]:
        print(
            f"at step {args.eval_at_step} (equal steps): val bpb recipe {b['val_at_step']['bpb']:.4f}, "
            f"baseline {a['val_at_step']['bpb']:.4f}"
        )
    print(
        f"\nrecipe vs baseline: step speed {base_s / rec_s:.2f}x (pure), "
        f"{b['tokens_per_s'] / a['tokens_per_s']:.2f}x (training, interleaved); "
        f"val bpb {b['val_bpb']:.4f} vs {a['val_bpb']:.4f} ({b['val_bpb'] - a['val_bpb']:+.4f})"
    )
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
