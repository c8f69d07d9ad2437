"""`ptgpt export-hf`: a checkpoint as a Hugging Face transformers folder (Llama or Mixtral)."""

from __future__ import annotations

import sys
from pathlib import Path

import click


def add_fast_tokenizer(folder: Path) -> None:
    """Add tokenizer.json when transformers is installed.

    Without it transformers converts tokenizer.model on every load, and AutoTokenizer on a Mixtral
    folder ignores tokenizer_config.json's LlamaTokenizer class (transformers 5 maps "mixtral" to a
    generic backend that needs tokenizer.json).
    """
    if not (folder / "tokenizer.model").is_file():
        return
    try:
        from transformers import LlamaTokenizerFast
    except ImportError:
        click.echo(
            "transformers not installed: wrote tokenizer.model only (load it with LlamaTokenizerFast)",
            err=True,
        )
        return
    LlamaTokenizerFast.from_pretrained(str(folder)).save_pretrained(str(folder))


@click.command("export-hf")
@click.option(
    "--run",
    "run_dir",
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    help="Run folder: exports the latest RUN/checkpoints/step_N/.",
)
@click.option(
    "--checkpoint",
    "checkpoint_dir",
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    help="A checkpoint folder (model.safetensors + config.json).",
)
@click.option("--out", "out_dir", required=True, type=click.Path(path_type=Path), help="Folder to write.")
@click.option(
    "--tokenizer",
    "tokenizer_path",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="SentencePiece tokenizer.model [default: tokenizer_path recorded in the checkpoint].",
)
@click.option(
    "--dtype",
    type=click.Choice(["float32", "bfloat16", "float16"]),
    default="float32",
    show_default=True,
    help="Dtype of the exported weights.",
)
@click.option("--overwrite", is_flag=True, help="Replace OUT if it exists.")
def export_hf(
    run_dir: Path | None,
    checkpoint_dir: Path | None,
    out_dir: Path,
    tokenizer_path: Path | None,
    dtype: str,
    overwrite: bool,
) -> None:
    """Write a folder that transformers loads without custom code: LlamaForCausalLM for a dense model,
    MixtralForCausalLM for an MoE (which needs an MoE in every layer), with the SentencePiece model as a
    Llama tokenizer."""
    from training.checkpoint import newest_valid_checkpoint, read_checkpoint_config
    from training.export_hf import export_checkpoint

    if (run_dir is None) == (checkpoint_dir is None):
        raise click.UsageError("give exactly one of --run or --checkpoint")
    try:
        checkpoint = checkpoint_dir if checkpoint_dir is not None else newest_valid_checkpoint(run_dir)
        if tokenizer_path is None and not read_checkpoint_config(checkpoint).get("tokenizer_path"):
            raise click.UsageError(f"{checkpoint}/config.json records no tokenizer_path: pass --tokenizer")
        out = export_checkpoint(
            checkpoint, out_dir, tokenizer_path, dtype=dtype, overwrite=overwrite, finalize=add_fast_tokenizer
        )
    except (FileNotFoundError, FileExistsError, ValueError) as e:
        click.echo(f"export-hf: {e}", err=True)
        sys.exit(1)
    click.echo(f"exported {checkpoint} -> {out}")
