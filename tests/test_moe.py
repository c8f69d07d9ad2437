"""Mixture of Experts: router semantics, grouped vs loop experts, auxiliary losses, gradients."""

from __future__ import annotations

import math

import pytest
import torch

import training.model as model_module
from training.model import GPT, ModelConfig, MoE, grouped_mm_supported

needs_grouped_mm = pytest.mark.skipif(model_module._GROUPED_MM is None, reason="this torch has no grouped_mm")


def make_moe(seed: int = 0, **overrides) -> MoE:
    torch.manual_seed(seed)
    moe = MoE(ModelConfig.preset("tiny-moe", **overrides))
    with torch.no_grad():
        for p in moe.parameters():
            p.normal_(0, 0.2)
    return moe


@torch.no_grad()
def route(moe: MoE, x: torch.Tensor):
    probs = torch.softmax(moe.router(x).float(), dim=-1)
    top_w, top_i = probs.topk(moe.top_k, dim=-1)
    top_w = top_w / top_w.sum(-1, keepdim=True)
    counts = torch.bincount(top_i.flatten(), minlength=moe.n_experts)
    return top_w, top_i, counts


def starving_inputs(moe: MoE, n: int, dtype: torch.dtype) -> torch.Tensor:
    """Random tokens whose feature 0 is 1, with a router that gives the last expert a -100 logit there:
    the last expert receives no token, the others share them."""
    with torch.no_grad():
        moe.router.weight[-1] = 0.0
        moe.router.weight[-1, 0] = -100.0
    x = torch.randn(n, 64)
    x[:, 0] = 1.0
    return x.to(dtype)


def test_one_expert_with_top1_is_the_dense_swiglu_mlp() -> None:
    torch.manual_seed(0)
    dense = GPT(ModelConfig.preset("tiny", mlp_hidden=96))
    moe = GPT(ModelConfig.preset("tiny-moe", n_experts=1, top_k=1, expert_hidden=96))
    state = {k: v for k, v in dense.state_dict().items() if ".mlp." not in k}
    for i, block in enumerate(dense.blocks):
        mlp = block.mlp
        state[f"blocks.{i}.mlp.w_in"] = torch.cat([mlp.gate_proj.weight.T, mlp.up_proj.weight.T], dim=1)[None]
        state[f"blocks.{i}.mlp.w_out"] = mlp.down_proj.weight.T[None]
        state[f"blocks.{i}.mlp.router.weight"] = torch.randn(1, 64)  # irrelevant: softmax of one logit is 1
    moe.load_state_dict(state)
    idx = torch.randint(0, 512, (2, 16))
    torch.testing.assert_close(moe(idx).logits, dense(idx).logits)


@needs_grouped_mm
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_grouped_and_loop_experts_agree_in_values_and_gradients(dtype: torch.dtype) -> None:
    moe = make_moe().to(dtype)
    x = starving_inputs(moe, 40, dtype)
    top_w, top_i, counts = route(moe, x)
    assert counts[-1] == 0 and (counts[:-1] > 0).all()  # one expert receives no tokens
    assert grouped_mm_supported(x, 64, moe.hidden)

    results = []
    for path in ("grouped", "loop"):
        moe.zero_grad()
        xg = x.clone().requires_grad_()
        if path == "grouped":
            out = moe.experts_grouped(xg, top_w, top_i, counts, moe.w_in, moe.w_out)
        else:
            out = moe.experts_loop(xg, top_w, top_i, moe.w_in, moe.w_out)
        (out * torch.linspace(-1, 1, out.numel()).view_as(out).to(dtype)).sum().backward()
        results.append((out, xg.grad, moe.w_in.grad.clone(), moe.w_out.grad.clone()))
    tol = {"atol": 1e-5, "rtol": 1e-5} if dtype == torch.float32 else {"atol": 2e-2, "rtol": 2e-2}
    for a, b in zip(*results, strict=True):
        torch.testing.assert_close(a, b, **tol)
    for w_in_grad, w_out_grad in (results[0][2:], results[1][2:]):
        assert w_in_grad[-1].abs().max() == 0 and w_out_grad[-1].abs().max() == 0


@needs_grouped_mm
def test_full_model_grouped_and_loop_agree() -> None:
    torch.manual_seed(0)
    grouped = GPT(ModelConfig.preset("tiny-moe", moe_impl="grouped"))
    loop = GPT(ModelConfig.preset("tiny-moe", moe_impl="loop"))
    loop.load_state_dict(grouped.state_dict())
    idx = torch.randint(0, 512, (2, 24))
    outs = []
    for m in (grouped, loop):
        out = m(idx[:, :-1], targets=idx[:, 1:])
        out.total_loss().backward()
        outs.append(out)
    torch.testing.assert_close(outs[0].logits, outs[1].logits)
    for (name, p), q in zip(grouped.named_parameters(), loop.parameters(), strict=True):
        torch.testing.assert_close(p.grad, q.grad, atol=1e-6, rtol=1e-5, msg=name)


