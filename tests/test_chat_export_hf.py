"""export-hf of a chat model: transformers' apply_chat_template + generate give our ids and our reply."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from chat_factory import book_paragraphs, write_base_run, write_sample_corpus
from click.testing import CliRunner

from fakegutenberg.books import sample_books
from ptgpt.cli import main
from training.chat import (
    SamplingConfig,
    add_chat_tokens,
    chat_metadata,
    encode_chat,
    load_chat_tokenizer,
    stream_text,
    stream_tokens,
)
from training.checkpoint import load_model, read_checkpoint_config, save_model

transformers = pytest.importorskip("transformers")

CONVERSATION = [
    {"role": "system", "content": "Responde em português."},
    {"role": "user", "content": "Quem escreveu «Os Lusíadas»?"},
    {"role": "assistant", "content": "Luís de Camões."},
    {"role": "user", "content": " E depois, o que aconteceu? "},
]


@pytest.fixture(scope="module")
def exported(tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("chat-hf")
    corpus = write_sample_corpus(root / "corpus", n_extra=0)
    base = write_base_run(root / "base", corpus)
    meta = read_checkpoint_config(base)
    tok = load_chat_tokenizer(meta["tokenizer_path"])
    torch.manual_seed(1)
    model = add_chat_tokens(load_model(base), tok)
    with torch.no_grad():  # make <|end|> reachable, so the stop condition is exercised too
        model.lm_head.weight[tok.end] += 0.05 * torch.randn_like(model.lm_head.weight[tok.end])
    chat = save_model(
        model, root / "chat", extra={"tokenizer_path": meta["tokenizer_path"], "chat": chat_metadata(tok)}
    )
    result = CliRunner().invoke(main, ["export-hf", "--checkpoint", str(chat), "--out", str(root / "hf")])
    assert result.exit_code == 0, result.output
    return chat, root / "hf"


def test_tokenizer_config_carries_the_template(exported):
    chat, hf = exported
    config = json.loads((hf / "tokenizer_config.json").read_text())
    special = read_checkpoint_config(chat)["chat"]["special_tokens"]
    assert "chat_template" in config or (hf / "chat_template.jinja").is_file()
    tokenizer = transformers.AutoTokenizer.from_pretrained(str(hf))
    assert {t: tokenizer.convert_tokens_to_ids(t) for t in special} == special
    assert special["<|end|>"] in json.loads((hf / "generation_config.json").read_text())["eos_token_id"]


def test_apply_chat_template_gives_our_ids(exported):
    chat, hf = exported
    tok = load_chat_tokenizer(read_checkpoint_config(chat)["tokenizer_path"])
    tokenizer = transformers.AutoTokenizer.from_pretrained(str(hf))
    texts = [p for b in sample_books(extra=2) for p in book_paragraphs(b)][:120] + [
        "  dois espaços",
        "\n\nlinha",
        "",
    ]
    for text in texts:
        messages = [
            *CONVERSATION[:2],
            {"role": "assistant", "content": text},
            {"role": "user", "content": text[::-1]},
        ]
        ours, _ = encode_chat(tok, messages, add_generation_prompt=True)
        theirs = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
        theirs = theirs["input_ids"] if hasattr(theirs, "keys") else theirs
        assert list(theirs) == ours, text


def test_generate_gives_our_reply(exported):
    chat, hf = exported
    tok = load_chat_tokenizer(read_checkpoint_config(chat)["tokenizer_path"])
    ours_model = load_model(chat).eval()
    prompt, _ = encode_chat(tok, CONVERSATION, add_generation_prompt=True)
    sampling = SamplingConfig(max_new_tokens=24, temperature=0.0, top_k=None)
    ours = list(stream_tokens(ours_model, prompt, {tok.end, tok.eos}, sampling))

    tokenizer = transformers.AutoTokenizer.from_pretrained(str(hf))
    model = transformers.AutoModelForCausalLM.from_pretrained(str(hf)).eval()
    ids = tokenizer.apply_chat_template(
        CONVERSATION, add_generation_prompt=True, return_tensors="pt", return_dict=True
    )
    out = model.generate(**ids, max_new_tokens=24, do_sample=False)
    theirs = out[0, ids["input_ids"].shape[1] :].tolist()
    stops = {tok.end, tok.eos}
    if theirs and theirs[-1] in stops:  # transformers keeps the stop token; we do not emit it
        theirs = theirs[:-1]
    assert theirs == ours and len(ours) > 0  # the same reply, token for token


def our_reply(chat: Path, max_new_tokens: int = 24) -> str:
    tok = load_chat_tokenizer(read_checkpoint_config(chat)["tokenizer_path"])
    prompt, _ = encode_chat(tok, CONVERSATION, add_generation_prompt=True)
    sampling = SamplingConfig(max_new_tokens=max_new_tokens, temperature=0.0, top_k=None)
    return "".join(
        stream_text(tok, stream_tokens(load_model(chat).eval(), prompt, {tok.end, tok.eos}, sampling))
    )


def without_bytes(chat: Path, tmp_path: Path) -> Path:
    """The chat checkpoint with byte pieces kept out of replies (saved under tmp_path)."""
    meta = read_checkpoint_config(chat)
    tok = load_chat_tokenizer(meta["tokenizer_path"])
    model = load_model(chat)
    with torch.no_grad():
        for i in range(tok.base_size):
            if tok.sp.is_byte(i):
                model.lm_head.weight[i] = 0
        model.lm_head.weight[: tok.base_size] *= 5
    return save_model(model, tmp_path / "words", extra={k: meta[k] for k in ("tokenizer_path", "chat")})


def test_pipeline_reply_is_our_reply(exported, tmp_path: Path):
    """The reply text of transformers' chat pipeline is ours. Byte pieces are kept out of the reply: a
    random model's invalid UTF-8 is shown with a different number of U+FFFD by each decoder."""
    words = without_bytes(exported[0], tmp_path)
    result = CliRunner().invoke(
        main, ["export-hf", "--checkpoint", str(words), "--out", str(tmp_path / "hf")]
    )
    assert result.exit_code == 0, result.output
    generate = transformers.pipeline("text-generation", model=str(tmp_path / "hf"))
    reply = generate(CONVERSATION, max_new_tokens=24, do_sample=False)[0]["generated_text"][-1]
    ours = our_reply(words)
    assert reply["role"] == "assistant" and reply["content"] == ours and len(ours) > 3


