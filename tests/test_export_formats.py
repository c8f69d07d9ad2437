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
               "choice_baselines": {"chance": 0.25, "unigram": 0.297}}  # fmt: skip
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
    assert (
        result.exit_code == 1 and result.output.startswith("Error: ") and len(result.output.splitlines()) == 1
    )
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
    )["results"]
    assert results["ptgpt_choice"]["acc,none"] == ours["choice_acc"]
    assert results["ptgpt_lastword"]["acc,none"] == ours["lastword_acc"]
    assert 0 < ours["lastword_acc"] < 1 and 0 < ours["choice_acc"] < 1  # a figure that can differ


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
