"""The decoder: shapes, causality, attention, KV-cache generation, accounting, checkpoints."""

from __future__ import annotations

import json
import math

import pytest
import torch
import torch.nn.functional as F

from training.checkpoint import latest_checkpoint, load_model, read_checkpoint_config, save_model
from training.engine import sample_next_token
from training.model import (
    GPT,
    IGNORE_INDEX,
    PRESETS,
    Attention,
    ModelConfig,
    MoE,
    rope_tables,
)


def make(name: str = "tiny-moe", seed: int = 0, **overrides) -> GPT:
    torch.manual_seed(seed)
    return GPT(ModelConfig.preset(name, **overrides))


@pytest.mark.parametrize("name", ["tiny-moe", "tiny"])
def test_forward_shapes_and_initial_loss(name: str) -> None:
    model = make(name)
    idx = torch.randint(0, 512, (3, 17))
    out = model(idx, targets=idx)
    assert out.logits.shape == (3, 17, 512)
    # a freshly initialised model is close to uniform over the vocabulary
    assert abs(out.loss.item() - math.log(512)) < 0.3
    if name == "tiny-moe":
        assert out.stats["expert_load"].shape == (2, 4)
        assert out.stats["router_entropy"].shape == (2,)
        assert out.aux_loss.item() > 0
        torch.testing.assert_close(out.stats["expert_load"].sum(-1), torch.ones(2))
        assert torch.isclose(out.total_loss(), out.loss + out.aux_loss)
    else:
        assert out.stats == {} and out.aux_loss.item() == 0.0
    assert model(idx).loss is None


def test_ignore_index_targets_are_not_scored() -> None:
    model = make("tiny")
    idx = torch.randint(0, 512, (2, 12))
    targets = idx.clone()
    targets[:, 6:] = IGNORE_INDEX
    out = model(idx, targets=targets)
    expected = F.cross_entropy(out.logits[:, :6].reshape(-1, 512), idx[:, :6].reshape(-1))
    torch.testing.assert_close(out.loss, expected)


@pytest.mark.parametrize("name", ["tiny-moe", "tiny"])
def test_causality_future_tokens_never_change_past_logits(name: str) -> None:
    model = make(name).eval()
    idx = torch.randint(0, 512, (2, 24))
    changed = idx.clone()
    changed[:, 15:] = torch.randint(0, 512, (2, 9))
    a, b = model(idx).logits, model(changed).logits
    torch.testing.assert_close(a[:, :15], b[:, :15])
    assert not torch.allclose(a[:, 15:], b[:, 15:])