@pytest.mark.slow
def test_llama_cpp_chat_completion_is_our_reply(exported, tmp_path: Path):
    pytest.importorskip("gguf")
    llama_cpp = pytest.importorskip("llama_cpp")
    chat = without_bytes(exported[0], tmp_path)  # invalid UTF-8 is shown differently by each decoder
    result = CliRunner().invoke(
        main, ["export-gguf", "--checkpoint", str(chat), "--out", str(tmp_path / "c.gguf")]
    )
    assert result.exit_code == 0, result.output
    assert 'PARAMETER stop "<|end|>"' in (tmp_path / "c.Modelfile").read_text()
    tok = load_chat_tokenizer(read_checkpoint_config(chat)["tokenizer_path"])
    llm = llama_cpp.Llama(str(tmp_path / "c.gguf"), n_ctx=256, verbose=False, n_threads=1)
    ours_ids, _ = encode_chat(tok, CONVERSATION, add_generation_prompt=True)
    rendered = (
        "<s>" + "".join(f"<|{m['role']}|>{m['content']}<|end|>" for m in CONVERSATION) + "<|assistant|>"
    )
    assert llm.tokenize(rendered.encode(), add_bos=False, special=True) == ours_ids
    out = llm.create_chat_completion(messages=CONVERSATION, max_tokens=24, temperature=0.0, top_k=1)
    assert out["choices"][0]["message"]["content"] == our_reply(chat)
