"""Export a checkpoint as one GGUF file, the format llama.cpp, Ollama and LM Studio run.

Written with the `gguf` package (llama.cpp's own writer), in architectures llama.cpp already knows:

    dense                  -> "llama"
    MoE (moe_every = 1)    -> "llama" with Mixtral-style experts (ffn_gate_inp + ffn_{gate,up,down}_exps)
    QK-norm, dense / MoE   -> "qwen3" / "qwen3moe" (attn_q_norm / attn_k_norm per head)

RoPE: ours rotates halves (x[:d/2], x[d/2:]), as HF Llama does. llama.cpp's "llama" architecture
rotates adjacent pairs (x[2i], x[2i+1]), so, as llama.cpp's converter does for HF Llama checkpoints,
the rows of each head of W_q and W_k are reordered (first half and second half interleaved): q.k per
head is unchanged, and every other weight stays. Qwen3 rotates halves in llama.cpp too: no reordering.

The vocabulary is the SentencePiece model's pieces with their scores and types (normal, control,
unknown, byte for byte fallback), then the chat tokens of an SFT run (control), then "[PAD{i}]" rows
(unused) if the model's vocab_size was padded beyond them. An SFT run also carries its chat template
(the Jinja transformers uses), and is tokenized without SentencePiece's space prefix so that message
text after a chat token is encoded as ptgpt encodes it (training/chat.py encode_content); a base
model keeps the prefix, so plain text is tokenized as ptgpt tokenizes it.

Types: f32 (exact), f16, q8_0 (8-bit blocks of 32 with one scale). Norm gains and the MoE router stay
f32 in every type (llama.cpp's converter does the same for 1-D tensors).
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import numpy as np
import torch

from common.errors import UserError
from export.output import check_file_target, make_readable
from training.checkpoint import load_model, read_checkpoint_config, unwrap_model
from training.model import GPT, MoE

TYPES = ("f32", "f16", "q8_0")


def reorder_for_pair_rope(w: np.ndarray, n_heads: int) -> np.ndarray:
    """Rows of a q/k projection (n_heads * head_dim, in) from rotate-half to adjacent-pair RoPE order."""
    head_dim = w.shape[0] // n_heads
    return w.reshape(n_heads, 2, head_dim // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def architecture(model: GPT) -> str:
    c = model.config
    if c.qk_norm:
        return "qwen3moe" if c.n_experts else "qwen3"
    return "llama"


def check_gguf_exportable(model: GPT) -> None:
    c = model.config
    if c.mlp != "swiglu":
        raise UserError(
            f"cannot export to GGUF: llama.cpp's llama and qwen3 architectures are SwiGLU only, this "
            f"model's feed-forward is {c.mlp}; train with --mlp swiglu to export"
        )
    if c.n_experts and c.moe_every != 1:
        raise UserError(
            f"cannot export to GGUF: llama.cpp's {architecture(model)} architecture puts an MoE in every "
            f"layer, this model has one every {c.moe_every} layers (moe_every={c.moe_every})"
        )


def gguf_tensors(model: GPT) -> dict[str, np.ndarray]:
    """Our weights under llama.cpp's tensor names, as float32 arrays in PyTorch's (out, in) layout."""
    c = model.config
    arch = architecture(model)

    def a(t: torch.Tensor) -> np.ndarray:
        return t.detach().to("cpu", torch.float32).contiguous().numpy()

    out = {"token_embd.weight": a(model.tok_emb.weight), "output_norm.weight": a(model.norm.weight)}
    if not c.tie_embeddings:
        out["output.weight"] = a(model.lm_head.weight)
    for i, block in enumerate(model.blocks):
        p = f"blk.{i}."
        out[p + "attn_norm.weight"] = a(block.attn_norm.weight)
        out[p + "ffn_norm.weight"] = a(block.mlp_norm.weight)
        q, k = a(block.attn.q_proj.weight), a(block.attn.k_proj.weight)
        if arch == "llama":
            q, k = reorder_for_pair_rope(q, c.n_head), reorder_for_pair_rope(k, c.n_kv_head)
        out[p + "attn_q.weight"], out[p + "attn_k.weight"] = q, k
        out[p + "attn_v.weight"] = a(block.attn.v_proj.weight)
        out[p + "attn_output.weight"] = a(block.attn.o_proj.weight)
        if c.qk_norm:
            out[p + "attn_q_norm.weight"] = a(block.attn.q_norm.weight)
            out[p + "attn_k_norm.weight"] = a(block.attn.k_norm.weight)
        if isinstance(block.mlp, MoE):
            moe, h = block.mlp, block.mlp.hidden
            out[p + "ffn_gate_inp.weight"] = a(moe.router.weight)
            # ours: w_in[e] = [gate | up] as (in, hidden), w_out[e] as (hidden, in); llama.cpp stacks the
            # experts' (out, in) matrices: gate/up (E, hidden, in), down (E, in, hidden)
            out[p + "ffn_gate_exps.weight"] = a(moe.w_in[:, :, :h].transpose(1, 2))
            out[p + "ffn_up_exps.weight"] = a(moe.w_in[:, :, h:].transpose(1, 2))
            out[p + "ffn_down_exps.weight"] = a(moe.w_out.transpose(1, 2))
        else:
            out[p + "ffn_gate.weight"] = a(block.mlp.gate_proj.weight)
            out[p + "ffn_up.weight"] = a(block.mlp.up_proj.weight)
            out[p + "ffn_down.weight"] = a(block.mlp.down_proj.weight)
    return out


def sentencepiece_vocab(
    tokenizer_path: Path, vocab_size: int, chat: dict | None
) -> tuple[list[str], list[float], list[int], dict[str, int], bool]:
    """tokens, scores, token types, special ids (bos/eos/unk/pad) and the model's add_dummy_prefix."""
    import gguf
    import sentencepiece as spm
    from sentencepiece import sentencepiece_model_pb2

    sp = spm.SentencePieceProcessor(model_file=str(tokenizer_path))
    proto = sentencepiece_model_pb2.ModelProto()
    proto.ParseFromString(Path(tokenizer_path).read_bytes())
    T = gguf.TokenType
    tokens, scores, types = [], [], []
    for i in range(sp.get_piece_size()):
        tokens.append(sp.id_to_piece(i))
        scores.append(float(sp.get_score(i)))
        if sp.is_unknown(i):
            types.append(T.UNKNOWN)
        elif sp.is_control(i):
            types.append(T.CONTROL)
        elif sp.is_byte(i):
            types.append(T.BYTE)
        elif sp.is_unused(i):
            types.append(T.UNUSED)
        elif proto.pieces[i].type == proto.pieces[i].USER_DEFINED:
            types.append(T.USER_DEFINED)
        else:
            types.append(T.NORMAL)
    for token, i in sorted((chat or {}).get("special_tokens", {}).items(), key=lambda kv: kv[1]):
        if i != len(tokens):
            raise UserError(f"chat token {token} has id {i}, expected {len(tokens)}: unexpected chat layout")
        tokens.append(token)
        scores.append(0.0)
        types.append(T.CONTROL)
    if len(tokens) > vocab_size:
        raise UserError(f"tokenizer has {len(tokens)} tokens but the model only {vocab_size} embeddings")
    for i in range(len(tokens), vocab_size):
        tokens.append(f"[PAD{i}]")
        scores.append(-1000.0)
        types.append(T.UNUSED)
    special = {"bos": sp.bos_id(), "eos": sp.eos_id(), "unk": sp.unk_id(), "pad": sp.pad_id()}
    return tokens, scores, [int(t) for t in types], special, bool(proto.normalizer_spec.add_dummy_prefix)


