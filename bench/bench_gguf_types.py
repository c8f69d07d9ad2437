"""How far f16 and q8_0 GGUF weights move a model from f32: logits and greedy tokens (no llama.cpp needed).

Exports a model with `ptgpt export-gguf`'s writer, reads the file back with gguf's reader, dequantizes,
puts the weights back into a GPT (undoing the RoPE row order and the expert stacking) and compares with
the original. llama.cpp's q8_0 matmul also rounds activations to 8 bits, so its own figures are a little
worse than these weight-only ones.

    python bench/bench_gguf_types.py [--checkpoint DIR] [--tokens 64]
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import gguf
import numpy as np
import torch

from export.gguf import architecture, write_gguf
from training.checkpoint import load_model, read_checkpoint_config
from training.model import GPT, ModelConfig, MoE


def from_pair_rope(w: torch.Tensor, n_heads: int) -> torch.Tensor:
    hd = w.shape[0] // n_heads
    return w.reshape(n_heads, hd // 2, 2, -1).transpose(1, 2).reshape(w.shape)


def load_gguf_into(model: GPT, path: Path) -> GPT:
    reader = gguf.GGUFReader(str(path))
    t = {}
    for x in reader.tensors:
        data = gguf.quants.dequantize(x.data, x.tensor_type)
        t[x.name] = torch.from_numpy(
            np.array(data, dtype=np.float32).reshape([int(d) for d in reversed(x.shape)])
        )
    c, llama = model.config, architecture(model) == "llama"
    with torch.no_grad():
        model.tok_emb.weight.copy_(t["token_embd.weight"])
        if not c.tie_embeddings:
            model.lm_head.weight.copy_(t["output.weight"])
        for i, b in enumerate(model.blocks):
            p = f"blk.{i}."
            q, k = t[p + "attn_q.weight"], t[p + "attn_k.weight"]
            if llama:
                q, k = from_pair_rope(q, c.n_head), from_pair_rope(k, c.n_kv_head)
            b.attn.q_proj.weight.copy_(q)
            b.attn.k_proj.weight.copy_(k)
            b.attn.v_proj.weight.copy_(t[p + "attn_v.weight"])
            b.attn.o_proj.weight.copy_(t[p + "attn_output.weight"])
            if isinstance(b.mlp, MoE):
                h = b.mlp.hidden
                b.mlp.w_in[:, :, :h].copy_(t[p + "ffn_gate_exps.weight"].transpose(1, 2))
                b.mlp.w_in[:, :, h:].copy_(t[p + "ffn_up_exps.weight"].transpose(1, 2))
                b.mlp.w_out.copy_(t[p + "ffn_down_exps.weight"].transpose(1, 2))
            else:
                for ours, theirs in (
                    ("gate_proj", "ffn_gate"),
                    ("up_proj", "ffn_up"),
                    ("down_proj", "ffn_down"),
                ):
                    getattr(b.mlp, ours).weight.copy_(t[p + theirs + ".weight"])
    return model


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--checkpoint", type=Path, help="a checkpoint [default: a random `small` model]")
    ap.add_argument("--tokenizer", type=Path, default=None)
    ap.add_argument("--tokens", type=int, default=64)
    args = ap.parse_args()
    torch.manual_seed(0)
    if args.checkpoint:
        model = load_model(args.checkpoint).eval()
        tokenizer = args.tokenizer or Path(read_checkpoint_config(args.checkpoint)["tokenizer_path"])
    else:
        if args.tokenizer is None:
            raise SystemExit("a random model needs --tokenizer (any SentencePiece model of <= 8000 pieces)")
        import sentencepiece as spm

        n = spm.SentencePieceProcessor(model_file=str(args.tokenizer)).get_piece_size()
        model = GPT(ModelConfig.preset("small", vocab_size=n)).eval()
        tokenizer = args.tokenizer
    prompt = torch.randint(4, 200, (1, 16))
    with torch.no_grad():
        ref_logits = model(prompt).logits
        ref = model.generate(prompt, args.tokens, temperature=0.0)[0, 16:]
    with tempfile.TemporaryDirectory() as tmp:
        for qtype in ("f32", "f16", "q8_0"):
            path = Path(tmp) / f"m-{qtype}.gguf"
            write_gguf(model, path, tokenizer, qtype)
            other = load_gguf_into(GPT(model.config).eval(), path)
            with torch.no_grad():
                diff = float((other(prompt).logits - ref_logits).abs().max())
                toks = other.generate(prompt, args.tokens, temperature=0.0)[0, 16:]
            first = int((toks != ref).nonzero()[0]) if bool((toks != ref).any()) else len(ref)
            print(
                f"{qtype:5s} {path.stat().st_size / 2**20:7.2f} MiB  max|logit diff| {diff:.2e}  "
                f"greedy tokens equal {int((toks == ref).sum())}/{len(ref)} (first difference at {first})"
            )


if __name__ == "__main__":
    main()
