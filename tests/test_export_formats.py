"""Exports through the real CLI: the pipeline text equals ptgpt's, the model card parses, lm_eval scores
the eval items as `ptgpt eval` does, llama.cpp runs the GGUF file token for token, and --overwrite
replaces only an earlier export."""

from __future__ import annotations

import json
import stat
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from corpus.build import CorpusConfig, build_corpus
from corpus.split import SplitConfig
from corpus.tokenizer import TokenizerConfig
from export.output import MARKER
from ptgpt.cli import main
from training.checkpoint import save_model
from training.data import CorpusInfo
from training.evaluate import generate_samples, load_tokenizer
from training.model import GPT, ModelConfig

PROMPT = "Era uma vez"


@pytest.fixture(autouse=True)
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    from fakegutenberg.books import sample_books

    root = tmp_path_factory.mktemp("export")
    raw = root / "raw"
    raw.mkdir()
    for book in sample_books(extra=12, extra_kb=8):
        (raw / f"{book.id}.txt").write_bytes(book.raw_bytes())
    split = SplitConfig(validation_fraction=0.2, test_fraction=0.3)
    build_corpus(raw, root / "corpus", CorpusConfig(split=split, tokenizer=TokenizerConfig(vocab_size=600)),
                 workers=1, progress=False)  # fmt: skip
    return root / "corpus"


def word_start_model(corpus: Path, seed: int = 0, **overrides) -> GPT:
    """A random model whose output layer only reaches pieces that start a word (`▁...`), so every greedy
    token brings a space: the case that once lost the space between prompt and continuation."""
    info = CorpusInfo.from_dir(corpus)
    sp = load_tokenizer(info.tokenizer_path)
    config = dict(n_layer=2, n_embd=64, n_head=4, n_kv_head=2, mlp_hidden=128, max_seq_len=512)
    torch.manual_seed(seed)
    model = GPT(ModelConfig(vocab_size=info.vocab_size, **{**config, **overrides})).eval()
    keep = torch.tensor([sp.id_to_piece(i).startswith("▁") and len(sp.id_to_piece(i)) > 1
                         for i in range(info.vocab_size)])  # fmt: skip
    with torch.no_grad():
        model.tok_emb.weight.mul_(20)
        model.lm_head.weight[~keep] = 0
        model.lm_head.weight[keep] *= 30
    return model


def write_run(run: Path, model: GPT, corpus: Path, step: int = 10) -> Path:
    info = CorpusInfo.from_dir(corpus)
    ckpt = save_model(model, run / "checkpoints" / f"step_{step:07d}",
                      extra={"tokenizer_path": str(info.tokenizer_path), "corpus": str(corpus)})  # fmt: skip
    (ckpt / "trainer.json").write_text(json.dumps({"step": step, "tokens_seen": 81920}))
    return ckpt


def cli(*args: str) -> str:
    result = CliRunner().invoke(main, [str(a) for a in args])
    assert result.exit_code == 0, result.output
    return result.output


