"""Chat template and special tokens, instruction sets from the corpus, and SFT: masking, learning, resume."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from chat_factory import write_base_run, write_sample_corpus
from click.testing import CliRunner

from common.errors import UserError
from corpus.instructions import InstructionConfig, make_instructions, read_paragraphs, score_reply
from ptgpt.cli import main
from training import checkpoint as ckpt
from training.chat import (
    SPECIAL_TOKENS,
    add_chat_tokens,
    decode_chat,
    encode_chat,
    fit_history,
    load_chat_session,
    load_chat_tokenizer,
    parse_chat,
    render_chat,
)
from training.metrics import read_metrics
from training.model import IGNORE_INDEX
from training.sft import SFTConfig, collate, encode_examples, read_conversations, sft

CONVERSATION = [
    {"role": "system", "content": "Responde em português."},
    {"role": "user", "content": "Quem escreveu «Os Lusíadas»? <|end|> não é um token aqui"},
    {"role": "assistant", "content": "Luís de Camões, em 1572.\n\nUm poema épico."},
    {"role": "user", "content": "E depois?"},
    {"role": "assistant", "content": "Ninguém sabe…"},
]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    return write_sample_corpus(tmp_path_factory.mktemp("corpus"))


@pytest.fixture(scope="module")
def tok(corpus):
    return load_chat_tokenizer(corpus / "tokenizer.model")


@pytest.fixture(scope="module")
def base(corpus, tmp_path_factory) -> Path:
    return write_base_run(tmp_path_factory.mktemp("base"), corpus)


def test_special_tokens_follow_the_sentencepiece_pieces(tok):
    assert [tok.special_id(t) for t in SPECIAL_TOKENS] == list(range(tok.base_size, tok.base_size + 4))
    ids, _ = encode_chat(tok, CONVERSATION)
    # user text that spells a special token is encoded as ordinary pieces, never as the token
    user_ids = tok.encode_content(CONVERSATION[1]["content"])
    assert all(i < tok.base_size for i in user_ids)
    assert ids.count(tok.end) == len(CONVERSATION)


def test_template_round_trips_through_text_and_ids(tok):
    plain = [m for m in CONVERSATION if "<|" not in m["content"]]
    text = render_chat(plain)
    assert text.startswith("<s><|system|>Responde") and text.endswith("Ninguém sabe…<|end|>")
    assert parse_chat(text) == plain
    ids, _ = encode_chat(tok, CONVERSATION)
    assert decode_chat(tok, ids) == CONVERSATION  # ids round-trip anything, even text that spells a token
    prompt, _ = encode_chat(tok, CONVERSATION[:2], add_generation_prompt=True)
    assert prompt[-1] == tok.role_id("assistant")
    assert render_chat(CONVERSATION[:2], add_generation_prompt=True).endswith("<|end|><|assistant|>")


def test_only_assistant_tokens_are_targets(tok):
    ids, assistant = encode_chat(tok, CONVERSATION)
    [(inputs, targets)] = encode_examples(tok, [CONVERSATION], max_len=1000)[0]
    assert inputs == ids[:-1]
    scored = [t for t in targets if t != IGNORE_INDEX]
    expected = []
    for m in CONVERSATION:
        if m["role"] == "assistant":
            expected += tok.encode_content(m["content"]) + [tok.end]
    assert scored == expected  # the replies and their <|end|>: nothing of the system or user turns
    # a padded batch: padding is never a target either
    x, y = collate(encode_examples(tok, [CONVERSATION, CONVERSATION[:3]], 1000)[0], tok.eos)
    assert (
        x.shape == y.shape and (y[1, len(encode_chat(tok, CONVERSATION[:3])[0]) - 1 :] == IGNORE_INDEX).all()
    )


def test_loss_ignores_prompt_tokens(tok, base):
    """The loss is the cross-entropy of the reply tokens alone: a prompt's own tokens never count."""
    model = add_chat_tokens(ckpt.load_model(base), tok)
    a = [{"role": "user", "content": "Olá, tudo bem?"}, {"role": "assistant", "content": "Bom dia."}]
    [(x, y)] = encode_examples(tok, [a], 100)[0]
    x, y = torch.tensor([x]), torch.tensor([y])
    scored = y[0] != IGNORE_INDEX
    assert int(scored.sum()) == len(tok.encode_content("Bom dia.")) + 1
    logits = model(x).logits[0]
    manual = torch.nn.functional.cross_entropy(logits[scored], y[0][scored])
    assert model(x, y).loss.item() == pytest.approx(manual.item(), rel=1e-5)
    unmasked = torch.nn.functional.cross_entropy(logits[:-1], x[0][1:])
    assert abs(unmasked.item() - manual.item()) > 1e-3  # the prompt would have changed it


