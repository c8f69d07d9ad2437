"""The decoder: a pre-norm GPT with RoPE, grouped-query attention and a Mixture-of-Experts feed-forward.

One file, read top to bottom:

    ModelConfig (+ presets) -> RMSNorm -> RoPE -> Attention -> SwiGLU -> MoE -> Block -> GPT

(generation, sampling and streaming live in training/engine.py)

Architecture choices follow Llama / Mixtral exactly (RMSNorm with a weight, "rotate half" RoPE, no
biases, SwiGLU, softmax-then-top-k router with renormalised weights) so that a checkpoint can be
exported to `LlamaForCausalLM` / `MixtralForCausalLM` with equal logits (see export/hf.py).

The MoE layer is dropless: every token goes to its top-k experts, no capacity factor. Tokens are
sorted by expert and all experts run as one grouped matrix multiply (`F.grouped_mm`) where the
device and dtype allow it; a per-expert loop is the always-available fallback and the reference.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields, replace

import torch
import torch.nn as nn
import torch.nn.functional as F

IGNORE_INDEX = -1  # targets equal to this are left out of the cross-entropy


# -----------------------------------------------------------------------------------------------
# Config


MLPS = ("swiglu", "relu2")  # the dense feed-forwards (ModelConfig.mlp)


@dataclass
class ModelConfig:
    """Everything that defines the network's shape. Serialised as JSON next to the weights."""

    vocab_size: int = 32000  # must be >= the tokenizer's vocabulary
    max_seq_len: int = 1024  # longest sequence (prompt + generated) the RoPE table covers
    n_layer: int = 12
    n_embd: int = 768
    n_head: int = 12  # query heads; head_dim = n_embd // n_head
    n_kv_head: int = 4  # key/value heads (GQA); must divide n_head, == n_head is plain multi-head attention
    mlp_hidden: int = 2048  # hidden size of the dense feed-forward (SwiGLU: ~8/3 * n_embd)
    # The dense feed-forward: "swiglu" (Llama's, 3 matrices) or "relu2" (down(relu(up(x))^2), 2 matrices,
    # nanochat's; the same parameters at 1.5x the hidden size). Experts are always SwiGLU.
    mlp: str = "swiglu"
    # Mixture of Experts. n_experts == 0: every layer is dense. n_experts >= 1: layers with
    # (layer_index + 1) % moe_every == 0 use an MoE of n_experts SwiGLU experts, top_k per token.
    n_experts: int = 0
    top_k: int = 2
    expert_hidden: int = 1024  # SwiGLU hidden size of one expert
    moe_every: int = 1  # 1: MoE in every layer (the only layout Mixtral can express), 2: every other...
    moe_impl: str = "auto"  # "auto" (grouped matmul where supported, else loop), "grouped", "loop"
    aux_loss_coef: float = 0.01  # alpha of the Switch load-balancing loss, per MoE layer
    z_loss_coef: float = 0.001  # coefficient of the router z-loss, per MoE layer
    qk_norm: bool = False  # RMSNorm (with a gain) on each head's queries and keys before RoPE, as Qwen3
    rope_theta: float = 10000.0
    norm_eps: float = 1e-5
    tie_embeddings: bool = False  # share the token embedding with the output projection
    init_std: float = 0.02  # GPT-2 init; residual output projections get init_std / sqrt(2 * n_layer)

    def __post_init__(self) -> None:
        def need(ok: bool, msg: str) -> None:
            if not ok:
                raise ValueError(f"ModelConfig: {msg}")

        for name in (
            "vocab_size",
            "max_seq_len",
            "n_layer",
            "n_embd",
            "n_head",
            "n_kv_head",
            "mlp_hidden",
            "expert_hidden",
            "moe_every",
            "top_k",
        ):
            need(getattr(self, name) >= 1, f"{name} must be >= 1, got {getattr(self, name)}")
        need(self.n_embd % self.n_head == 0, f"n_embd={self.n_embd} is not divisible by n_head={self.n_head}")
        need((self.n_embd // self.n_head) % 2 == 0, "head_dim (n_embd // n_head) must be even for RoPE")
        need(
            self.n_head % self.n_kv_head == 0, f"n_kv_head={self.n_kv_head} must divide n_head={self.n_head}"
        )
        need(self.mlp in MLPS, f"mlp must be one of {'|'.join(MLPS)}, got {self.mlp!r}")
        need(self.n_experts >= 0, "n_experts must be >= 0 (0 = dense)")
        need(
            self.n_experts == 0 or self.top_k <= self.n_experts,
            f"top_k={self.top_k} is larger than n_experts={self.n_experts}",
        )
        need(
            self.moe_impl in ("auto", "grouped", "loop"),
            f"moe_impl must be auto|grouped|loop, got {self.moe_impl!r}",
        )

    @property
    def head_dim(self) -> int:
        return self.n_embd // self.n_head

    def is_moe_layer(self, layer: int) -> bool:
        return self.n_experts > 0 and (layer + 1) % self.moe_every == 0

    @property
    def n_moe_layers(self) -> int:
        return sum(self.is_moe_layer(i) for i in range(self.n_layer))

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> ModelConfig:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"unknown ModelConfig keys: {unknown}")
        return cls(**d)

    @classmethod
    def preset(cls, name: str, **overrides) -> ModelConfig:
        """A named preset (see PRESETS) with some fields replaced, e.g. preset("small", vocab_size=8000)."""
        if name not in PRESETS:
            raise ValueError(f"unknown preset {name!r}; choose from {sorted(PRESETS)}")
        return replace(PRESETS[name], **overrides)


_TINY = ModelConfig(
    vocab_size=512, max_seq_len=128, n_layer=2, n_embd=64, n_head=4, n_kv_head=2, mlp_hidden=128
)
_SMALL = ModelConfig(
    vocab_size=8000, max_seq_len=512, n_layer=6, n_embd=512, n_head=8, n_kv_head=4, mlp_hidden=1408
)
_BASE = ModelConfig(vocab_size=32000, max_seq_len=1024, n_layer=12, n_embd=768, n_head=12, n_kv_head=4)

PRESETS: dict[str, ModelConfig] = {
    # CI: seconds on a CPU.
    "tiny": _TINY,
    "tiny-moe": replace(_TINY, n_experts=4, top_k=2, expert_hidden=64),
    # ~26M parameters with an 8k vocabulary: trainable on a CPU in hours. The MoE variant has the same
    # active parameters (8 half-size experts, top-2) and ~65M in total.
    "small": _SMALL,
    "small-moe": replace(_SMALL, n_experts=8, top_k=2, expert_hidden=704),
    # ~125M parameters (32k vocabulary, untied): one H100. The MoE variant: 8 half-size experts, top-2,
    # so ~125M active (the same FLOPs per token) and ~295M in total.
    "base": _BASE,
    "base-moe": replace(_BASE, n_experts=8, top_k=2, expert_hidden=1024),
}


# -----------------------------------------------------------------------------------------------
# Building blocks


class RMSNorm(nn.Module):
    """RMSNorm with a learned gain, normalised in fp32 (as Llama does, so exported logits match).

    fp32 input takes one `F.rms_norm` call; half-precision input is normalised in fp32 and cast back
    before the gain, Llama's order of operations, and stays in its dtype (q/k norms under autocast).
    """

    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dtype == torch.float32:
            return F.rms_norm(x, (x.shape[-1],), self.weight, self.eps)
        return F.rms_norm(x.float(), (x.shape[-1],), eps=self.eps).to(x.dtype) * self.weight.to(x.dtype)


def rope_tables(seq_len: int, head_dim: int, theta: float) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin of shape (seq_len, head_dim) for the "rotate half" RoPE layout used by Llama.

    Frequencies are duplicated across the two halves: dimension i and i + head_dim/2 rotate together.
    """
    inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.int64).float() / head_dim))
    angles = torch.arange(seq_len, dtype=torch.int64).float()[:, None] * inv_freq[None, :]
    angles = torch.cat([angles, angles], dim=-1)
    return angles.cos(), angles.sin()


def _rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """[x1, x2] -> [x1 cos - x2 sin, x2 cos + x1 sin] on the two halves of the last dimension."""
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat([x1 * cos - x2 * sin, x2 * cos + x1 * sin], dim=-1)


class _RoPE(torch.autograd.Function):
    """RoPE is a rotation, so its backward is the rotation by -angle. Written out, forward and backward
    are a few whole-tensor ops; autograd through slicing and `cat` would allocate zeros and scatter."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(cos, sin)
        return _rotate(x, cos, sin)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None, None]:
        cos, sin = ctx.saved_tensors
        return _rotate(grad, cos, -sin), None, None


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x: (B, heads, T, head_dim); cos/sin: (T, head_dim) as from rope_tables, in x's dtype."""
    half = x.shape[-1] // 2
    cos, sin = cos[..., :half].to(x.dtype), sin[..., :half].to(x.dtype)  # the halves are equal
    if torch.is_grad_enabled() and x.requires_grad:
        return _RoPE.apply(x, cos, sin)
    return _rotate(x, cos, sin)


