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
