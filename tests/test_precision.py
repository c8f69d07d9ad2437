"""training/precision.py: precision choice, the fp16 loss-scaling path on CPU, activation checkpointing,
the memory rule and the out-of-memory message."""

from __future__ import annotations

import copy
import json

import pytest
import torch

from common.errors import UserError
from training.model import GPT, ModelConfig
from training.precision import (
    Precision,
    choose_precision,
    enable_activation_checkpointing,
    estimate_memory,
    explain_out_of_memory,
    fit_batch,
    out_of_memory_message,
    pick_device,
)

T4, V100, A100 = (7, 5), (7, 0), (8, 0)


def test_auto_picks_bf16_only_on_ampere_or_newer_and_fp32_off_cuda():
    assert choose_precision("auto", "cuda", A100) == "bf16"
    assert choose_precision("auto", "cuda", (9, 0)) == "bf16"
    assert choose_precision("auto", "cuda", T4) == "fp16"
    assert choose_precision("auto", "cuda", V100) == "fp16"
    assert choose_precision("auto", "cuda", (6, 0)) == "fp16"  # P100
    assert choose_precision("auto", "cpu") == "fp32"
    assert choose_precision("auto", "mps") == "fp32"


def test_forced_precision_is_kept_or_refused_with_the_fix():
    assert choose_precision("fp16", "cpu") == "fp16"
    assert choose_precision("fp32", "cuda", A100) == "fp32"
    assert choose_precision("bf16", "cpu") == "bf16"
    with pytest.raises(ValueError, match="use --precision fp16"):
        choose_precision("bf16", "cuda", T4)
    with pytest.raises(ValueError, match="auto, bf16, fp16, fp32"):
        choose_precision("half", "cpu")


def test_device_auto_and_missing_devices():
    expected = "cuda" if torch.cuda.is_available() else "mps" if torch.backends.mps.is_available() else "cpu"
    assert pick_device("auto").type == expected
    assert pick_device("cpu") == torch.device("cpu")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="sees no GPU"):
            pick_device("cuda")
    if not torch.backends.mps.is_available():
        with pytest.raises(ValueError, match="MPS"):
            pick_device("mps")
    with pytest.raises(ValueError, match="unknown device"):
        pick_device("tpu")


def test_autocast_computes_matmuls_in_the_chosen_dtype_on_cpu():
    x, w = torch.randn(4, 8), torch.randn(8, 8)
    for kind, dtype in (("fp16", torch.float16), ("bf16", torch.bfloat16), ("fp32", torch.float32)):
        with Precision(kind, "cpu").autocast():
            assert (x @ w).dtype == dtype


def tiny_model(seed: int = 0) -> GPT:
    torch.manual_seed(seed)
    return GPT(ModelConfig.preset("tiny", vocab_size=64, max_seq_len=16))