def _sdpa_has_enable_gqa() -> bool:
    """`enable_gqa` arrived in torch 2.5; older versions repeat the key/value heads instead."""
    q, kv = torch.zeros(1, 2, 1, 2), torch.zeros(1, 1, 1, 2)
    try:
        F.scaled_dot_product_attention(q, kv, kv, enable_gqa=True)
    except TypeError:
        return False
    return True


SDPA_HAS_GQA = _sdpa_has_enable_gqa()


class KVCache:
    """Preallocated keys and values for incremental decoding: (n_layer, B, n_kv_head, max_len, head_dim)."""

    def __init__(
        self, config: ModelConfig, batch_size: int, max_len: int, device: torch.device, dtype: torch.dtype
    ):
        shape = (config.n_layer, batch_size, config.n_kv_head, max_len, config.head_dim)
        self.k = torch.zeros(shape, device=device, dtype=dtype)
        self.v = torch.zeros(shape, device=device, dtype=dtype)
        self.pos = 0  # number of positions already stored
        self.max_len = max_len
        # (B, max_len), False at the left padding of a batch of prompts (training/engine.py:decode_batch):
        # no query attends to those keys. None: every position is real.
        self.key_mask: torch.Tensor | None = None

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Store the new positions of one layer; return all keys/values so far for that layer."""
        end = self.pos + k.shape[2]
        self.k[layer, :, :, self.pos : end] = k
        self.v[layer, :, :, self.pos : end] = v
        return self.k[layer, :, :, :end], self.v[layer, :, :, :end]


class Attention(nn.Module):
    """Causal grouped-query self-attention with RoPE, through F.scaled_dot_product_attention."""

    def __init__(self, config: ModelConfig, layer: int):
        super().__init__()
        self.layer = layer
        self.n_head, self.n_kv_head, self.head_dim = config.n_head, config.n_kv_head, config.head_dim
        self.q_proj = nn.Linear(config.n_embd, config.n_head * self.head_dim, bias=False)
        self.k_proj = nn.Linear(config.n_embd, config.n_kv_head * self.head_dim, bias=False)
        self.v_proj = nn.Linear(config.n_embd, config.n_kv_head * self.head_dim, bias=False)
        self.o_proj = nn.Linear(config.n_head * self.head_dim, config.n_embd, bias=False)
        if config.qk_norm:
            self.q_norm = RMSNorm(self.head_dim, config.norm_eps)
            self.k_norm = RMSNorm(self.head_dim, config.norm_eps)
        self.qk_norm = config.qk_norm

    def forward(
        self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, kv_cache: KVCache | None = None
    ) -> torch.Tensor:
        B, T, _ = x.shape
        q = self.q_proj(x).view(B, T, self.n_head, self.head_dim)
        k = self.k_proj(x).view(B, T, self.n_kv_head, self.head_dim)
        if self.qk_norm:
            q, k = self.q_norm(q), self.k_norm(k)
        q, k = q.transpose(1, 2), k.transpose(1, 2)
        v = self.v_proj(x).view(B, T, self.n_kv_head, self.head_dim).transpose(1, 2)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        if kv_cache is not None:
            k, v = kv_cache.update(self.layer, k, v)
        Tq, Tk = q.shape[2], k.shape[2]
        # SDPA's is_causal aligns the mask top-left, which is only right when queries and keys start
        # together. One new query sees every cached key; a chunk after a cache needs a shifted mask.
        mask, causal = None, Tq == Tk
        if Tq != Tk and Tq > 1:
            mask = torch.ones(Tq, Tk, dtype=torch.bool, device=x.device).tril(diagonal=Tk - Tq)
        if kv_cache is not None and kv_cache.key_mask is not None:
            # Left padding: keys at pads are hidden, except from the pad query itself (a query that sees
            # nothing gives NaN, which the zero weights of later queries would not cancel).
            seen = torch.ones(Tq, Tk, dtype=torch.bool, device=x.device).tril(diagonal=Tk - Tq)
            itself = seen & ~seen.tril(diagonal=Tk - Tq - 1)
            mask, causal = (seen & kv_cache.key_mask[:, None, None, :Tk]) | itself, False
        gqa = {}
        if self.n_kv_head != self.n_head:
            # Only the flash kernels (half precision, no explicit mask) read shared key/value heads
            # natively; elsewhere enable_gqa falls back to the slow unfused math kernel, so repeat them.
            if SDPA_HAS_GQA and mask is None and q.dtype in (torch.bfloat16, torch.float16):
                gqa = {"enable_gqa": True}
            else:
                k = k.repeat_interleave(self.n_head // self.n_kv_head, dim=1)
                v = v.repeat_interleave(self.n_head // self.n_kv_head, dim=1)
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=causal, **gqa)
        return self.o_proj(y.transpose(1, 2).reshape(B, T, self.n_head * self.head_dim))


class SwiGLU(nn.Module):
    """The dense feed-forward: down(silu(gate(x)) * up(x)), Llama names."""

    def __init__(self, n_embd: int, hidden: int):
        super().__init__()
        self.gate_proj = nn.Linear(n_embd, hidden, bias=False)
        self.up_proj = nn.Linear(n_embd, hidden, bias=False)
        self.down_proj = nn.Linear(hidden, n_embd, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class ReLU2(nn.Module):
    """The dense feed-forward without a gate: down(relu(up(x))^2) (Primer, So et al. 2021; nanochat)."""

    def __init__(self, n_embd: int, hidden: int):
        super().__init__()
        self.up_proj = nn.Linear(n_embd, hidden, bias=False)
        self.down_proj = nn.Linear(hidden, n_embd, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(F.relu(self.up_proj(x)).square())


# -----------------------------------------------------------------------------------------------
# Mixture of Experts

_GROUPED_MM = getattr(F, "grouped_mm", None) or getattr(torch, "_grouped_mm", None)


@torch.compiler.assume_constant_result
def _cuda_capability(index: int) -> tuple[int, int]:
    return torch.cuda.get_device_capability(index)


def grouped_mm_supported(x: torch.Tensor, n_embd: int, hidden: int) -> bool:
    """Whether F.grouped_mm runs for these inputs; otherwise the MoE falls back to the expert loop.

    CPU: fp32 and bf16 (forward and backward checked against the loop in tests). CUDA: bf16 on
    Hopper or newer, with rows 16-byte aligned (sizes multiples of 8), which is what the kernel needs.
    """
    if _GROUPED_MM is None:
        return False
    if x.device.type == "cpu":
        return x.dtype in (torch.float32, torch.bfloat16)
    if x.device.type == "cuda":
        aligned = n_embd % 8 == 0 and hidden % 8 == 0
        return x.dtype == torch.bfloat16 and aligned and _cuda_capability(x.device.index or 0) >= (9, 0)
    return False


def _grouped_mm(a: torch.Tensor, b: torch.Tensor, offs: torch.Tensor) -> torch.Tensor:
    return _GROUPED_MM(a, b, offs=offs)


# torch.compile's meta kernel for grouped_mm only accepts bf16; fp32 calls run eagerly (a graph break).
_grouped_mm_eager = torch.compiler.disable(_grouped_mm)


class MoE(nn.Module):
    """Dropless top-k Mixture of SwiGLU experts (Mixtral semantics).

    Router: fp32 softmax over all experts, keep the top_k, renormalise their weights to sum to 1.
    Expert weights are stacked, laid out (expert, in, out) for the grouped matmul:
    w_in[e] = [gate | up] of shape (n_embd, 2 * hidden), w_out[e] of shape (hidden, n_embd).
    """

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.n_experts, self.top_k, self.hidden = config.n_experts, config.top_k, config.expert_hidden
        self.n_embd, self.impl = config.n_embd, config.moe_impl
        self.aux_loss_coef, self.z_loss_coef = config.aux_loss_coef, config.z_loss_coef
        self.router = nn.Linear(config.n_embd, config.n_experts, bias=False)
        self.w_in = nn.Parameter(torch.empty(config.n_experts, config.n_embd, 2 * config.expert_hidden))
        self.w_out = nn.Parameter(torch.empty(config.n_experts, config.expert_hidden, config.n_embd))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        B, T, C = x.shape
        x = x.reshape(B * T, C)
        # Router in fp32, even under autocast: small, and the softmax/top-k decisions are sensitive.
        with torch.autocast(device_type=x.device.type, enabled=False):
            logits = F.linear(x.float(), self.router.weight.float())  # (N, E)
        probs = logits.softmax(dim=-1)
        top_w, top_i = probs.topk(self.top_k, dim=-1)  # (N, k)
        top_w = top_w / top_w.sum(dim=-1, keepdim=True)
        # Slots per expert, computed on the device (no host sync): also the grouped matmul's offsets.
        flat = top_i.flatten()
        counts = torch.zeros(self.n_experts, dtype=torch.int64, device=x.device)
        counts = counts.scatter_add(0, flat, torch.ones_like(flat))

        # Under autocast, run the experts in the autocast dtype (grouped_mm is not on autocast's lists).
        dtype = (
            torch.get_autocast_dtype(x.device.type) if torch.is_autocast_enabled(x.device.type) else x.dtype
        )
        xe, w_in, w_out = x.to(dtype), self.w_in.to(dtype), self.w_out.to(dtype)
        impl = self.impl
        if impl == "auto":
            impl = "grouped" if grouped_mm_supported(xe, C, self.hidden) else "loop"
        if impl == "grouped":
            out = self.experts_grouped(xe, top_w, top_i, counts, w_in, w_out)
        else:
            out = self.experts_loop(xe, top_w, top_i, w_in, w_out)

        load = counts.float() / flat.numel()  # f_i: fraction of routed slots per expert
        aux = {
            # Switch: alpha * E * sum_i f_i * P_i; f is not differentiable, P (mean probability) is.
            "load_balance_loss": self.aux_loss_coef * self.n_experts * (load * probs.mean(dim=0)).sum(),
            "z_loss": self.z_loss_coef * torch.logsumexp(logits, dim=-1).square().mean(),
            "expert_load": load.detach(),
            "router_entropy": -(probs * F.log_softmax(logits, dim=-1)).sum(-1).mean().detach(),
        }
        return out.to(x.dtype).view(B, T, C), aux

    def _expert_ffn(self, x: torch.Tensor, w_in: torch.Tensor, w_out: torch.Tensor) -> torch.Tensor:
        gate, up = (x @ w_in).chunk(2, dim=-1)
        return (F.silu(gate) * up) @ w_out

    def experts_loop(
        self,
        x: torch.Tensor,
        top_w: torch.Tensor,
        top_i: torch.Tensor,
        w_in: torch.Tensor,
        w_out: torch.Tensor,
    ) -> torch.Tensor:
        """Reference path: one matmul pair per expert (a host sync each). Always available.

        x: (N, C) tokens; top_w, top_i: (N, k) routing weights and expert ids; w_in, w_out: stacked weights.
        """
        out = torch.zeros_like(x)
        for e in range(self.n_experts):
            token, slot = torch.where(top_i == e)
            if token.numel() == 0:
                continue
            y = self._expert_ffn(x[token], w_in[e], w_out[e])
            out.index_add_(0, token, y * top_w[token, slot, None].to(y.dtype))
        return out

    def experts_grouped(
        self,
        x: torch.Tensor,
        top_w: torch.Tensor,
        top_i: torch.Tensor,
        counts: torch.Tensor,
        w_in: torch.Tensor,
        w_out: torch.Tensor,
    ) -> torch.Tensor:
        """Fast path: sort the N*k (token, expert) slots by expert, run all experts as one grouped matmul.

        Same arguments as experts_loop, plus counts: (E,) slots per expert. Shapes stay static and
        nothing waits on the device, so it compiles into one graph (in bf16) and needs no host sync.
        """
        N, k = top_i.shape
        order = top_i.flatten().argsort(stable=True)  # slot ids, grouped by expert
        offs = counts.cumsum(0).to(torch.int32)  # cumulative group ends, as grouped_mm wants
        mm = _grouped_mm if x.dtype == torch.bfloat16 else _grouped_mm_eager
        h = mm(x[order // k], w_in, offs)  # (N*k, 2*hidden)
        gate, up = h.chunk(2, dim=-1)
        y = mm(F.silu(gate) * up, w_out, offs)  # (N*k, C), in sorted order
        y = torch.index_copy(torch.empty_like(y), 0, order, y)  # back to (token, slot) order
        return (y.view(N, k, -1) * top_w.unsqueeze(-1).to(y.dtype)).sum(dim=1)


# -----------------------------------------------------------------------------------------------
# The model


class Block(nn.Module):
    def __init__(self, config: ModelConfig, layer: int):
        super().__init__()
        self.attn_norm = RMSNorm(config.n_embd, config.norm_eps)
        self.attn = Attention(config, layer)
        self.mlp_norm = RMSNorm(config.n_embd, config.norm_eps)
        if config.is_moe_layer(layer):
            self.mlp = MoE(config)
        else:
            dense = ReLU2 if config.mlp == "relu2" else SwiGLU
            self.mlp = dense(config.n_embd, config.mlp_hidden)

    def forward(
        self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, kv_cache: KVCache | None = None
    ) -> tuple[torch.Tensor, dict | None]:
        x = x + self.attn(self.attn_norm(x), cos, sin, kv_cache)
        if isinstance(self.mlp, MoE):
            h, aux = self.mlp(self.mlp_norm(x))
            return x + h, aux
        return x + self.mlp(self.mlp_norm(x)), None


@dataclass
class ModelOutput:
    logits: torch.Tensor  # (B, T, vocab_size)
    loss: torch.Tensor | None  # next-token cross-entropy (None without targets)
    aux_loss: torch.Tensor  # sum over MoE layers of load-balancing + z-loss (0 for a dense model)
    # Per MoE layer, detached, for logging: expert_load (L, E), router_entropy (L,),
    # load_balance_loss (L,), z_loss (L,). Empty for a dense model.
    stats: dict[str, torch.Tensor] = field(default_factory=dict)

    def total_loss(self) -> torch.Tensor:
        """What to call backward() on: cross-entropy plus the MoE auxiliary losses."""
        if self.loss is None:
            raise ValueError("total_loss() needs targets passed to forward()")
        return self.loss + self.aux_loss


class GPT(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config
        self.tok_emb = nn.Embedding(config.vocab_size, config.n_embd)
        self.blocks = nn.ModuleList(Block(config, i) for i in range(config.n_layer))
        self.norm = RMSNorm(config.n_embd, config.norm_eps)
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        if config.tie_embeddings:
            self.lm_head.weight = self.tok_emb.weight
        cos, sin = rope_tables(config.max_seq_len, config.head_dim, config.rope_theta)
        self.register_buffer("rope_cos", cos, persistent=False)
        self.register_buffer("rope_sin", sin, persistent=False)
        self.init_weights()

    @torch.no_grad()
    def init_weights(self) -> None:
        """GPT-2 init: N(0, std) everywhere, residual output projections scaled by 1/sqrt(2 * n_layer)."""
        std = self.config.init_std
        residual_std = std / math.sqrt(2 * self.config.n_layer)
        for name, p in self.named_parameters():
            if name.endswith("norm.weight"):
                nn.init.ones_(p)
            elif name.endswith(("o_proj.weight", "down_proj.weight", "w_out")):
                nn.init.normal_(p, mean=0.0, std=residual_std)
            else:
                nn.init.normal_(p, mean=0.0, std=std)

    def forward(
        self, idx: torch.Tensor, targets: torch.Tensor | None = None, kv_cache: KVCache | None = None
    ) -> ModelOutput:
        """idx, targets: (B, T) token ids; targets == IGNORE_INDEX are not scored.

        With a kv_cache, idx continues the cached sequence (positions start at kv_cache.pos).
        """
        B, T = idx.shape
        start = kv_cache.pos if kv_cache is not None else 0
        if start + T > self.config.max_seq_len:
            raise ValueError(f"sequence of {start + T} tokens exceeds max_seq_len={self.config.max_seq_len}")
        x = self.tok_emb(idx)
        # RoPE tables cast once per forward to the dtype q and k have (autocast's, else the weights')
        dtype = (
            torch.get_autocast_dtype(idx.device.type)
            if torch.is_autocast_enabled(idx.device.type)
            else x.dtype
        )
        cos = self.rope_cos[start : start + T].to(dtype)
        sin = self.rope_sin[start : start + T].to(dtype)
        moe_aux = []
        for block in self.blocks:
            x, aux = block(x, cos, sin, kv_cache)
            if aux is not None:
                moe_aux.append(aux)
        logits = self.lm_head(self.norm(x))
        if kv_cache is not None:
            kv_cache.pos += T

        loss = None
        if targets is not None:
            loss = F.cross_entropy(
                logits.float().view(-1, logits.size(-1)), targets.reshape(-1), ignore_index=IGNORE_INDEX
            )
        aux_loss = logits.new_zeros((), dtype=torch.float32)
        stats = {}
        if moe_aux:
            aux_loss = sum(a["load_balance_loss"] + a["z_loss"] for a in moe_aux)
            stats = {
                key: torch.stack([a[key].detach() for a in moe_aux])
                for key in ("expert_load", "router_entropy", "load_balance_loss", "z_loss")
            }
        return ModelOutput(logits=logits, loss=loss, aux_loss=aux_loss, stats=stats)

    # -- accounting ------------------------------------------------------------------------------

    def num_params(self, active: bool = False) -> int:
        """Parameter count (tied weights once). active=True counts only top_k of each MoE's experts."""
        n = sum(p.numel() for p in self.parameters())
        if active:
            for block in self.blocks:
                if isinstance(block.mlp, MoE):
                    per_expert = block.mlp.w_in[0].numel() + block.mlp.w_out[0].numel()
                    n -= (block.mlp.n_experts - block.mlp.top_k) * per_expert
        return n

    def flops_per_token(self, seq_len: int) -> float:
        """Training FLOPs per token (forward + backward): 6 * N_active + 12 * n_layer * n_embd * seq_len.

        N_active excludes the embedding lookup (not a matmul) but includes the output projection.
        The attention term is the PaLM-paper convention (score and value matmuls, causal mask ignored),
        so MFU figures are comparable with nanoGPT/nanochat.
        """
        n = self.num_params(active=True)
        if not self.config.tie_embeddings:
            n -= self.tok_emb.weight.numel()
        c = self.config
        return 6 * n + 12 * c.n_layer * c.n_head * c.head_dim * seq_len

    def configure_param_groups(self, weight_decay: float) -> list[dict]:
        """AdamW groups: decay the matrices (attention, experts, router, output head); not the norms,
        the embedding (a lookup table, decaying it shrinks rare tokens) or biases (there are none)."""
        decay, no_decay = [], []
        embedding = self.tok_emb.weight
        for p in self.parameters():  # de-duplicated, so a tied embedding appears once (undecayed)
            if not p.requires_grad:
                continue
            (no_decay if p.dim() < 2 or p is embedding else decay).append(p)
        return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]

    # -- generation ------------------------------------------------------------------------------

    def generate(
        self,
        ids: torch.Tensor,
        max_new_tokens: int,
        temperature: float = 1.0,
        top_k: int | None = None,
        top_p: float | None = None,
        eos: int | None = None,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """Continue ids (B, T) by up to max_new_tokens tokens; returns (B, T + new). The loop is
        training/engine.py's `generate` (KV cache, sliding window past the context, stop ids, checked
        sampling values); this keeps the call the trainer, eval and tests know.

        temperature == 0 is greedy. With eos, a sequence that produced eos keeps producing eos, and
        generation stops early once every sequence has.
        """
        from training.engine import SamplingConfig
        from training.engine import generate as engine_generate

        sampling = SamplingConfig(max_new_tokens, temperature, top_k, top_p)
        return engine_generate(self, ids, sampling, () if eos is None else (eos,), generator)
