"""`ptgpt export-hf` and `ptgpt export-gguf`: a checkpoint as a transformers folder or a GGUF file."""

from __future__ import annotations

import json
from pathlib import Path

import click

from common.errors import UserError
from ptgpt.cli.options import checkpoint_of


def overlaps(a: Path, b: Path) -> bool:
    """Whether a is b, contains b, or lies inside b (after resolving links and `..`)."""
    a, b = a.resolve(), b.resolve()
    return a == b or a in b.parents or b in a.parents


def _source(run_dir: Path | None, checkpoint_dir: Path | None, out: Path, tokenizer: Path | None):
    """The checkpoint to export and its tokenizer, or a one-line error."""
    from training.runs import find_tokenizer

    if (run_dir is None) == (checkpoint_dir is None):
        raise click.UsageError("give exactly one of --run or --checkpoint")
    source = run_dir if run_dir is not None else checkpoint_dir
    if overlaps(out, source):  # --overwrite would delete what is being exported
        raise UserError(
            f"--out {out} is, contains or lies inside the source {source}: exporting there could "
            "destroy it; choose a folder outside it"
        )
    try:
        checkpoint = checkpoint_of(run_dir, checkpoint_dir)
    except (FileNotFoundError, ValueError) as e:
        raise UserError(str(e)) from None
    if tokenizer is None:
        try:
            tokenizer = find_tokenizer(checkpoint)  # the run's copy first: a moved corpus is fine
        except UserError as e:
            raise click.UsageError(f"{e}; or pass --tokenizer") from None
    if not Path(tokenizer).is_file():
        raise UserError(f"tokenizer model not found: {tokenizer} (pass --tokenizer)")
    return checkpoint, Path(tokenizer)


def _eval_json(path: Path | None) -> dict | None:
    if path is None:
        return None
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise UserError(f"--eval-json {path}: not a JSON file written by `ptgpt eval --json` ({e})") from None


_run = click.option(
    "--run",
    "run_dir",
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    help="Run folder: exports the latest RUN/checkpoints/step_N/.",
)
_checkpoint = click.option(
    "--checkpoint",
    "checkpoint_dir",
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    help="A checkpoint folder (model.safetensors + config.json).",
)
_tokenizer = click.option(
    "--tokenizer",
    "tokenizer_path",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="SentencePiece tokenizer.model [default: tokenizer_path recorded in the checkpoint].",
)


@click.command("export-hf")
@_run
@_checkpoint
@click.option("--out", "out_dir", required=True, type=click.Path(path_type=Path), help="Folder to write.")
@_tokenizer
@click.option(
    "--dtype",
    type=click.Choice(["float32", "bfloat16", "float16"]),
    default="float32",
    show_default=True,
    help="Dtype of the exported weights.",
)
@click.option(
    "--eval-json",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="`ptgpt eval --json` output for the model card's table [default: the run's last logged eval].",
)
@click.option("--overwrite", is_flag=True, help="Replace OUT if it holds an earlier export (nothing else).")
def export_hf(
    run_dir: Path | None,
    checkpoint_dir: Path | None,
    out_dir: Path,
    tokenizer_path: Path | None,
    dtype: str,
    eval_json: Path | None,
    overwrite: bool,
) -> None:
    """Write a folder that transformers loads without custom code: LlamaForCausalLM for a dense model,
    MixtralForCausalLM for an MoE (which needs an MoE in every layer), Qwen3 for QK-norm, with the
    SentencePiece model as a Llama tokenizer and a model card."""
    from export.hf import add_fast_tokenizer, export_checkpoint
    from export.model_card import model_card

    checkpoint, tokenizer = _source(run_dir, checkpoint_dir, out_dir, tokenizer_path)
    result = _eval_json(eval_json)

    def finalize(folder: Path) -> None:
        if not add_fast_tokenizer(folder):
            click.echo("transformers not installed: wrote tokenizer.model only", err=True)
        (folder / "README.md").write_text(model_card(checkpoint, out_dir.name, result))

    try:
        out = export_checkpoint(
            checkpoint, out_dir, tokenizer, dtype=dtype, overwrite=overwrite, finalize=finalize
        )
    except (FileExistsError, ValueError) as e:
        raise UserError(str(e)) from None
    click.echo(f"exported {checkpoint} -> {out}")


@click.command("export-gguf")
@_run
@_checkpoint
@click.option("--out", "out_path", required=True, type=click.Path(path_type=Path), help="The .gguf file.")
@_tokenizer
@click.option(
    "--type",
    "qtype",
    type=click.Choice(["f32", "f16", "q8_0"]),
    default="f32",
    show_default=True,
    help="Weight type: f32 (exact), f16, q8_0 (8-bit).",
)
@click.option("--overwrite", is_flag=True, help="Replace OUT if it is a GGUF file (nothing else).")
def export_gguf(
    run_dir: Path | None,
    checkpoint_dir: Path | None,
    out_path: Path,
    tokenizer_path: Path | None,
    qtype: str,
    overwrite: bool,
) -> None:
    """Write one GGUF file for llama.cpp, Ollama and LM Studio (llama, Mixtral-style MoE or qwen3
    architecture), with an Ollama Modelfile beside it (OUT's name with .Modelfile)."""
    try:
        import gguf  # noqa: F401
    except ImportError:
        raise UserError("export-gguf needs the gguf package: pip install 'ptgpt[interop]'") from None
    from export.gguf import export_gguf as export

    checkpoint, tokenizer = _source(run_dir, checkpoint_dir, out_path, tokenizer_path)
    out = export(checkpoint, out_path, tokenizer, qtype, overwrite)
    click.echo(
        f"exported {checkpoint} -> {out} ({qtype}); Ollama: ollama create NAME -f {out.stem}.Modelfile"
    )