def batch(step: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(100 + step)
    return torch.randint(0, 64, (2, 16), generator=g)


def train_step(model, optimizer, precision, step: int, poison: set[int]) -> torch.Tensor:
    x = batch(step)
    with precision.autocast():
        loss = model(x, x).total_loss()
    precision.backward(loss)
    if step in poison:  # what an fp16 overflow looks like: one gradient comes out inf
        next(model.parameters()).grad[0, 0] = float("inf")
    norm = precision.step(optimizer, model.parameters(), grad_clip=1.0)
    optimizer.zero_grad(set_to_none=True)
    return norm


def test_fp16_step_with_inf_gradient_is_skipped_counted_and_backs_off():
    model = tiny_model()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    precision = Precision("fp16", "cpu", init_scale=1024.0, growth_interval=1000)
    train_step(model, optimizer, precision, 0, poison=set())
    before = copy.deepcopy(model.state_dict())
    moments = copy.deepcopy(optimizer.state_dict()["state"])

    norm = train_step(model, optimizer, precision, 1, poison={1})
    assert not torch.isfinite(norm)
    assert precision.skipped_steps == 1
    assert precision.loss_scale == 512.0
    for name, value in model.state_dict().items():
        assert torch.equal(value, before[name]), name
    for index, state in optimizer.state_dict()["state"].items():
        for key, value in state.items():
            assert torch.equal(value, moments[index][key]), (index, key)

    train_step(model, optimizer, precision, 2, poison=set())
    assert precision.skipped_steps == 1
    assert not torch.equal(model.state_dict()["tok_emb.weight"], before["tok_emb.weight"])


def test_fp16_loss_scale_grows_after_clean_steps_and_bf16_fp32_never_skip():
    model = tiny_model()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    precision = Precision("fp16", "cpu", init_scale=256.0, growth_interval=2)
    for step in range(4):
        train_step(model, optimizer, precision, step, poison=set())
    assert precision.loss_scale == 1024.0 and precision.skipped_steps == 0
    for kind in ("bf16", "fp32"):
        p = Precision(kind, "cpu")
        assert p.scaler is None and p.loss_scale is None
        train_step(tiny_model(), torch.optim.AdamW(tiny_model().parameters()), p, 0, poison=set())
        assert p.state_dict() == {"kind": kind, "skipped_steps": 0}


def run_fp16(steps: range, model, optimizer, precision) -> None:
    for step in steps:
        train_step(model, optimizer, precision, step, poison={2, 5})


def test_fp16_scaler_state_resumes_exactly_through_json():
    """Six steps in one go == three steps, save (scaler state as JSON), fresh objects, three more."""
    make = lambda: Precision("fp16", "cpu", init_scale=4096.0, growth_interval=2)  # noqa: E731
    model = tiny_model()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    straight = make()
    run_fp16(range(6), model, optimizer, straight)

    model_a = tiny_model()
    optimizer_a = torch.optim.AdamW(model_a.parameters(), lr=1e-2)
    first = make()
    run_fp16(range(3), model_a, optimizer_a, first)
    saved = json.loads(json.dumps(first.state_dict()))
    assert saved["skipped_steps"] == 1 and saved["scaler"]["_growth_tracker"] == 0
    weights, opt_state = copy.deepcopy(model_a.state_dict()), copy.deepcopy(optimizer_a.state_dict())

    model_b = tiny_model(seed=1)  # different init: everything must come from the saved state
    model_b.load_state_dict(weights)
    optimizer_b = torch.optim.AdamW(model_b.parameters(), lr=1e-2)
    optimizer_b.load_state_dict(opt_state)
    resumed = make()
    resumed.load_state_dict(saved)
    run_fp16(range(3, 6), model_b, optimizer_b, resumed)

    assert resumed.state_dict() == straight.state_dict()
    assert straight.skipped_steps == 2
    for name, value in model.state_dict().items():
        assert torch.equal(value, model_b.state_dict()[name]), name


def test_resuming_fp16_state_in_bf16_keeps_only_the_count():
    p = Precision("bf16", "cpu")
    p.load_state_dict({"kind": "fp16", "skipped_steps": 3, "scaler": {"scale": 8.0, "_growth_tracker": 1}})
    assert p.skipped_steps == 3 and p.scaler is None
    q = Precision("fp16", "cpu", init_scale=2.0**16)
    q.load_state_dict({"kind": "bf16", "skipped_steps": 0})
    assert q.state_dict()["scaler"]["scale"] == 2.0**16


def saved_activation_bytes(model: GPT, x: torch.Tensor) -> int:
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    seen: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        if t.untyped_storage().data_ptr() not in params:
            seen[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss = model(x, x).total_loss()
    loss.backward()
    return sum(seen.values())


@pytest.mark.parametrize("preset", ["tiny", "tiny-moe"])
def test_activation_checkpointing_same_gradients_less_saved_memory(preset):
    config = ModelConfig.preset(preset, vocab_size=64, max_seq_len=32, n_layer=4)
    torch.manual_seed(0)
    plain, checkpointed = GPT(config), GPT(config)
    checkpointed.load_state_dict(plain.state_dict())
    enable_activation_checkpointing(checkpointed)
    assert checkpointed.state_dict().keys() == plain.state_dict().keys()
    x = torch.randint(0, 64, (4, 32), generator=torch.Generator().manual_seed(0))
    saved_plain = saved_activation_bytes(plain, x)
    saved_checkpointed = saved_activation_bytes(checkpointed, x)
    assert saved_checkpointed < saved_plain / 2
    for (name, p), q in zip(plain.named_parameters(), checkpointed.parameters(), strict=True):
        torch.testing.assert_close(q.grad, p.grad, msg=name)
    checkpointed.eval()  # generation (KV cache) runs the plain forward
    out = checkpointed.generate(x[:1, :4], max_new_tokens=3, temperature=0)
    assert out.shape[1] == 7


def test_t4_rule_fits_every_preset_in_15_gib_with_the_same_tokens_per_step():
    for preset in ("tiny", "small", "base", "small-moe", "base-moe"):
        config = ModelConfig.preset(preset)
        fit = fit_batch(config, config.max_seq_len, gpu_gb=15.0)
        assert fit["batch_size"] * fit["grad_accum"] == 64, preset
        assert fit["estimate_gib"] <= 0.9 * 15.0
        bigger = estimate_memory(config, 2 * fit["batch_size"], config.max_seq_len, "fp16")
        assert fit["batch_size"] == 64 or bigger.total > 0.9 * 15.0, preset  # the largest that fits
    base = ModelConfig.preset("base")
    small_gpu = fit_batch(base, 1024, gpu_gb=6.0)
    assert small_gpu["activation_checkpointing"] and small_gpu["batch_size"] < 8
    with pytest.raises(ValueError, match="smaller --preset"):
        fit_batch(base, 1024, gpu_gb=1.0)


def test_checkpointing_and_fp16_lower_the_estimate():
    base = ModelConfig.preset("base")
    fp32 = estimate_memory(base, 8, 1024, "fp32").total
    fp16 = estimate_memory(base, 8, 1024, "fp16").total
    ckpt = estimate_memory(base, 8, 1024, "fp16", activation_checkpointing=True).total
    assert ckpt < fp16 < fp32


def test_out_of_memory_becomes_one_line_naming_the_fix():
    base = ModelConfig.preset("base")
    context = dict(config=base, batch_size=32, grad_accum=2, block_size=1024, precision="fp16")
    with pytest.raises(UserError) as info, explain_out_of_memory(activation_checkpointing=False, **context):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
    message = str(info.value)
    assert "\n" not in message
    assert "--batch-size 32" in message  # what failed
    assert "rerun with --batch-size 8 --grad-accum 8" in message  # 64 windows per step either way
    # the estimate says 8 fits, but 8 is what failed: never suggest it again
    again = out_of_memory_message(base, 8, 8, 1024, "fp16", False, gpu_gb=15.0)
    assert "rerun with --batch-size 4 --grad-accum 16 --activation-checkpointing true" in again
    assert "smaller --preset" in out_of_memory_message(base, 1, 64, 1024, "fp16", True, gpu_gb=15.0)
    with explain_out_of_memory(activation_checkpointing=False, **context):
        pass  # no error, nothing raised


# -----------------------------------------------------------------------------------------------
# In the trainer: --precision fp16 on the CPU, resumed through a real checkpoint


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    from corpus_factory import random_books, write_corpus

    root = tmp_path_factory.mktemp("corpus")
    splits = {"train": random_books(0, 12, max_paragraphs=12), "validation": random_books(1, 2, first_id=900)}
    return write_corpus(root, splits, rows_per_group=6)


def trainer_config(corpus, run, **kw):
    """test_train's tiny run, in fp16."""
    from test_train import tiny_config

    return tiny_config(corpus, run, **{"precision": "fp16", **kw})


def test_trainer_fp16_on_cpu_logs_the_scale_and_resumes_bit_exactly(corpus, tmp_path):
    from training import checkpoint as ckpt
    from training.metrics import read_metrics
    from training.train import config_from_args, train

    flags = config_from_args(
        ["--corpus", str(corpus), "--run", "r", "--precision", "fp16", "--activation-checkpointing", "true"]
    )
    assert flags.precision == "fp16" and flags.activation_checkpointing
    with pytest.raises(ValueError, match="--precision"):
        trainer_config(corpus, tmp_path / "x", precision="half")

    straight = tmp_path / "straight"
    train(trainer_config(corpus, straight))
    resumed = tmp_path / "resumed"
    train(trainer_config(corpus, resumed, max_steps=3))
    summary = train(trainer_config(corpus, resumed))
    assert summary["start_step"] == 3 and summary["step"] == 6

    records = read_metrics(straight)
    assert all("loss_scale" in r and "skipped_steps" in r for r in records)
    assert [r["loss"] for r in read_metrics(resumed)] == [r["loss"] for r in records]
    states = [
        json.loads((ckpt.latest_valid_training_checkpoint(run) / "trainer.json").read_text())["precision"]
        for run in (straight, resumed)
    ]
    assert states[0] == states[1] and states[0]["kind"] == "fp16"
    assert states[0]["scaler"]["scale"] == records[-1]["loss_scale"]
    a = ckpt.load_model(ckpt.latest_valid_training_checkpoint(straight)).state_dict()
    b = ckpt.load_model(ckpt.latest_valid_training_checkpoint(resumed)).state_dict()
    for name, value in a.items():
        assert torch.equal(value, b[name]), name


def test_trainer_activation_checkpointing_trains_the_same_run(corpus, tmp_path):
    from training.metrics import read_metrics
    from training.train import train

    for name, on in (("plain", False), ("checkpointed", True)):
        train(
            trainer_config(
                corpus, tmp_path / name, precision="fp32", max_steps=3, activation_checkpointing=on
            )
        )
    plain, checkpointed = (
        [r["loss"] for r in read_metrics(tmp_path / name)] for name in ("plain", "checkpointed")
    )
    assert checkpointed == pytest.approx(plain, rel=1e-5)
