"""`ptgpt export-hf`: a checkpoint as a Hugging Face transformers folder (Llama or Mixtral)."""

from __future__ import annotations

from pathlib import Path

import click

from common.errors import UserError


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


def overlaps(a: Path, b: Path) -> bool:
    """Whether a is b, contains b, or lies inside b (after resolving links and `..`)."""
    a, b = a.resolve(), b.resolve()
    return a == b or a in b.parents or b in a.parents


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
    if (run_dir is None) == (checkpoint_dir is None):
        raise click.UsageError("give exactly one of --run or --checkpoint")
    source = run_dir if run_dir is not None else checkpoint_dir
    if overlaps(out_dir, source):  # --overwrite would delete what is being exported
        raise UserError(
            f"--out {out_dir} is, contains or lies inside the source {source}: exporting there could "
            "destroy it; choose a folder outside it"
        )
    from training.checkpoint import newest_valid_checkpoint, read_checkpoint_config
    from training.export_hf import export_checkpoint

    try:
        checkpoint = checkpoint_dir if checkpoint_dir is not None else newest_valid_checkpoint(run_dir)
        if tokenizer_path is None and not read_checkpoint_config(checkpoint).get("tokenizer_path"):
            raise click.UsageError(f"{checkpoint}/config.json records no tokenizer_path: pass --tokenizer")
        out = export_checkpoint(
            checkpoint, out_dir, tokenizer_path, dtype=dtype, overwrite=overwrite, finalize=add_fast_tokenizer
        )
    except (FileExistsError, ValueError) as e:
        raise click.ClickException(str(e)) from None
    click.echo(f"exported {checkpoint} -> {out}")