def test_auto_impl_uses_grouped_mm_where_supported(monkeypatch: pytest.MonkeyPatch) -> None:
    moe = make_moe()
    calls = {"grouped": 0, "loop": 0}
    for name in calls:
        original = getattr(MoE, f"experts_{name}")

        def counted(self, *args, _original=original, _name=name):
            calls[_name] += 1
            return _original(self, *args)

        monkeypatch.setattr(MoE, f"experts_{name}", counted)
    moe(torch.randn(1, 8, 64))
    expected = "grouped" if model_module._GROUPED_MM is not None else "loop"
    assert calls[expected] == 1 and sum(calls.values()) == 1
    assert not grouped_mm_supported(torch.randn(2, 2, dtype=torch.float16), 64, 64)


def test_router_is_softmax_then_topk_then_renormalise() -> None:
    """Mixtral semantics: the outputs are the two chosen experts mixed by their renormalised weights."""
    moe = make_moe(n_experts=4, top_k=2)
    x = torch.randn(5, 64)
    logits = moe.router(x)
    out, _ = moe(x.view(1, 5, 64))
    for t in range(5):
        p = torch.softmax(logits[t], -1)
        w, i = p.topk(2)
        expected = sum(
            w[j] / w.sum() * moe._expert_ffn(x[t], moe.w_in[i[j]], moe.w_out[i[j]]) for j in range(2)
        )
        torch.testing.assert_close(out[0, t], expected, atol=1e-5, rtol=1e-5)


def test_load_balancing_loss_is_alpha_for_uniform_routing() -> None:
    moe = make_moe(n_experts=4, top_k=1, aux_loss_coef=0.01, z_loss_coef=0.001)
    with torch.no_grad():
        moe.router.weight.zero_()
    # zero router: every probability is 1/E, so alpha * E * sum_i f_i / E = alpha whatever the ties
    _, aux = moe(torch.randn(1, 32, 64))
    assert aux["load_balance_loss"].item() == pytest.approx(0.01)
    assert aux["z_loss"].item() == pytest.approx(0.001 * math.log(4) ** 2)  # logsumexp of E zeros = log E
    assert aux["router_entropy"].item() == pytest.approx(math.log(4))

    # perfectly balanced routing (each token strongly to its own expert, equal counts): still alpha
    with torch.no_grad():
        moe.router.weight.copy_(torch.eye(4, 64) * 50)
    x = torch.eye(64)[:4].repeat(8, 1).view(1, 32, 64)
    _, aux = moe(x)
    torch.testing.assert_close(aux["expert_load"], torch.full((4,), 0.25))
    assert aux["load_balance_loss"].item() == pytest.approx(0.01, rel=1e-4)

    # everything to one expert: E times larger (the maximum)
    x = torch.eye(64)[:1].repeat(32, 1).view(1, 32, 64)
    _, aux = moe(x)
    assert aux["load_balance_loss"].item() == pytest.approx(0.04, rel=1e-4)


def test_aux_losses_match_their_definitions() -> None:
    moe = make_moe(n_experts=4, top_k=2, aux_loss_coef=0.1, z_loss_coef=0.01)
    x = torch.randn(3, 10, 64)
    _, aux = moe(x)
    logits = moe.router(x.view(30, 64)).float()
    probs = logits.softmax(-1)
    counts = torch.bincount(probs.topk(2, dim=-1).indices.flatten(), minlength=4).float()
    f, P = counts / 60, probs.mean(0)
    torch.testing.assert_close(aux["expert_load"], f)
    torch.testing.assert_close(aux["load_balance_loss"], 0.1 * 4 * (f * P).sum())
    torch.testing.assert_close(aux["z_loss"], 0.01 * (torch.logsumexp(logits, -1) ** 2).mean())


def test_every_routed_expert_and_the_router_get_gradient() -> None:
    torch.manual_seed(0)
    model = GPT(ModelConfig.preset("tiny-moe", n_experts=8, top_k=2))
    idx = torch.randint(0, 512, (4, 32))
    out = model(idx[:, :-1], targets=idx[:, 1:])
    out.total_loss().backward()
    for layer, block in enumerate(model.blocks):
        load = out.stats["expert_load"][layer]
        assert (load > 0).all(), "with 124 tokens every expert should be chosen at least once"
        for e in range(8):
            assert block.mlp.w_in.grad[e].abs().sum() > 0 and block.mlp.w_out.grad[e].abs().sum() > 0
        assert block.mlp.router.weight.grad.abs().sum(dim=1).gt(0).all()


def test_aux_loss_pushes_the_router_towards_balance() -> None:
    """Gradient steps on the load-balancing loss alone lower it from a skewed start."""
    moe = make_moe(n_experts=4, top_k=1, aux_loss_coef=1.0, z_loss_coef=0.0)
    with torch.no_grad():
        moe.router.weight[0] += 0.3  # favour expert 0 for positive inputs
    x = torch.rand(1, 64, 64)
    opt = torch.optim.SGD(moe.router.parameters(), lr=0.5)
    first = None
    for _ in range(20):
        _, aux = moe(x)
        first = first if first is not None else aux["load_balance_loss"].item()
        opt.zero_grad()
        aux["load_balance_loss"].backward()
        opt.step()
    assert aux["load_balance_loss"].item() < first
    assert aux["expert_load"].max() < 1.0