def test_added_rows_leave_ordinary_text_unchanged(tok, base):
    model = ckpt.load_model(base)
    grown = add_chat_tokens(model, tok)
    assert grown.config.vocab_size == tok.base_size + len(SPECIAL_TOKENS)
    x = torch.tensor([[tok.bos, *tok.encode("Era uma vez um rei que tinha três filhas.")]])
    before, after = model(x).logits, grown(x).logits
    assert torch.equal(before, after[..., : tok.base_size])  # every ordinary logit is bit-identical
    p_new = after.softmax(-1)[..., tok.base_size :]
    assert (p_new <= 1.0 / tok.base_size + 1e-7).all()  # each new token at most 1/V (Jensen), as documented
    assert torch.equal(before.argmax(-1), after.argmax(-1))


def test_fit_history_drops_oldest_turns_first(tok):
    long = [{"role": "system", "content": "Sê breve."}]
    for i in range(12):
        long += [{"role": "user", "content": f"Pergunta número {i} sobre o rio."}]
        long += [{"role": "assistant", "content": f"Resposta número {i}."}]
    long.append({"role": "user", "content": "E agora?"})
    kept, dropped = fit_history(tok, long, 80)
    assert kept[0] == long[0] and kept[-1] == long[-1] and kept[1]["role"] == "user"
    assert dropped == len(long) - len(kept) > 0
    assert kept[1:] == long[len(long) - len(kept) + 1 :]
    assert len(encode_chat(tok, kept, True)[0]) <= 80


def test_bad_rows_name_the_line_and_fields(tmp_path):
    path = tmp_path / "data.jsonl"
    path.write_text('{"prompt": "a", "response": "b"}\n\n{"prompt": "a", "answer": "b"}\n')
    with pytest.raises(UserError, match=r"line 3: field\(s\) response missing"):
        read_conversations(path)
    path.write_text('{"messages": [{"role": "robot", "content": "x"}]}\n')
    with pytest.raises(UserError, match=r"line 1: messages\[0\].role is 'robot'"):
        read_conversations(path)
    path.write_text("not json\n")
    with pytest.raises(UserError, match="line 1: not JSON"):
        read_conversations(path)


def test_instructions_come_from_the_corpus_and_hold_out_books(corpus):
    paragraphs = read_paragraphs(corpus)
    train, heldout = make_instructions(paragraphs, InstructionConfig(heldout_frac=0.2))
    kinds = {i["kind"] for i in train}
    assert kinds == {"author", "title", "continuation"} and heldout
    titles = {p.title for p in paragraphs}
    authored = [i for i in train + heldout if i["kind"] == "author"]
    assert all(any(f"«{t}»" in i["prompt"] for t in titles) for i in authored)
    train_titles = {i["prompt"] for i in train if i["kind"] == "author"}
    assert not train_titles & {i["prompt"] for i in heldout if i["kind"] == "author"}
    cont = next(i for i in train if i["kind"] == "continuation")
    whole = cont["prompt"].removeprefix("Continue o texto: «").removesuffix("»") + " " + cont["response"]
    assert any(p.text.startswith(whole) for p in paragraphs)  # the real continuation of a real paragraph
    assert score_reply(cont, cont["response"]) and not score_reply(cont, "xyz " + cont["response"])
    item = authored[0]
    assert score_reply(item, item["response"]) and not score_reply(item, "Não sei.")


def sft_config(base: Path, data: Path, run: Path, **kw) -> SFTConfig:
    base_kw = dict(
        batch_size=4, lr=3e-3, warmup_steps=2, checkpoint_every=3, log_every=1, progress=False, plot=False
    )
    return SFTConfig(base=str(base), data=str(data), run_dir=str(run), **{**base_kw, **kw})


def write_items(path: Path, corpus: Path, n: int = 24, kind: str | None = None) -> Path:
    train, _ = make_instructions(read_paragraphs(corpus), InstructionConfig())
    rows = [{"prompt": i["prompt"], "response": i["response"]} for i in train if kind in (None, i["kind"])][
        :n
    ]
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    return path


