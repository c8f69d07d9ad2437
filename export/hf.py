"""Export a checkpoint as a Hugging Face `transformers` model folder that loads without custom code.

Dense models become `LlamaForCausalLM`, MoE models `MixtralForCausalLM`; with QK-norm (RMSNorm on each
head's queries and keys) they become `Qwen3ForCausalLM` / `Qwen3MoeForCausalLM`, which have exactly
those norms. Our architecture was chosen to be exactly expressible in all four (RMSNorm with weight,
rotate-half RoPE, no biases, SwiGLU, softmax-top-k-renormalise routing), so the weights are only
renamed and, for experts, split and transposed.

Limitation: Mixtral has an MoE in every layer, so a model without QK-norm and with moe_every > 1
cannot be exported (a clear error says so). Qwen3-MoE expresses it (`decoder_sparse_step`).

The folder holds config.json, generation_config.json, model.safetensors, the SentencePiece model as a
Llama tokenizer (tokenizer.model + tokenizer_config.json + special_tokens_map.json, and tokenizer.json
when transformers is installed), a model card (README.md) and the export marker (export/output.py).
The JSON is written here: no `transformers` import is needed to export.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

import torch
from safetensors.torch import save_file

from export.output import check_folder_target, replace_folder, write_marker
from training.checkpoint import load_model, read_checkpoint_config, unwrap_model
from training.model import GPT, MoE
from training.runs import find_tokenizer

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def hf_state_dict(model: GPT) -> dict[str, torch.Tensor]:
    """Our weights under Llama/Mixtral names (Mixtral in its canonical per-expert w1/w2/w3 layout,
    which every transformers version and most other runtimes read)."""
    c = model.config
    sd: dict[str, torch.Tensor] = {
        "model.embed_tokens.weight": model.tok_emb.weight,
        "model.norm.weight": model.norm.weight,
    }
    if not c.tie_embeddings:
        sd["lm_head.weight"] = model.lm_head.weight
    for i, block in enumerate(model.blocks):
        p = f"model.layers.{i}."
        sd[p + "input_layernorm.weight"] = block.attn_norm.weight
        sd[p + "post_attention_layernorm.weight"] = block.mlp_norm.weight
        for name in ("q_proj", "k_proj", "v_proj", "o_proj"):
            sd[p + f"self_attn.{name}.weight"] = getattr(block.attn, name).weight
        if c.qk_norm:  # Qwen3 names
            sd[p + "self_attn.q_norm.weight"] = block.attn.q_norm.weight
            sd[p + "self_attn.k_norm.weight"] = block.attn.k_norm.weight
        if isinstance(block.mlp, MoE) and c.qk_norm:  # Qwen3-MoE: mlp.gate, mlp.experts.E.{gate,up,down}_proj
            moe, h = block.mlp, block.mlp.hidden
            sd[p + "mlp.gate.weight"] = moe.router.weight
            for e in range(moe.n_experts):
                sd[p + f"mlp.experts.{e}.gate_proj.weight"] = moe.w_in[e, :, :h].T
                sd[p + f"mlp.experts.{e}.up_proj.weight"] = moe.w_in[e, :, h:].T
                sd[p + f"mlp.experts.{e}.down_proj.weight"] = moe.w_out[e].T
        elif isinstance(block.mlp, MoE):
            moe, h = block.mlp, block.mlp.hidden
            sd[p + "block_sparse_moe.gate.weight"] = moe.router.weight
            for e in range(moe.n_experts):
                # ours: w_in[e] = [gate | up] as (in, out); HF Linear weights are (out, in)
                sd[p + f"block_sparse_moe.experts.{e}.w1.weight"] = moe.w_in[e, :, :h].T
                sd[p + f"block_sparse_moe.experts.{e}.w3.weight"] = moe.w_in[e, :, h:].T
                sd[p + f"block_sparse_moe.experts.{e}.w2.weight"] = moe.w_out[e].T
        else:
            for name in ("gate_proj", "up_proj", "down_proj"):
                sd[p + f"mlp.{name}.weight"] = getattr(block.mlp, name).weight
    return sd


def hf_config(model: GPT, dtype: str, special_ids: dict[str, int | None]) -> dict:
    """config.json for LlamaForCausalLM, MixtralForCausalLM, Qwen3ForCausalLM or Qwen3MoeForCausalLM."""
    c = model.config
    cfg = {
        "vocab_size": c.vocab_size,
        "hidden_size": c.n_embd,
        "num_hidden_layers": c.n_layer,
        "num_attention_heads": c.n_head,
        "num_key_value_heads": c.n_kv_head,
        "head_dim": c.head_dim,
        "hidden_act": "silu",
        "max_position_embeddings": c.max_seq_len,
        "rms_norm_eps": c.norm_eps,
        "rope_theta": c.rope_theta,  # transformers < 5
        "rope_parameters": {"rope_type": "default", "rope_theta": c.rope_theta},  # transformers >= 5
        "tie_word_embeddings": c.tie_embeddings,
        "initializer_range": c.init_std,
        "attention_dropout": 0.0,
        "use_cache": True,
        "bos_token_id": special_ids.get("bos"),
        "eos_token_id": special_ids.get("eos"),
        "pad_token_id": special_ids.get("pad"),
        "torch_dtype": dtype,  # transformers < 5
        "dtype": dtype,
    }
    if c.qk_norm:
        cfg.update(
            architectures=["Qwen3ForCausalLM"],
            model_type="qwen3",
            intermediate_size=c.mlp_hidden,
            attention_bias=False,
            use_sliding_window=False,
            sliding_window=None,
            max_window_layers=c.n_layer,
            layer_types=["full_attention"] * c.n_layer,
        )
        if c.n_experts > 0:
            cfg.update(
                architectures=["Qwen3MoeForCausalLM"],
                model_type="qwen3_moe",
                moe_intermediate_size=c.expert_hidden,
                num_experts=c.n_experts,
                num_experts_per_tok=c.top_k,
                norm_topk_prob=True,  # renormalise the top-k weights, as our router does
                decoder_sparse_step=c.moe_every,  # MoE where (layer + 1) % moe_every == 0, as ours
                mlp_only_layers=[],
                router_aux_loss_coef=c.aux_loss_coef,
                output_router_logits=False,
            )
    elif c.n_experts == 0:
        cfg.update(
            architectures=["LlamaForCausalLM"],
            model_type="llama",
            intermediate_size=c.mlp_hidden,
            attention_bias=False,
            mlp_bias=False,
        )
    else:
        cfg.update(
            architectures=["MixtralForCausalLM"],
            model_type="mixtral",
            intermediate_size=c.expert_hidden,
            num_local_experts=c.n_experts,
            num_experts_per_tok=c.top_k,
            sliding_window=None,
            router_aux_loss_coef=c.aux_loss_coef,
            router_jitter_noise=0.0,
            output_router_logits=False,
        )
    return cfg


def check_exportable(model: GPT) -> None:
    c = model.config
    if c.mlp != "swiglu":
        raise ValueError(
            f"cannot export a {c.mlp} feed-forward: Llama, Mixtral and Qwen3 in transformers are SwiGLU "
            "only; train with --mlp swiglu to export"
        )
    if c.n_experts > 0 and c.moe_every != 1 and not c.qk_norm:
        raise ValueError(
            f"cannot export to MixtralForCausalLM: it puts an MoE in every layer, this model has "
            f"one every {c.moe_every} layers (moe_every={c.moe_every}); train with moe_every=1, or "
            f"with qk_norm=true (exported as Qwen3MoeForCausalLM, which allows MoE every N layers)"
        )


def tokenizer_special_tokens(tokenizer_path: Path) -> dict[str, tuple[int, str] | None]:
    """(id, piece) of unk/bos/eos/pad in a SentencePiece model; None where the model has none."""
    import sentencepiece as spm

    sp = spm.SentencePieceProcessor(model_file=str(tokenizer_path))
    found = {}
    for name, i in (("unk", sp.unk_id()), ("bos", sp.bos_id()), ("eos", sp.eos_id()), ("pad", sp.pad_id())):
        found[name] = (i, sp.id_to_piece(i)) if i >= 0 else None
    found["vocab_size"] = (sp.get_piece_size(), "")
    return found


def write_tokenizer(tokenizer_path: Path, out: Path, max_len: int) -> dict[str, int | None]:
    """Copy the SentencePiece model and describe it as a Llama tokenizer; returns the special ids."""
    special = tokenizer_special_tokens(tokenizer_path)
    shutil.copyfile(tokenizer_path, out / "tokenizer.model")
    tokens = {f"{name}_token": special[name][1] for name in ("unk", "bos", "eos", "pad") if special[name]}
    tok_config = {
        "tokenizer_class": "LlamaTokenizer",
        **tokens,
        "add_bos_token": True,  # the trainer starts every book with BOS
        "add_eos_token": False,
        "clean_up_tokenization_spaces": False,
        "legacy": False,
        "model_max_length": max_len,
        "sp_model_kwargs": {},
    }
    (out / "tokenizer_config.json").write_text(json.dumps(tok_config, indent=2) + "\n")
    (out / "special_tokens_map.json").write_text(json.dumps(tokens, indent=2) + "\n")
    ids = {name: special[name][0] if special[name] else None for name in ("unk", "bos", "eos", "pad")}
    ids["vocab_size"] = special["vocab_size"][0]
    return ids


def export_model(
    model: torch.nn.Module,
    out_dir: str | Path,
    tokenizer_path: str | Path | None = None,
    dtype: str = "float32",
    overwrite: bool = False,
    finalize: Callable[[Path], None] | None = None,
    chat: dict | None = None,
    source: str | Path = "",
) -> Path:
    """Write `model` as a transformers folder at out_dir (built in a temporary folder, then renamed).

    out_dir must be absent, empty, or (with overwrite) an earlier export: nothing else is replaced.
    finalize(folder) runs on the complete temporary folder before the rename (the CLI adds the model
    card and, with transformers, tokenizer.json).
    """
    model = unwrap_model(model)
    check_exportable(model)
    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {sorted(DTYPES)}, got {dtype!r}")
    out = Path(out_dir)
    check_folder_target(out, overwrite)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.", suffix=".tmp"))
    try:
        special_ids: dict[str, int | None] = {}
        if tokenizer_path is not None:
            tokenizer_path = Path(tokenizer_path)
            if not tokenizer_path.is_file():
                raise FileNotFoundError(f"tokenizer model not found: {tokenizer_path}")
            special_ids = write_tokenizer(tokenizer_path, tmp, model.config.max_seq_len)
            if special_ids["vocab_size"] > model.config.vocab_size:
                raise ValueError(
                    f"tokenizer has {special_ids['vocab_size']} pieces but the model only "
                    f"{model.config.vocab_size} embeddings: wrong tokenizer?"
                )
        with torch.no_grad():
            state = {
                k: v.detach().to("cpu", DTYPES[dtype]).contiguous() for k, v in hf_state_dict(model).items()
            }
        save_file(state, str(tmp / "model.safetensors"), metadata={"format": "pt"})
        config = hf_config(model, dtype, special_ids)
        (tmp / "config.json").write_text(json.dumps(config, indent=2) + "\n")
        generation = {
            k: config[k] for k in ("bos_token_id", "eos_token_id", "pad_token_id") if config[k] is not None
        }
        (tmp / "generation_config.json").write_text(json.dumps(generation, indent=2) + "\n")
        if chat is not None:  # an SFT checkpoint: its chat tokens and template (training/chat.py)
            add_chat_to_hf_folder(tmp, chat)
        if finalize is not None:
            finalize(tmp)
        write_marker(tmp, "hf", source)
        replace_folder(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def export_checkpoint(
    checkpoint_dir: str | Path,
    out_dir: str | Path,
    tokenizer_path: str | Path | None = None,
    dtype: str = "float32",
    overwrite: bool = False,
    finalize: Callable[[Path], None] | None = None,
) -> Path:
    """Export a checkpoint folder written by training.checkpoint.save_model.

    The tokenizer defaults to the checkpoint's own (training.runs.find_tokenizer: the run's copy, then
    the recorded corpus file).
    """
    checkpoint_dir = Path(checkpoint_dir)
    if tokenizer_path is None:
        tokenizer_path = find_tokenizer(checkpoint_dir)
    model = load_model(checkpoint_dir)
    chat = read_checkpoint_config(checkpoint_dir).get("chat")
    return export_model(
        model,
        out_dir,
        tokenizer_path,
        dtype=dtype,
        overwrite=overwrite,
        finalize=finalize,
        chat=chat,
        source=checkpoint_dir,
    )


def add_chat_to_hf_folder(folder: str | Path, chat: dict) -> None:
    """Describe the chat tokens and template in an exported transformers folder.

    tokenizer_config.json gets the special tokens at their ids (added after the SentencePiece pieces,
    as in training/chat.py) and the Jinja `chat_template`; generation_config.json stops at <|end|> as
    well as EOS, so `apply_chat_template` + `generate` reproduce a reply of ours.
    """
    folder = Path(folder)
    special = chat["special_tokens"]
    config_path = folder / "tokenizer_config.json"
    config = json.loads(config_path.read_text())
    decoder = config.setdefault("added_tokens_decoder", {})
    for token, i in special.items():
        decoder[str(i)] = {
            "content": token,
            "lstrip": False,
            "normalized": False,
            "rstrip": False,
            "single_word": False,
            "special": True,
        }
    config["additional_special_tokens"] = list(special)
    config["chat_template"] = chat["hf_chat_template"]
    config_path.write_text(json.dumps(config, indent=2, ensure_ascii=False) + "\n")
    path = folder / "special_tokens_map.json"
    if path.is_file():
        tokens = json.loads(path.read_text())
        tokens["additional_special_tokens"] = list(special)
        path.write_text(json.dumps(tokens, indent=2, ensure_ascii=False) + "\n")
    generation_path = folder / "generation_config.json"
    if generation_path.is_file():
        generation = json.loads(generation_path.read_text())
        eos = generation.get("eos_token_id")
        eos = [eos] if isinstance(eos, int) else list(eos or [])
        generation["eos_token_id"] = [*eos, special["<|end|>"]]
        generation_path.write_text(json.dumps(generation, indent=2) + "\n")


def add_fast_tokenizer(folder: Path) -> bool:
    """Add tokenizer.json when transformers is installed (returns whether it did).

    Without it transformers converts tokenizer.model on every load, and AutoTokenizer on a Mixtral
    folder ignores tokenizer_config.json's LlamaTokenizer class (transformers 5 maps "mixtral" to a
    generic backend that needs tokenizer.json).

    The converted decoder ends in Strip(1 leading space), meant to undo SentencePiece's dummy prefix,
    and transformers' LlamaTokenizer class always rebuilds it so. But the text-generation pipeline
    decodes the new tokens alone and appends them to the prompt, so the first new word lost its space
    (`Era uma vezem`). So the decoder here keeps every space, and the folder names the generic
    PreTrainedTokenizerFast class, which uses tokenizer.json as written: a continuation decodes as
    ptgpt prints it; the price is that a whole text decoded from its first token starts with the
    dummy prefix's space (encoding is unchanged: the same ids as SentencePiece). A chat model keeps
    the Strip: a reply follows <|assistant|>, and ptgpt's reply text drops its first space too.
    """
    if not (folder / "tokenizer.model").is_file():
        return False
    try:
        from transformers import LlamaTokenizerFast
    except ImportError:
        return False
    LlamaTokenizerFast.from_pretrained(str(folder)).save_pretrained(str(folder))
    config_path = folder / "tokenizer_config.json"
    config = json.loads(config_path.read_text())
    path = folder / "tokenizer.json"
    spec = json.loads(path.read_text())
    if "chat_template" not in config and spec.get("decoder", {}).get("type") == "Sequence":
        spec["decoder"]["decoders"] = [d for d in spec["decoder"]["decoders"] if d["type"] != "Strip"]
        path.write_text(json.dumps(spec, indent=2, ensure_ascii=False) + "\n")
    config["tokenizer_class"] = "PreTrainedTokenizerFast"
    config_path.write_text(json.dumps(config, indent=2, ensure_ascii=False) + "\n")
    return True
