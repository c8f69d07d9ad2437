"""Hugging Face export: transformers loads the folder without custom code and agrees with our model."""

from __future__ import annotations

import io
import itertools
import json
import random
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from common.errors import UserError
from export.gguf import write_gguf
from export.hf import export_model
from ptgpt.cli.model import export_hf
from training.checkpoint import save_model
from training.model import GPT, ModelConfig

transformers = pytest.importorskip("transformers")
spm = pytest.importorskip("sentencepiece")

VOCAB = 320


def portuguese_sentences() -> list[str]:
    subjects = [
        "O menino",
        "A menina",
        "O velho pescador",
        "A professora",
        "O gato da vizinha",
        "Meu avô",
        "A cidade inteira",
        "O padre",
        "Dona Conceição",
        "O soldado",
    ]
    verbs = ["viu", "encontrou", "esqueceu", "levou", "desenhou", "procurou", "vendeu", "guardou"]
    objects = [
        "um barco azul",
        "a chave da igreja",
        "três laranjas maduras",
        "o livro de orações",
        "uma carta antiga",
        "o pão quente",
        "a canção do mar",
        "os sapatos novos",
    ]
    places = [
        "na praia.",
        "perto do rio.",
        "no mercado de São João.",
        "à beira da estrada.",
        "durante a missa.",
        "ao pôr do sol.",
        "em Lisboa.",
        "no coração da floresta, sem dizer nada!",
    ]
    sentences = [" ".join(parts) for parts in itertools.product(subjects, verbs, objects, places)]
    random.Random(0).shuffle(sentences)
    return sentences[:400]


@pytest.fixture(scope="module")
def tokenizer_model(tmp_path_factory) -> Path:
    """A tiny SentencePiece model with the corpus stage's settings and special ids."""
    buf = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(portuguese_sentences()),
        model_writer=buf,
        model_type="bpe",
        vocab_size=VOCAB,
        byte_fallback=True,
        normalization_rule_name="identity",
        remove_extra_whitespaces=False,
        character_coverage=1.0,
        unk_id=0,
        bos_id=1,
        eos_id=2,
        pad_id=3,
        minloglevel=2,
    )
    path = tmp_path_factory.mktemp("tok") / "tokenizer.model"
    path.write_bytes(buf.getvalue())
    return path


CASES = {
    "dense": ("tiny", {}, "LlamaForCausalLM"),
    "dense-tied-mha": (
        "tiny",
        {"tie_embeddings": True, "n_kv_head": 4, "rope_theta": 500000.0},
        "LlamaForCausalLM",
    ),
    "moe": ("tiny-moe", {}, "MixtralForCausalLM"),
    "moe-top1-tied": ("tiny-moe", {"top_k": 1, "n_experts": 3, "tie_embeddings": True}, "MixtralForCausalLM"),
    "dense-qk-norm": ("tiny", {"qk_norm": True}, "Qwen3ForCausalLM"),
    "moe-qk-norm-every-other-layer": (
        "tiny-moe",
        {"qk_norm": True, "n_layer": 3, "moe_every": 2, "tie_embeddings": True},
        "Qwen3MoeForCausalLM",
    ),
}


@pytest.mark.parametrize("case", list(CASES))
def test_transformers_model_matches_ours(case: str, tmp_path: Path, tokenizer_model: Path) -> None:
    preset, overrides, hf_class = CASES[case]
    torch.manual_seed(0)
    model = GPT(ModelConfig.preset(preset, vocab_size=VOCAB, **overrides)).eval()
    with torch.no_grad():  # norm gains start at 1: make them differ, so that a wrong mapping shows
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                p.uniform_(0.5, 1.5)
    ckpt = save_model(
        model,
        tmp_path / "run" / "checkpoints" / "step_0000010",
        extra={"tokenizer_path": str(tokenizer_model)},
    )
    result = CliRunner().invoke(export_hf, ["--checkpoint", str(ckpt), "--out", str(tmp_path / "hf")])
    assert result.exit_code == 0, result.output

    hf = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "hf").eval()
    assert type(hf).__name__ == hf_class
    idx = torch.randint(0, VOCAB, (2, 48))
    with torch.no_grad():
        torch.testing.assert_close(hf(idx).logits, model(idx).logits, atol=1e-4, rtol=0)

    prompt = idx[:1, :6]
    ours = model.generate(prompt, max_new_tokens=20, temperature=0, eos=2)
    theirs = hf.generate(prompt, max_new_tokens=20, do_sample=False)
    assert theirs.tolist() == ours.tolist()


