"""Optimizers (training/optim.py): Muon on the hidden matrices, AdamW on the rest, resumed exactly."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file, save_file
from test_train import corpus, final_weights, losses, tiny_config  # noqa: F401 - corpus is a fixture

from training import checkpoint as ckpt
from training.model import GPT, ModelConfig
from training.optim import MuonWithAdamW, build_optimizer, muon_available, split_params
from training.train import train

pytestmark = pytest.mark.skipif(not muon_available(), reason="torch.optim.Muon needs torch >= 2.9")


def tiny_moe(seed: int = 0) -> GPT:
    torch.manual_seed(seed)
    return GPT(ModelConfig.preset("tiny-moe", vocab_size=64, moe_every=2, tie_embeddings=True))


def test_adamw_is_fused_on_cpu_and_a_checkpoint_keeps_the_kernel_it_was_written_with() -> None:
    assert all(g["fused"] for g in build_optimizer(tiny_moe(0), "adamw").param_groups)
    assert not build_optimizer(tiny_moe(0), "adamw", fused=False).param_groups[0]["fused"]
    # A run from before fused was the default: torch's unfused AdamW, as the trainer built it then.
    old = tiny_moe(0)
    old_opt = torch.optim.AdamW(old.configure_param_groups(0.1), lr=1e-3, betas=(0.9, 0.95))
    steps(old, old_opt, 2, seed=1)
    tensors, meta = ckpt.optimizer_state_to_tensors(old_opt)
    tensors = {k: v.clone() for k, v in tensors.items()}  # as read back from the file: not shared
    resumed = tiny_moe(5)
    resumed.load_state_dict(old.state_dict())
    resumed_opt = build_optimizer(resumed, "adamw")
    resumed_opt.load_state_dict(ckpt.optimizer_state_from_tensors(tensors, json.loads(json.dumps(meta))))
    assert not any(g["fused"] for g in resumed_opt.param_groups)  # continues with its own kernel
    steps(old, old_opt, 3, seed=2)
    steps(resumed, resumed_opt, 3, seed=2)
    a, b = old.state_dict(), resumed.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_muon_gets_exactly_the_hidden_matrices() -> None:
    model = tiny_moe()
    groups = split_params(model)
    names = {id(p): n for n, p in model.named_parameters()}
    hidden = sorted(names[id(p)] for p in groups["hidden"])
    assert hidden and all(n.startswith("blocks.") and n.endswith("proj.weight") for n in hidden)
    assert any("mlp.gate_proj" in n for n in hidden)  # the dense layer's feed-forward
    decay = sorted(names[id(p)] for p in groups["decay"])
    assert decay == ["blocks.1.mlp.router.weight", "blocks.1.mlp.w_in", "blocks.1.mlp.w_out"]
    no_decay = {names[id(p)] for p in groups["no_decay"]}
    assert "tok_emb.weight" in no_decay and all(n == "tok_emb.weight" or "norm" in n for n in no_decay)
    every = [id(p) for g in groups.values() for p in g]
    assert sorted(every) == sorted(id(p) for p in model.parameters())  # each once (tied head included)


def test_adamw_keeps_the_two_groups_of_earlier_checkpoints() -> None:
    model = tiny_moe()
    opt = build_optimizer(model, "adamw", lr=1e-3, weight_decay=0.1)
    assert isinstance(opt, torch.optim.AdamW)
    expected = model.configure_param_groups(0.1)
    assert [[id(p) for p in g["params"]] for g in opt.param_groups] == [
        [id(p) for p in g["params"]] for g in expected
    ]
    with pytest.raises(ValueError, match="optimizer must be one of"):
        build_optimizer(model, "sgd")


def steps(model: GPT, opt, n: int, seed: int) -> None:
    gen = torch.Generator().manual_seed(seed)
    for _ in range(n):
        x = torch.randint(0, 64, (2, 12), generator=gen)
        model(x, x).total_loss().backward()
        opt.step()
        opt.zero_grad(set_to_none=True)


def test_muon_state_round_trips_through_safetensors_and_continues_bit_exactly(tmp_path) -> None:
    model = tiny_moe()
    opt = build_optimizer(model, "muon", lr=3e-3)
    assert isinstance(opt, MuonWithAdamW) and len(opt.param_groups) == 3
    steps(model, opt, 3, seed=1)
    tensors, meta = ckpt.optimizer_state_to_tensors(opt)
    assert any(k.endswith(".momentum_buffer") for k in tensors) and any(
        k.endswith(".exp_avg") for k in tensors
    )
    save_file(tensors, str(tmp_path / "opt.safetensors"))
    weights = {k: v.clone() for k, v in model.state_dict().items()}

    other = tiny_moe(seed=5)
    other.load_state_dict(weights)
    other_opt = build_optimizer(other, "muon", lr=99.0)  # the saved groups bring lr back
    other_opt.load_state_dict(
        ckpt.optimizer_state_from_tensors(load_file(tmp_path / "opt.safetensors"), meta)
    )
    assert other_opt.param_groups[0]["ns_coefficients"] == opt.param_groups[0]["ns_coefficients"]
    assert [g["lr"] for g in other_opt.param_groups] == [3e-3] * 3
    for lr_groups in (opt.param_groups, other_opt.param_groups):  # the trainer sets lr on every group
        for g in lr_groups:
            g["lr"] = 2e-3
    steps(model, opt, 3, seed=2)
    steps(other, other_opt, 3, seed=2)
    a, b = model.state_dict(), other.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.equal(a["blocks.0.attn.q_proj.weight"], weights["blocks.0.attn.q_proj.weight"])

    adamw = build_optimizer(tiny_moe(), "adamw")
    with pytest.raises(ValueError, match="parameter groups"):
        build_optimizer(tiny_moe(), "muon").load_state_dict(adamw.state_dict())


def test_muon_lowers_the_loss_on_a_fixed_batch() -> None:
    model = tiny_moe()
    opt = build_optimizer(model, "muon", lr=1e-2, weight_decay=0.0)
    x = torch.randint(0, 64, (4, 16), generator=torch.Generator().manual_seed(0))
    first = model(x, x).loss.item()
    for _ in range(15):
        model(x, x).total_loss().backward()
        opt.step()
        opt.zero_grad()
    assert model(x, x).loss.item() < first - 1.0


def test_trainer_with_muon_resumes_bit_exactly(corpus, tmp_path) -> None:  # noqa: F811
    whole, split = tmp_path / "whole", tmp_path / "split"
    train(tiny_config(corpus, whole, max_steps=4, checkpoint_every=100, optimizer="muon"))
    train(tiny_config(corpus, split, max_steps=2, checkpoint_every=100, optimizer="muon"))
    train(tiny_config(corpus, split, max_steps=4, checkpoint_every=100, optimizer="muon"))
    assert losses(split) == losses(whole)
    a, b = final_weights(whole), final_weights(split)
    assert all(torch.equal(a[k], b[k]) for k in a)
    with pytest.raises(ValueError, match="parameter groups"):  # AdamW cannot take over Muon's state
        train(tiny_config(corpus, split, max_steps=5, checkpoint_every=100, optimizer="adamw"))