def reference_attention(
    attn: Attention, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor
) -> torch.Tensor:
    """Plain multi-head attention written out: explicit scores, causal mask, softmax."""
    B, T, _ = x.shape
    nh, hd = attn.n_head, attn.head_dim

    def heads(t: torch.Tensor) -> torch.Tensor:
        return t.view(B, T, -1, hd).transpose(1, 2)

    def rope(t: torch.Tensor) -> torch.Tensor:
        t1, t2 = t[..., : hd // 2], t[..., hd // 2 :]
        return t * cos + torch.cat([-t2, t1], -1) * sin

    q, k, v = rope(heads(attn.q_proj(x))), rope(heads(attn.k_proj(x))), heads(attn.v_proj(x))
    scores = q @ k.transpose(-1, -2) / math.sqrt(hd)
    scores = scores.masked_fill(torch.ones(T, T, dtype=torch.bool).triu(1), float("-inf"))
    y = scores.softmax(-1) @ v
    return attn.o_proj(y.transpose(1, 2).reshape(B, T, nh * hd))


def test_attention_with_all_kv_heads_is_multi_head_attention() -> None:
    torch.manual_seed(0)
    cfg = ModelConfig.preset("tiny-moe", n_kv_head=4)
    attn = Attention(cfg, layer=0)
    x = torch.randn(2, 10, cfg.n_embd)
    cos, sin = rope_tables(10, cfg.head_dim, cfg.rope_theta)
    torch.testing.assert_close(attn(x, cos, sin), reference_attention(attn, x, cos, sin))


def test_gqa_equals_multi_head_attention_with_shared_kv_heads() -> None:
    """Query head h reads key/value head h // (n_head / n_kv_head), as in Llama."""
    torch.manual_seed(0)
    gqa_cfg = ModelConfig.preset("tiny-moe", n_head=4, n_kv_head=2)
    mha_cfg = ModelConfig.preset("tiny-moe", n_head=4, n_kv_head=4)
    gqa, mha = Attention(gqa_cfg, 0), Attention(mha_cfg, 0)
    hd = gqa_cfg.head_dim
    with torch.no_grad():
        mha.q_proj.weight.copy_(gqa.q_proj.weight)
        mha.o_proj.weight.copy_(gqa.o_proj.weight)
        for name in ("k_proj", "v_proj"):
            w = getattr(gqa, name).weight.view(2, hd, -1)  # (kv_head, hd, C)
            getattr(mha, name).weight.copy_(w.repeat_interleave(2, dim=0).reshape(4 * hd, -1))
    x = torch.randn(2, 9, gqa_cfg.n_embd)
    cos, sin = rope_tables(9, hd, gqa_cfg.rope_theta)
    torch.testing.assert_close(gqa(x, cos, sin), mha(x, cos, sin))


def test_native_gqa_kernel_path_equals_repeated_kv_heads(monkeypatch: pytest.MonkeyPatch) -> None:
    """In half precision attention uses SDPA's enable_gqa; it must equal repeating the kv heads."""
    import training.model as model_module

    torch.manual_seed(0)
    cfg = ModelConfig.preset("tiny", n_head=4, n_kv_head=2)
    attn = Attention(cfg, 0).to(torch.bfloat16)
    x = torch.randn(2, 12, cfg.n_embd, dtype=torch.bfloat16)
    cos, sin = rope_tables(12, cfg.head_dim, cfg.rope_theta)
    native = attn(x, cos, sin)
    monkeypatch.setattr(model_module, "SDPA_HAS_GQA", False)
    torch.testing.assert_close(native, attn(x, cos, sin), atol=1e-2, rtol=1e-2)


@pytest.mark.parametrize("name", ["tiny-moe", "tiny"])
def test_kv_cache_decoding_matches_full_recompute(name: str) -> None:
    from training.model import KVCache

    model = make(name).eval()
    idx = torch.randint(0, 512, (2, 20))
    full = model(idx).logits
    cache = KVCache(model.config, batch_size=2, max_len=20, device=idx.device, dtype=torch.float32)
    parts = [model(idx[:, :10], kv_cache=cache).logits]  # prefill
    for t in range(10, 15):  # one token at a time
        parts.append(model(idx[:, t : t + 1], kv_cache=cache).logits)
    parts.append(model(idx[:, 15:], kv_cache=cache).logits)  # a chunk after a filled cache
    torch.testing.assert_close(torch.cat(parts, dim=1), full, atol=1e-5, rtol=1e-5)
    assert cache.pos == 20


@pytest.mark.parametrize("name", ["tiny-moe", "tiny"])
def test_greedy_generation_follows_argmax_of_full_forward(name: str) -> None:
    model = make(name)  # in training mode: generate() switches to eval and back
    prompt = torch.randint(0, 512, (2, 5))
    out = model.generate(prompt, max_new_tokens=12, temperature=0)
    assert model.training
    assert out.shape == (2, 17) and torch.equal(out[:, :5], prompt)
    logits = model(out).logits
    torch.testing.assert_close(out[:, 5:], logits[:, 4:-1].argmax(-1), rtol=0, atol=0)
    # top_k=1 and a tiny top_p are greedy too, whatever the temperature
    assert torch.equal(model.generate(prompt, 12, temperature=1.5, top_k=1), out)
    assert torch.equal(model.generate(prompt, 12, temperature=1.5, top_p=1e-6), out)


def test_generation_stops_at_eos_and_pads_finished_rows() -> None:
    model = make("tiny-moe").eval()
    prompt = torch.randint(0, 512, (2, 4))
    greedy = model.generate(prompt, max_new_tokens=10, temperature=0)
    eos = int(greedy[0, 6])  # row 0 emits it at its third new token
    out = model.generate(prompt, max_new_tokens=10, temperature=0, eos=eos)
    first = (out[0, 4:] == eos).nonzero()[0].item()
    assert (out[0, 4 + first :] == eos).all()
    assert torch.equal(out[0, : 4 + first], greedy[0, : 4 + first])
    if not (out[1, 4:] == eos).any():  # row 1 never finished: generation ran to the end
        assert out.shape[1] == 14


def test_sampling_respects_top_k_and_top_p() -> None:
    logits = torch.tensor([[4.0, 3.0, 0.0, -1.0]]).repeat(2000, 1)
    gen = torch.Generator().manual_seed(0)
    assert set(sample_next_token(logits, 1.0, top_k=2, generator=gen).tolist()) == {0, 1}
    # p(0) = 0.70, p(1) = 0.26: top_p=0.9 keeps tokens 0 and 1 only
    assert set(sample_next_token(logits, 1.0, top_p=0.9, generator=gen).tolist()) == {0, 1}
    assert set(sample_next_token(logits, 1.0, generator=gen).tolist()) == {0, 1, 2, 3}


def test_generate_past_the_context_slides_the_window() -> None:
    """Asking for more tokens than the context gives exactly that many: the cache is recomputed over the
    last max_seq_len // 2 tokens when it is full. Greedy, so each new token is the argmax of a full
    forward over the window it saw (checked against that reference)."""
    model = make("tiny", max_seq_len=16).eval()
    prompt = torch.randint(0, 512, (2, 10))
    out = model.generate(prompt, max_new_tokens=30, temperature=0)
    assert out.shape == (2, 40) and torch.equal(out[:, :10], prompt)
    start = 0  # where the window the cache holds begins
    for t in range(10, 40):
        if t - start > 16:  # the cache was full before token t - 1 went in: recomputed over the last 8
            start = t - 8
        window = out[:, start:t]
        assert torch.equal(out[:, t], model(window).logits[:, -1].argmax(-1)), t
    with pytest.raises(ValueError, match="max_seq_len"):
        model.generate(
            torch.zeros(1, 17, dtype=torch.long), max_new_tokens=1
        )  # prompts are cropped by callers
    with pytest.raises(ValueError, match="max_seq_len"):
        model(torch.zeros(1, 17, dtype=torch.long))


def test_parameter_counts_and_flops() -> None:
    dense, moe = make("tiny"), make("tiny-moe")
    for m in (dense, moe):
        assert m.num_params() == sum(p.numel() for p in m.parameters())
    assert dense.num_params(active=True) == dense.num_params()
    c = moe.config
    expert = 3 * c.n_embd * c.expert_hidden
    assert moe.num_params() - moe.num_params(active=True) == c.n_layer * (c.n_experts - c.top_k) * expert
    tied = make("tiny", tie_embeddings=True)
    assert dense.num_params() - tied.num_params() == 512 * 64
    # 6 N (N without the embedding lookup) + 12 L H hd T
    n = dense.num_params() - 512 * 64
    assert dense.flops_per_token(128) == 6 * n + 12 * 2 * 4 * 16 * 128
    assert tied.flops_per_token(128) == dense.flops_per_token(128)


def test_presets_have_the_documented_sizes() -> None:
    sizes = {}
    for name in ("small", "base", "base-moe"):
        with torch.device("meta"):
            m = GPT(PRESETS[name])
        sizes[name] = (m.num_params() / 1e6, m.num_params(active=True) / 1e6)
    assert 20 <= sizes["small"][0] <= 30
    assert 115 <= sizes["base"][1] <= 135 and 115 <= sizes["base-moe"][1] <= 135
    assert sizes["base-moe"][0] > 2 * sizes["base-moe"][1]


def test_param_groups_decay_only_matrices() -> None:
    model = make("tiny-moe")
    decay, no_decay = model.configure_param_groups(0.1)
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    ids = [id(p) for p in decay["params"] + no_decay["params"]]
    assert len(ids) == len(set(ids)) == len(list(model.parameters()))
    names = {id(p): n for n, p in model.named_parameters()}
    assert all(
        names[id(p)].endswith("norm.weight") or names[id(p)] == "tok_emb.weight" for p in no_decay["params"]
    )
    assert {names[id(p)] for p in decay["params"]} >= {
        "lm_head.weight",
        "blocks.0.mlp.w_in",
        "blocks.0.mlp.router.weight",
    }


def test_residual_projections_are_scaled_by_depth() -> None:
    model = make("tiny", n_layer=8, n_embd=128, mlp_hidden=256)
    std = model.blocks[0].attn.q_proj.weight.std().item()
    for name in ("attn.o_proj", "mlp.down_proj"):
        w = model.blocks[3].get_submodule(name).weight
        assert w.std().item() == pytest.approx(std / math.sqrt(16), rel=0.1)


def test_relu2_feed_forward_has_swiglus_parameters_at_one_and_a_half_times_the_width() -> None:
    from training.model import KVCache, ReLU2

    swiglu, relu2 = make("tiny", mlp_hidden=128), make("tiny", mlp="relu2", mlp_hidden=192)
    assert swiglu.num_params() == relu2.num_params()
    mlp = relu2.blocks[0].mlp
    assert isinstance(mlp, ReLU2) and not hasattr(mlp, "gate_proj")
    x = torch.randn(3, 64)
    torch.testing.assert_close(
        mlp(x), (x @ mlp.up_proj.weight.T).clamp(min=0).pow(2) @ mlp.down_proj.weight.T
    )
    # the rest of the model is untouched: causal, and cached decoding equals the full forward
    model = relu2.eval()
    idx = torch.randint(0, 512, (2, 16))
    full = model(idx).logits
    cache = KVCache(model.config, batch_size=2, max_len=16, device=idx.device, dtype=torch.float32)
    parts = [model(idx[:, :9], kv_cache=cache).logits] + [
        model(idx[:, t : t + 1], kv_cache=cache).logits for t in range(9, 16)
    ]
    torch.testing.assert_close(torch.cat(parts, dim=1), full, atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match=r"mlp must be one of swiglu\|relu2"):
        ModelConfig.preset("tiny", mlp="gelu")


def test_config_validation() -> None:
    with pytest.raises(ValueError, match="n_kv_head"):
        ModelConfig.preset("tiny-moe", n_kv_head=3)
    with pytest.raises(ValueError, match="top_k"):
        ModelConfig.preset("tiny-moe", top_k=5)
    with pytest.raises(ValueError, match="unknown preset"):
        ModelConfig.preset("huge")
    with pytest.raises(ValueError, match="unknown ModelConfig keys"):
        ModelConfig.from_dict({**PRESETS["tiny-moe"].to_dict(), "n_layers": 3})
    assert ModelConfig.from_dict(PRESETS["tiny-moe"].to_dict()) == PRESETS["tiny-moe"]


def test_a_few_optimizer_steps_fit_a_batch() -> None:
    model = make("tiny-moe")
    opt = torch.optim.AdamW(model.configure_param_groups(0.01), lr=1e-2)
    idx = torch.randint(0, 512, (2, 24))
    losses = []
    for _ in range(8):
        out = model(idx[:, :-1], targets=idx[:, 1:])
        opt.zero_grad()
        out.total_loss().backward()
        opt.step()
        losses.append(out.loss.item())
    assert losses[-1] < losses[0] - 1.0


@pytest.mark.parametrize("tie", [False, True])
def test_save_load_round_trip(tmp_path, tie: bool) -> None:
    model = make("tiny-moe", tie_embeddings=tie).eval()
    save_model(model, tmp_path / "ckpt", extra={"tokenizer_path": "tok.model", "step": 7})
    loaded = load_model(tmp_path / "ckpt").eval()
    assert loaded.config == model.config
    for (n1, p1), (n2, p2) in zip(model.state_dict().items(), loaded.state_dict().items(), strict=True):
        assert n1 == n2 and torch.equal(p1, p2)
    if tie:
        assert loaded.lm_head.weight is loaded.tok_emb.weight
    idx = torch.randint(0, 512, (2, 16))
    assert torch.equal(model(idx).logits, loaded(idx).logits)
    meta = read_checkpoint_config(tmp_path / "ckpt")
    assert meta["tokenizer_path"] == "tok.model" and meta["step"] == 7
    assert sorted(p.name for p in (tmp_path / "ckpt").iterdir()) == ["config.json", "model.safetensors"]


def test_checkpoint_errors_and_latest_step(tmp_path) -> None:
    model = make("tiny")
    for step in (5, 120, 40):
        save_model(model, tmp_path / "run" / "checkpoints" / f"step_{step:07d}")
    (tmp_path / "run" / "checkpoints" / "step_0000900").mkdir()  # incomplete: no files
    assert latest_checkpoint(tmp_path / "run").name == "step_0000120"
    with pytest.raises(FileNotFoundError):
        latest_checkpoint(tmp_path / "empty")
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "config.json").write_text(json.dumps({"format": "something-else"}))
    with pytest.raises(ValueError, match="not a ptgpt model"):
        load_model(bad)