def test_sft_learns_replies_and_records_the_template(corpus, base, tmp_path):
    data = write_items(tmp_path / "data.jsonl", corpus, n=4, kind="author")
    summary = sft(sft_config(base, data, tmp_path / "sft", max_steps=25, lr=1e-2, checkpoint_every=25))
    losses = [r["loss"] for r in read_metrics(tmp_path / "sft")]
    assert len(losses) == 25 and losses[-1] < 0.5 * losses[0]
    meta = ckpt.read_checkpoint_config(summary["checkpoint"])
    assert meta["chat"]["special_tokens"]["<|end|>"] == load_chat_tokenizer(meta["tokenizer_path"]).end
    session = load_chat_session(tmp_path / "sft")
    assert session.model.config.vocab_size == session.tok.vocab_size


def test_sft_resume_is_exact(corpus, base, tmp_path):
    data = write_items(tmp_path / "data.jsonl", corpus)
    straight = sft(sft_config(base, data, tmp_path / "straight", max_steps=6))
    sft(sft_config(base, data, tmp_path / "resumed", max_steps=3))
    assert [s for s, _ in ckpt.list_step_dirs(tmp_path / "resumed")] == [3]
    resumed = sft(sft_config(base, data, tmp_path / "resumed", max_steps=6))
    assert resumed["start_step"] == 3
    a = {r["step"]: r["loss"] for r in read_metrics(tmp_path / "straight")}
    b = {r["step"]: r["loss"] for r in read_metrics(tmp_path / "resumed")}
    assert a == b
    wa = ckpt.load_model(straight["checkpoint"]).state_dict()
    wb = ckpt.load_model(resumed["checkpoint"]).state_dict()
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


def test_cli_sft_builtin_then_chat(corpus, base, tmp_path):
    run = tmp_path / "sft"
    args = ["sft", "--base", str(base), "--data", "builtin", "--run", str(run), "--max-steps", "4"]
    result = CliRunner().invoke(
        main, [*args, "--batch-size", "4", "--score-items", "6", "--threads", "1", "--quiet"]
    )
    assert result.exit_code == 0, result.output
    assert (
        run / "instructions" / "train.jsonl"
    ).is_file() and "held-out instructions (6 items" in result.output
    scores = json.loads((run / "heldout_scores.json").read_text())
    assert scores["items"] == 6 and set(scores) == {"items", "base", "tuned"}
    result = CliRunner().invoke(
        main, ["chat", "--run", str(run), "--prompt", "Olá", "--seed", "1", "--max-new-tokens", "8"]
    )
    assert result.exit_code == 0, result.output
    again = CliRunner().invoke(
        main, ["chat", "--run", str(run), "--prompt", "Olá", "--seed", "1", "--max-new-tokens", "8"]
    )
    assert again.output == result.output  # seeded: the same reply


def test_cli_sft_reports_a_bad_row(base, tmp_path):
    data = tmp_path / "bad.jsonl"
    data.write_text('{"prompt": "a", "response": "b"}\n{"question": "a"}\n')
    result = CliRunner().invoke(
        main, ["sft", "--base", str(base), "--data", str(data), "--run", str(tmp_path / "r")]
    )
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert "Error:" in result.output and "line 2" in result.output


def test_demo_ends_with_a_chat_exchange(base, tmp_path, capsys):
    from ptgpt.cli.chat import demo_chat

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        chat = demo_chat(base, tmp_path / "sft", max_steps=2, score_items=4)
    finally:
        torch.set_num_threads(threads)
    assert capsys.readouterr().out == ""  # the demo prints the exchange on its final screen
    assert chat["report"]["items"] == 4 and set(chat["report"]) == {"items", "base", "tuned"}
    assert "Quem" in chat["question"] or "«" in chat["question"]
    assert chat["expected"] and isinstance(chat["right"], bool) and isinstance(chat["reply"], str)


def test_chat_repl_keeps_history_drops_old_turns_and_resets(corpus, base, tmp_path):
    from training.chat import chat_metadata

    tok = load_chat_tokenizer(corpus / "tokenizer.model")
    model = add_chat_tokens(ckpt.load_model(base), tok)
    run = tmp_path / "chat"
    ckpt.save_model(model, run, extra={"tokenizer_path": tok.path, "chat": chat_metadata(tok)})
    long = "Era uma vez um rei que tinha três filhas muito bonitas e um castelo. " * 2
    session = "\n".join([long, long, long, "/reset", "Olá", "/quit"]) + "\n"
    args = ["chat", "--run", str(run), "--max-new-tokens", "30", "--seed", "0"]
    result = CliRunner().invoke(main, args, input=session)
    assert result.exit_code == 0, result.output
    assert "oldest message(s) dropped to fit the 160-token context" in result.output
    assert "[conversation reset]" in result.output
    assert result.output.count("> ") >= 5  # one prompt per line read
    too_long = CliRunner().invoke(main, [*args, "--prompt", "palavra " * 300])
    assert too_long.exit_code == 1 and "Traceback" not in too_long.output  # refused: not a success
    assert too_long.output.startswith("Error: --prompt:") and "context" in too_long.output
    assert too_long.output.count("\n") == 1