def test_tokenizer_loads_as_llama_tokenizer_with_the_same_ids(tmp_path: Path, tokenizer_model: Path) -> None:
    torch.manual_seed(0)
    ckpt = save_model(GPT(ModelConfig.preset("tiny-moe", vocab_size=VOCAB)), tmp_path / "ckpt")
    result = CliRunner().invoke(
        export_hf,
        ["--checkpoint", str(ckpt), "--out", str(tmp_path / "hf"), "--tokenizer", str(tokenizer_model)],
    )
    assert result.exit_code == 0, result.output
    sp = spm.SentencePieceProcessor(model_file=str(tokenizer_model))
    texts = ["O menino viu um barco azul.", "Dona Conceição guardou a carta\nem Lisboa!", "Ñandú 😀 e ção"]
    for tok in (
        transformers.PreTrainedTokenizerFast.from_pretrained(tmp_path / "hf"),
        transformers.AutoTokenizer.from_pretrained(tmp_path / "hf"),
    ):
        assert (tok.bos_token_id, tok.eos_token_id, tok.pad_token_id, tok.unk_token_id) == (1, 2, 3, 0)
        for text in texts:
            ids = tok(text).input_ids
            assert ids == [1] + sp.encode(text)
            assert tok.decode(ids, skip_special_tokens=True) == " " + text  # the dummy prefix (export/hf.py)
    config = json.loads((tmp_path / "hf" / "config.json").read_text())
    assert (config["bos_token_id"], config["eos_token_id"], config["pad_token_id"]) == (1, 2, 3)


def test_export_from_run_picks_the_latest_checkpoint(tmp_path: Path, tokenizer_model: Path) -> None:
    torch.manual_seed(0)
    for step in (100, 2000):
        model = GPT(ModelConfig.preset("tiny", vocab_size=VOCAB))
        save_model(
            model,
            tmp_path / "run" / "checkpoints" / f"step_{step:07d}",
            extra={"tokenizer_path": str(tokenizer_model)},
        )
    result = CliRunner().invoke(export_hf, ["--run", str(tmp_path / "run"), "--out", str(tmp_path / "hf")])
    assert result.exit_code == 0, result.output
    assert "step_0002000" in result.output
    hf = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "hf")
    torch.testing.assert_close(hf.model.embed_tokens.weight, model.tok_emb.weight)  # the last one saved


def test_export_refuses_what_it_cannot_express(tmp_path: Path, tokenizer_model: Path) -> None:
    every_other = GPT(ModelConfig.preset("tiny-moe", vocab_size=VOCAB, n_layer=2, moe_every=2))
    with pytest.raises(ValueError, match="MoE in every layer"):
        export_model(every_other, tmp_path / "a", tokenizer_model)
    assert not (tmp_path / "a").exists()
    relu2 = GPT(ModelConfig.preset("tiny", vocab_size=VOCAB, mlp="relu2"))
    with pytest.raises(ValueError, match="relu2 feed-forward"):
        export_model(relu2, tmp_path / "a", tokenizer_model)
    with pytest.raises(UserError, match="SwiGLU only"):
        write_gguf(relu2, tmp_path / "a.gguf", tokenizer_model)
    assert not (tmp_path / "a").exists() and not (tmp_path / "a.gguf").exists()

    too_small = GPT(ModelConfig.preset("tiny", vocab_size=100))
    with pytest.raises(ValueError, match="tokenizer has 320 pieces"):
        export_model(too_small, tmp_path / "b", tokenizer_model)
    assert not (tmp_path / "b").exists() and not list(tmp_path.glob(".b.*"))  # no temporary folder left

    ok = GPT(ModelConfig.preset("tiny", vocab_size=VOCAB))
    export_model(ok, tmp_path / "c", tokenizer_model)
    with pytest.raises(UserError, match="pass --overwrite"):  # an earlier export: replaced only when asked
        export_model(ok, tmp_path / "c", tokenizer_model)
    export_model(ok, tmp_path / "c", tokenizer_model, overwrite=True)

    runner = CliRunner()
    ckpt = save_model(ok, tmp_path / "ckpt")  # records no tokenizer
    result = runner.invoke(export_hf, ["--checkpoint", str(ckpt), "--out", str(tmp_path / "d")])
    assert result.exit_code != 0 and "--tokenizer" in result.output
    result = runner.invoke(export_hf, ["--out", str(tmp_path / "d")])
    assert result.exit_code != 0 and "exactly one of --run or --checkpoint" in result.output