def test_moe_module_is_used_only_in_moe_layers() -> None:
    model = make("tiny-moe", n_layer=4, moe_every=2)
    assert [isinstance(b.mlp, MoE) for b in model.blocks] == [False, True, False, True]
    out = model(torch.randint(0, 512, (1, 8)))
    assert out.stats["expert_load"].shape == (2, 4)


def test_rope_backward_is_the_inverse_rotation() -> None:
    """The hand-written RoPE backward equals autograd through the plain formula, and gradcheck passes."""
    from training.model import _RoPE, apply_rope

    torch.manual_seed(0)
    cos, sin = rope_tables(10, 8, 10000.0)
    x = torch.randn(2, 3, 10, 8, dtype=torch.float64, requires_grad=True)
    half = cos[..., :4].double(), sin[..., :4].double()
    assert torch.autograd.gradcheck(lambda t: _RoPE.apply(t, *half), (x,))
    grad = torch.randn(2, 3, 10, 8, dtype=torch.float64)
    ours = torch.autograd.grad(apply_rope(x, cos.double(), sin.double()), x, grad)[0]
    rotated = torch.cat([-x[..., 4:], x[..., :4]], dim=-1)  # Llama's rotate_half, autograd's backward
    plain = torch.autograd.grad(x * cos.double() + rotated * sin.double(), x, grad)[0]
    torch.testing.assert_close(ours, plain)
    with torch.no_grad():  # the no-grad path (generation) computes the same values
        torch.testing.assert_close(apply_rope(x, cos.double(), sin.double()), x * cos + rotated * sin)