def tree(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_pipeline_text_equals_ptgpt_and_the_card_parses(corpus: Path, tmp_path: Path) -> None:
    transformers = pytest.importorskip("transformers")
    from huggingface_hub import ModelCard

    model = word_start_model(corpus)
    write_run(tmp_path / "run", model, corpus)
    cli("export-hf", "--run", tmp_path / "run", "--out", tmp_path / "hf")
    sp = load_tokenizer(CorpusInfo.from_dir(corpus).tokenizer_path)
    [ours] = generate_samples(model, sp, [PROMPT], max_new_tokens=12, temperature=0.0, top_k=None)
    generate = transformers.pipeline("text-generation", model=str(tmp_path / "hf"))
    theirs = generate(PROMPT, max_new_tokens=12, do_sample=False)[0]["generated_text"]
    assert ours.startswith(PROMPT + " ") and theirs == ours

    card = ModelCard.load(tmp_path / "hf" / "README.md")
    assert card.data.language == ["pt"] and card.data.license == "mit"
    assert card.data.datasets and "ptgpt" in card.data.tags
    assert "81,920" in card.text  # tokens seen
    for how in ("transformers", "llama.cpp", "Ollama", "Limitations"):
        assert how in card.text
    mode = (tmp_path / "hf").stat().st_mode
    assert mode & stat.S_IROTH and mode & stat.S_IXOTH  # not the 0700 of a temporary folder
    assert all(p.stat().st_mode & stat.S_IROTH for p in (tmp_path / "hf").iterdir())


def test_card_carries_the_recorded_eval_with_its_baselines(corpus: Path, tmp_path: Path) -> None:
    pytest.importorskip("huggingface_hub")
    from huggingface_hub import ModelCard

    write_run(tmp_path / "run", word_start_model(corpus), corpus)
    figures = {"lastword_acc": 0.125, "lastword_n": 64, "lastword_baselines": {"chance": 0.0,
               "most_frequent_context_word": 0.031}, "choice_acc": 0.406, "choice_n": 64,
               "choice_baselines": {"chance": 0.25, "unigram": 0.297, "overlap": 0.47}}  # fmt: skip
    (tmp_path / "eval.json").write_text(json.dumps(figures))
    cli(
        "export-hf",
        "--run",
        tmp_path / "run",
        "--out",
        tmp_path / "hf",
        "--eval-json",
        tmp_path / "eval.json",
    )
    text = ModelCard.load(tmp_path / "hf" / "README.md").text
    for figure in ("0.125", "0.031", "0.406", "0.250", "0.297"):
        assert f"| {figure}" in text
    assert "0.297 (word unigram), 0.470 (context overlap)" in text  # every baseline, not only the weakest


OVERWRITE_CASES = {
    "a corpus": {"manifest.json": b"{}", "train/part-00000.parquet": b"PAR1...PAR1"},
    "a training run": {"metrics.jsonl": b'{"step": 1}\n', "checkpoints/step_0000001/model.safetensors": b"x"},
    "a folder of notes": {"notas.txt": b"minhas notas"},
    "a folder with a marker-like name inside": {"sub/" + MARKER: b"{}"},
}


@pytest.mark.parametrize("case", list(OVERWRITE_CASES))
def test_overwrite_never_replaces_what_no_export_wrote(case: str, corpus: Path, tmp_path: Path) -> None:
    write_run(tmp_path / "run", word_start_model(corpus), corpus)
    target = tmp_path / "target"
    for name, data in OVERWRITE_CASES[case].items():
        (target / name).parent.mkdir(parents=True, exist_ok=True)
        (target / name).write_bytes(data)
    before = tree(target)
    result = CliRunner().invoke(main, ["export-hf", "--run", str(tmp_path / "run"), "--out", str(target),
                                       "--overwrite"])  # fmt: skip
    errors = [line for line in result.output.splitlines() if line.startswith("Error: ")]
    assert result.exit_code == 1 and len(errors) == 1 and "Traceback" not in result.output
    assert "never replaced" in result.output
    assert tree(target) == before


def test_overwrite_replaces_an_earlier_export_and_gguf_only_a_gguf(corpus: Path, tmp_path: Path) -> None:
    write_run(tmp_path / "run", word_start_model(corpus), corpus)
    out = tmp_path / "hf"
    cli("export-hf", "--run", tmp_path / "run", "--out", out)
    (out / "stale.txt").write_text("from the earlier export")
    result = CliRunner().invoke(main, ["export-hf", "--run", str(tmp_path / "run"), "--out", str(out)])
    assert result.exit_code == 1 and "--overwrite" in result.output
    cli("export-hf", "--run", tmp_path / "run", "--out", out, "--overwrite")
    assert (out / MARKER).is_file() and not (out / "stale.txt").exists()

    pytest.importorskip("gguf")
    notes = tmp_path / "notes.gguf"
    notes.write_text("not a model")
    result = CliRunner().invoke(main, ["export-gguf", "--run", str(tmp_path / "run"), "--out", str(notes),
                                       "--overwrite"])  # fmt: skip
    assert result.exit_code == 1 and "not a GGUF file" in result.output and notes.read_text() == "not a model"
    cli("export-gguf", "--run", tmp_path / "run", "--out", tmp_path / "m.gguf")
    cli(
        "export-gguf",
        "--run",
        tmp_path / "run",
        "--out",
        tmp_path / "m.gguf",
        "--overwrite",
        "--type",
        "q8_0",
    )
    assert (tmp_path / "m.Modelfile").read_text().startswith("FROM ./m.gguf")
    assert (tmp_path / "m.gguf").stat().st_mode & stat.S_IROTH


@pytest.mark.slow
def test_lm_eval_accuracy_equals_ptgpt_eval(corpus: Path, tmp_path: Path) -> None:
    pytest.importorskip("transformers")
    lm_eval = pytest.importorskip("lm_eval")
    from lm_eval.tasks import TaskManager

    model = word_start_model(corpus, seed=3)
    with torch.no_grad():  # not only word starts: lastword needs words of several pieces
        model.lm_head.weight.add_(0.5 * torch.randn_like(model.lm_head.weight))
    write_run(tmp_path / "run", model, corpus)
    cli("export-hf", "--run", tmp_path / "run", "--out", tmp_path / "hf")
    cli(
        "eval",
        "--run",
        tmp_path / "run",
        "--tasks",
        "lastword,choice",
        "--quick",
        "--json",
        tmp_path / "e.json",
    )
    ours = json.loads((tmp_path / "e.json").read_text())
    cli("eval", "--run", tmp_path / "run", "--quick", "--lm-eval-tasks", tmp_path / "tasks")
    assert (
        json.loads((tmp_path / "tasks" / "ptgpt_choice.yaml").read_text().split("seed: ")[1].split()[0])
        == 1234
    )
    results = lm_eval.simple_evaluate(
        model="hf",
        model_args=f"pretrained={tmp_path / 'hf'},dtype=float32",
        tasks=["ptgpt_lastword", "ptgpt_choice"],
        task_manager=TaskManager(include_path=str(tmp_path / "tasks")),
        batch_size=1,
        device="cpu",
        log_samples=True,
    )
    figures = results["results"]
    assert figures["ptgpt_choice"]["acc,none"] == ours["choice_acc"]  # PMI per byte, the headline
    assert figures["ptgpt_choice"]["acc_per_byte,none"] == ours["choice_acc_per_byte"]
    assert figures["ptgpt_lastword"]["acc,none"] == ours["lastword_acc"]
    # item by item: lm_eval generates what ptgpt generates (accuracy alone is 0 for a random model)
    from training.eval_tasks import QUICK, first_word, load_items, score_lastword

    lastword, _ = load_items(corpus, QUICK)
    sp = load_tokenizer(CorpusInfo.from_dir(corpus).tokenizer_path)
    predictions = score_lastword(model, sp, lastword)["predictions"]
    samples = sorted(results["samples"]["ptgpt_lastword"], key=lambda s: s["doc_id"])
    assert [first_word(s["filtered_resps"][0]) for s in samples] == predictions
    assert len(set(predictions)) > 5 and 0 < ours["choice_acc"] < 1


GGUF_CASES = {
    "dense (llama)": {},
    "moe (llama + experts)": {"n_experts": 4, "top_k": 2, "expert_hidden": 64},
    "qk-norm (qwen3)": {"qk_norm": True},
    "qk-norm moe (qwen3moe)": {"qk_norm": True, "n_experts": 4, "top_k": 2, "expert_hidden": 64},
}


@pytest.mark.slow
@pytest.mark.parametrize("case", list(GGUF_CASES))
def test_llama_cpp_continues_as_ptgpt(case: str, corpus: Path, tmp_path: Path) -> None:
    pytest.importorskip("gguf")
    llama_cpp = pytest.importorskip("llama_cpp")
    import numpy as np

    model = word_start_model(corpus, seed=1, **GGUF_CASES[case])
    with torch.no_grad():
        model.lm_head.weight.add_(0.3 * torch.randn_like(model.lm_head.weight))
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                p.uniform_(0.5, 1.5)
    write_run(tmp_path / "run", model, corpus)
    sp = load_tokenizer(CorpusInfo.from_dir(corpus).tokenizer_path)
    prompt = [sp.bos_id(), *sp.encode(PROMPT + " o menino")]
    ours = model.generate(torch.tensor([prompt]), 24, temperature=0.0)[0, len(prompt) :].tolist()
    with torch.no_grad():
        our_logits = model(torch.tensor([prompt])).logits[0].numpy()
    for qtype in ("f32", "f16", "q8_0"):
        path = tmp_path / f"m-{qtype}.gguf"
        cli("export-gguf", "--run", tmp_path / "run", "--out", path, "--type", qtype)
        llm = llama_cpp.Llama(str(path), n_ctx=512, logits_all=True, verbose=False, n_threads=1)
        assert llm.tokenize(PROMPT.encode() + b" o menino", add_bos=True) == prompt  # same tokenizer
        llm.eval(prompt)
        worst = float(np.abs(np.asarray(llm.scores[: len(prompt)]) - our_logits).max())
        theirs = []
        for t in llm.generate(prompt, temp=0.0, top_k=1, reset=True):
            theirs.append(t)
            if len(theirs) == len(ours):
                break
        same = sum(a == b for a, b in zip(ours, theirs, strict=False))
        print(f"{case} {qtype}: max |logit diff| {worst:.2e}, {same}/{len(ours)} greedy tokens equal")
        if qtype == "f32":
            assert theirs == ours and worst < 1e-3
        else:
            assert worst < 0.5  # f16 / q8_0: close, not equal
        del llm


def pair_rope(x: torch.Tensor, theta: float) -> torch.Tensor:
    """llama.cpp's RoPE for the llama architecture: dimensions 2i and 2i+1 rotate together. x: (T, d)."""
    t, d = x.shape
    inv_freq = 1.0 / theta ** (torch.arange(0, d, 2).float() / d)
    angles = torch.arange(t).float()[:, None] * inv_freq[None, :]
    cos, sin = angles.cos(), angles.sin()
    even, odd = x[:, 0::2], x[:, 1::2]
    return torch.stack([even * cos - odd * sin, odd * cos + even * sin], dim=-1).reshape(t, d)


def test_gguf_file_holds_our_weights_in_llama_cpp_layout(corpus: Path, tmp_path: Path) -> None:
    """Without llama.cpp: read the file back with gguf's reader; the reordered q/k rows under pair RoPE
    give the attention scores ours give under rotate-half RoPE; experts and the vocabulary are in place."""
    gguf = pytest.importorskip("gguf")
    import numpy as np

    from training.model import apply_rope, rope_tables

    model = word_start_model(corpus, seed=2, n_experts=4, top_k=2, expert_hidden=64)
    write_run(tmp_path / "run", model, corpus)
    cli("export-gguf", "--run", tmp_path / "run", "--out", tmp_path / "m.gguf")
    reader = gguf.GGUFReader(str(tmp_path / "m.gguf"))
    tensors = {t.name: torch.from_numpy(np.array(t.data)) for t in reader.tensors}
    field = lambda key: reader.fields[key].contents()  # noqa: E731
    c = model.config
    assert field("general.architecture") == "llama" and field("llama.expert_count") == 4
    sp = load_tokenizer(CorpusInfo.from_dir(corpus).tokenizer_path)
    tokens = field("tokenizer.ggml.tokens")
    assert len(tokens) == c.vocab_size and tokens[: sp.get_piece_size()] == [
        sp.id_to_piece(i) for i in range(sp.get_piece_size())
    ]
    types = field("tokenizer.ggml.token_type")
    assert (
        types[sp.bos_id()] == gguf.TokenType.CONTROL
        and types[sp.piece_to_id("<0x41>")] == gguf.TokenType.BYTE
    )
    assert field("tokenizer.ggml.bos_token_id") == sp.bos_id() and field("tokenizer.ggml.add_space_prefix")

    block = model.blocks[0]
    x = torch.randn(7, c.n_embd)
    cos, sin = rope_tables(7, c.head_dim, c.rope_theta)
    hd = c.head_dim
    for h in range(c.n_head):
        kv = h // (c.n_head // c.n_kv_head)
        with torch.no_grad():
            q = (x @ block.attn.q_proj.weight.T)[:, h * hd : (h + 1) * hd]
            k = (x @ block.attn.k_proj.weight.T)[:, kv * hd : (kv + 1) * hd]
            ours = apply_rope(q[None, None], cos, sin)[0, 0] @ apply_rope(k[None, None], cos, sin)[0, 0].T
        q2 = (x @ tensors["blk.0.attn_q.weight"].T)[:, h * hd : (h + 1) * hd]
        k2 = (x @ tensors["blk.0.attn_k.weight"].T)[:, kv * hd : (kv + 1) * hd]
        theirs = pair_rope(q2, c.rope_theta) @ pair_rope(k2, c.rope_theta).T
        torch.testing.assert_close(theirs, ours, atol=1e-4, rtol=1e-4)
    moe = block.mlp
    e, hid = 3, moe.hidden
    assert tensors["blk.0.ffn_gate_exps.weight"].shape == (c.n_experts, hid, c.n_embd)
    torch.testing.assert_close(tensors["blk.0.ffn_up_exps.weight"][e], moe.w_in[e, :, hid:].T.detach())
    torch.testing.assert_close(tensors["blk.0.ffn_down_exps.weight"][e], moe.w_out[e].T.detach())
    torch.testing.assert_close(tensors["blk.0.ffn_gate_inp.weight"], moe.router.weight.detach())