def write_gguf(
    model: torch.nn.Module,
    out: Path,
    tokenizer_path: Path,
    qtype: str = "f32",
    name: str = "ptgpt",
    chat: dict | None = None,
) -> None:
    """Write model + tokenizer (+ chat template) to out, a GGUF file (complete or absent: temp + rename)."""
    import gguf

    if qtype not in TYPES:
        raise UserError(f"--type must be one of {', '.join(TYPES)}, got {qtype!r}")
    model = unwrap_model(model)
    check_gguf_exportable(model)
    c = model.config
    arch = architecture(model)
    tokens, scores, types, special, dummy_prefix = sentencepiece_vocab(tokenizer_path, c.vocab_size, chat)
    Q = gguf.GGMLQuantizationType
    weight_type = {"f32": Q.F32, "f16": Q.F16, "q8_0": Q.Q8_0}[qtype]
    file_type = {"f32": gguf.LlamaFileType.ALL_F32, "f16": gguf.LlamaFileType.MOSTLY_F16,
                 "q8_0": gguf.LlamaFileType.MOSTLY_Q8_0}[qtype]  # fmt: skip

    fd, tmp_name = tempfile.mkstemp(dir=out.parent, prefix=f".{out.name}.", suffix=".tmp")
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        w = gguf.GGUFWriter(str(tmp), arch)
        w.add_name(name)
        w.add_file_type(int(file_type))
        w.add_context_length(c.max_seq_len)
        w.add_embedding_length(c.n_embd)
        w.add_block_count(c.n_layer)
        w.add_head_count(c.n_head)
        w.add_head_count_kv(c.n_kv_head)
        w.add_key_length(c.head_dim)
        w.add_value_length(c.head_dim)
        w.add_rope_dimension_count(c.head_dim)
        w.add_rope_freq_base(float(c.rope_theta))
        w.add_layer_norm_rms_eps(float(c.norm_eps))
        w.add_vocab_size(c.vocab_size)
        if c.n_experts:
            w.add_expert_count(c.n_experts)
            w.add_expert_used_count(c.top_k)
            if arch == "qwen3moe":
                w.add_expert_feed_forward_length(c.expert_hidden)
                w.add_feed_forward_length(c.expert_hidden)
            else:  # llama + experts (Mixtral): feed_forward_length is each expert's width
                w.add_feed_forward_length(c.expert_hidden)
        else:
            w.add_feed_forward_length(c.mlp_hidden)
        w.add_tokenizer_model("llama")
        w.add_token_list(tokens)
        w.add_token_scores(scores)
        w.add_token_types(types)
        for key, add in (("bos", w.add_bos_token_id), ("eos", w.add_eos_token_id),
                         ("unk", w.add_unk_token_id), ("pad", w.add_pad_token_id)):  # fmt: skip
            if special[key] >= 0:
                add(special[key])
        w.add_add_bos_token(True)  # every text the model saw started with BOS
        w.add_add_eos_token(False)
        w.add_add_space_prefix(dummy_prefix and chat is None)
        if chat is not None:
            w.add_chat_template(chat["hf_chat_template"])
            w.add_eos_token_id(chat["special_tokens"]["<|end|>"])  # a reply ends at <|end|>
        for tensor_name, data in gguf_tensors(model).items():
            if data.ndim == 1 or tensor_name.endswith("ffn_gate_inp.weight") or weight_type == Q.F32:
                w.add_tensor(tensor_name, data)
            elif weight_type == Q.F16:
                w.add_tensor(tensor_name, data.astype(np.float16))
            else:
                try:
                    w.add_tensor(tensor_name, gguf.quants.quantize(data, Q.Q8_0), raw_dtype=Q.Q8_0)
                except gguf.QuantError:  # a row not a multiple of 32: f16 instead
                    w.add_tensor(tensor_name, data.astype(np.float16))
        w.write_header_to_file()
        w.write_kv_data_to_file()
        w.write_tensors_to_file()
        w.close()
        make_readable(tmp)
        tmp.replace(out)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def modelfile(gguf_path: Path, chat: bool, context: int) -> str:
    """An Ollama Modelfile for the export (`ollama create NAME -f FILE`)."""
    lines = [f"FROM ./{gguf_path.name}", f"PARAMETER num_ctx {context}"]
    if chat:
        lines += [
            'TEMPLATE """{{- range .Messages }}<|{{ .Role }}|>{{ .Content }}<|end|>{{ end }}<|assistant|>"""',
            'PARAMETER stop "<|end|>"',
        ]
    else:
        lines += ['TEMPLATE """{{ .Prompt }}"""', 'PARAMETER stop "</s>"']
    return "\n".join(lines) + "\n"


def export_gguf(
    checkpoint: Path, out: Path, tokenizer_path: Path, qtype: str = "f32", overwrite: bool = False
) -> Path:
    """The checkpoint as out (.gguf) plus out's stem + .Modelfile beside it; returns out."""
    check_file_target(out, overwrite)
    side = out.with_name(out.stem + ".Modelfile")
    if side.exists() and not (overwrite and side.is_file() and side.read_text().startswith("FROM ./")):
        raise UserError(f"{side} exists: remove it or choose another --out (it would be replaced)")
    out.parent.mkdir(parents=True, exist_ok=True)
    meta = read_checkpoint_config(checkpoint)
    model = load_model(checkpoint).eval()
    chat = meta.get("chat")
    write_gguf(model, out, tokenizer_path, qtype, name=checkpoint.parent.parent.name or "ptgpt", chat=chat)
    side.write_text(modelfile(out, chat is not None, model.config.max_seq_len))
    return out