def test_qk_norm_makes_attention_blind_to_the_scale_of_q_and_k() -> None:
    """With QK-norm each head's queries and keys are RMS-normalised, so scaling their projections
    changes nothing; without it the logits change."""
    idx = torch.randint(0, 512, (2, 16))
    for qk_norm in (True, False):
        model = make("tiny", qk_norm=qk_norm, norm_eps=1e-12).eval()
        before = model(idx).logits
        with torch.no_grad():
            for block in model.blocks:
                block.attn.q_proj.weight.mul_(7.0)
                block.attn.k_proj.weight.mul_(0.2)
        after = model(idx).logits
        if qk_norm:
            torch.testing.assert_close(after, before, atol=1e-4, rtol=1e-4)
            assert {n for n, _ in model.named_parameters() if "q_norm" in n or "k_norm" in n}
        else:
            assert not torch.allclose(after, before, atol=1e-3)


def test_rms_norm_in_half_precision_keeps_the_dtype_and_llama_order() -> None:
    from training.model import RMSNorm

    norm = RMSNorm(16, 1e-5)
    with torch.no_grad():
        norm.weight.uniform_(0.5, 1.5)
    x = torch.randn(3, 16, dtype=torch.bfloat16)
    x32 = x.float()
    llama = (x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + 1e-5)).to(torch.bfloat16) * norm.weight.to(
        torch.bfloat16
    )
    assert norm(x).dtype == torch.bfloat16
    torch.testing.assert_close(norm(x), llama)
    torch.testing.assert_close(
        norm(x32), norm.weight * x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + 1e-5)
    )