def test_chat_refuses_a_model_that_was_not_tuned(base):
    result = CliRunner().invoke(main, ["chat", "--run", str(base), "--prompt", "Olá"])
    assert result.exit_code == 1 and "Error:" in result.output and "sft" in result.output


def test_sft_sigterm_checkpoints_then_resumes_exactly(corpus, base, tmp_path):
    """SIGTERM mid-run: the step finishes, a checkpoint is written (none was due), exit 143; the
    rerun continues to the same losses and weights as a run never stopped."""
    import os
    import signal
    import subprocess
    import sys
    import time

    data = write_items(tmp_path / "data.jsonl", corpus)
    straight = sft(sft_config(base, data, tmp_path / "straight", max_steps=200, checkpoint_every=1000))
    run = tmp_path / "stopped"
    argv = ["--base", str(base), "--data", str(data), "--run-dir", str(run), "--max-steps", "200"]
    argv += ["--batch-size", "4", "--lr", "0.003", "--warmup-steps", "2", "--checkpoint-every", "1000"]
    argv += ["--log-every", "1", "--progress", "false", "--plot", "false"]
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    proc = subprocess.Popen(
        [sys.executable, "-m", "training.sft", *argv],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    metrics = run / "metrics.jsonl"
    for _ in range(600):  # wait until it trains, then stop it mid-run
        if metrics.is_file() and len(metrics.read_text().splitlines()) >= 5:
            break
        time.sleep(0.1)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signal.SIGTERM, err[-2000:]
    steps = [s for s, _ in ckpt.list_step_dirs(run)]
    assert len(steps) == 1 and 5 <= steps[0] < 200
    resumed = sft(sft_config(base, data, run, max_steps=200, checkpoint_every=1000))
    assert resumed["start_step"] == steps[0]
    a = {r["step"]: r["loss"] for r in read_metrics(tmp_path / "straight")}
    b = {r["step"]: r["loss"] for r in read_metrics(run)}
    assert a == b
    wa = ckpt.load_model(straight["checkpoint"]).state_dict()
    wb = ckpt.load_model(resumed["checkpoint"]).state_dict()
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


@pytest.mark.slow
def test_sft_under_torchrun_matches_one_process(corpus, base, tmp_path):
    """Two gloo processes each take half of every global batch of 8; one process with batch 8 sees
    the same conversations, so the losses agree up to float summation order."""
    import os

    from training.launch import run_launcher, torchrun_command

    data = write_items(tmp_path / "data.jsonl", corpus)
    single = sft(sft_config(base, data, tmp_path / "single", max_steps=4, batch_size=8, threads=1))
    argv = ["--base", str(base), "--data", str(data), "--run-dir", str(tmp_path / "ddp"), "--max-steps", "4"]
    argv += ["--batch-size", "4", "--lr", "0.003", "--warmup-steps", "2", "--checkpoint-every", "3"]
    argv += ["--log-every", "1", "--progress", "false", "--plot", "false", "--threads", "1"]
    os.environ["PYTHONPATH"] = str(Path(__file__).resolve().parents[1])
    code, summary = run_launcher(torchrun_command("training.sft", 2, argv))
    assert code == 0 and summary["step"] == 4
    a = [r["loss"] for r in read_metrics(tmp_path / "single")]
    b = [r["loss"] for r in read_metrics(tmp_path / "ddp")]
    assert len(a) == len(b) == 4
    assert all(abs(x - y) < 2e-2 * max(1.0, abs(x)) for x, y in zip(a, b, strict=True))
    assert single["step"] == 4


def test_sft_refuses_a_non_utf8_file_with_its_line(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_bytes(b'{"prompt": "ok", "response": "ok"}\n{"prompt": "caf\xe9", "response": "x"}\n')
    with pytest.raises(UserError, match="line 2: not UTF-8"):
        read_conversations(path)
