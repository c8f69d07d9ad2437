"""Opening a run: from a run or checkpoint folder to the model, its tokenizer and what it recorded.

Every command that reads a trained model (generate, chat, serve-model, demo; sft, classify, eval and
export-hf in time) opens it with `load_run`, so "which checkpoint, which tokenizer, which device" is
answered in one place.

A run keeps its own copy of the corpus tokenizer, RUN/tokenizer.model (`copy_tokenizer_into_run`, at
setup), so it works wherever it is moved and whatever happens to the corpus. The tokenizer of a
checkpoint is looked up in this order:

    CHECKPOINT/tokenizer.model      a checkpoint folder handed around on its own
    RUN/tokenizer.model             the run's copy (CHECKPOINT is RUN/checkpoints/step_N)
    config.json "tokenizer_path"    runs from before the copy existed: the corpus's own file

and checked against the recorded "tokenizer_sha256" where there is one.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

from common.errors import UserError
from common.files import atomic_write, sha256_file
from training.chat import ChatTokenizer, load_chat_tokenizer
from training.checkpoint import (
    CONFIG_FILE,
    WEIGHTS_FILE,
    load_model,
    newest_valid_checkpoint,
    read_checkpoint_config,
)
from training.model import GPT
from training.precision import pick_device

TOKENIZER_FILE = "tokenizer.model"


@dataclass
class LoadedRun:
    """A model ready to use. `tokenizer` is a ChatTokenizer for every run (its chat ids are defined by
    the SentencePiece model alone); `tokenizer.sp` is the plain SentencePieceProcessor."""

    model: GPT
    tokenizer: ChatTokenizer
    checkpoint: Path  # the step folder the weights came from
    meta: dict  # its config.json: "model", "tokenizer_path", "corpus", "train", "chat", ...

    @property
    def is_chat(self) -> bool:
        return "chat" in self.meta

    @property
    def context(self) -> int:
        return self.model.config.max_seq_len


def find_checkpoint(run_or_checkpoint: str | Path) -> Path:
    """A run folder's newest valid checkpoint, or the folder itself when it is a checkpoint."""
    path = Path(run_or_checkpoint)
    if (path / WEIGHTS_FILE).is_file() and (path / CONFIG_FILE).is_file():
        return path
    if (path / "checkpoints").is_dir():
        return newest_valid_checkpoint(path)
    return path  # read_checkpoint_config says what it lacks


def run_dir_of(checkpoint: Path) -> Path | None:
    """RUN for RUN/checkpoints/step_N, else None (a checkpoint folder on its own)."""
    return checkpoint.parent.parent if checkpoint.parent.name == "checkpoints" else None


def find_tokenizer(checkpoint: str | Path, meta: dict | None = None) -> Path:
    """The tokenizer a checkpoint was trained with (see the module docstring), else a UserError."""
    checkpoint = Path(checkpoint)
    meta = read_checkpoint_config(checkpoint) if meta is None else meta
    run = run_dir_of(checkpoint)
    copies = [checkpoint / TOKENIZER_FILE] + ([run / TOKENIZER_FILE] if run is not None else [])
    recorded = meta.get("tokenizer_path")
    found = next((p for p in copies if p.is_file()), None)
    if found is None and recorded and Path(recorded).is_file():
        found = Path(recorded)
    if found is None:
        home = run if run is not None else checkpoint
        if not recorded:
            raise UserError(
                f"{checkpoint}/config.json records no tokenizer_path and {home} holds no {TOKENIZER_FILE}: "
                f"copy the corpus's tokenizer.model to {home / TOKENIZER_FILE}"
            )
        raise UserError(
            f"the corpus was moved: {recorded}, the tokenizer {checkpoint} was trained with, is gone, and "
            f"{home} holds no copy; copy the corpus's tokenizer.model to {home / TOKENIZER_FILE}"
        )
    expected = meta.get("tokenizer_sha256")
    if expected and sha256_file(found) != expected:
        raise UserError(f"{found} is not the tokenizer {checkpoint} was trained with (its sha256 differs)")
    return found


def copy_tokenizer_into_run(run_dir: str | Path, tokenizer_path: str | Path) -> Path:
    """RUN/tokenizer.model, a copy of the corpus tokenizer, so the run never depends on the corpus folder
    again. Idempotent; a different copy already there is refused (the run was trained with it)."""
    source, target = Path(tokenizer_path), Path(run_dir) / TOKENIZER_FILE
    if target.is_file():
        if sha256_file(target) != sha256_file(source):
            raise UserError(
                f"{target} differs from {source}: this run was started with another tokenizer; "
                "train into a new run folder"
            )
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(target, lambda tmp: shutil.copyfile(source, tmp))
    return target


def check_apart(run_dir: str | Path, base: str | Path) -> None:
    """A fine-tuning run never writes into the model it starts from: not into its run folder or
    checkpoint, nor around or inside them."""
    checkpoint = find_checkpoint(base).resolve()
    run = Path(run_dir).resolve()
    owner = run_dir_of(checkpoint) or checkpoint
    for folder in {owner.resolve(), checkpoint, Path(base).resolve()}:
        if run == folder or run.is_relative_to(folder) or folder.is_relative_to(run):
            raise UserError(
                f"--run {run_dir} is the base run itself or overlaps it ({folder}): "
                "give the tuned model a new folder"
            )


def recorded_corpus(run_or_checkpoint: str | Path) -> Path:
    """The corpus folder a run was trained on, as its checkpoint records it, if it still exists."""
    checkpoint = find_checkpoint(run_or_checkpoint)
    corpus = read_checkpoint_config(checkpoint).get("corpus")
    if not corpus or not Path(corpus).is_dir():
        raise UserError(f"{run_or_checkpoint} records no corpus folder that exists here: pass --corpus")
    return Path(corpus)


def load_run(
    run_or_checkpoint: str | Path, device: str = "auto", tokenizer_path: str | Path | None = None
) -> LoadedRun:
    """The model (on `device`: auto picks cuda, then mps, then cpu), its tokenizer and its config.json.

    `tokenizer_path` overrides the lookup (generate's --tokenizer); no sha256 check then.
    """
    checkpoint = find_checkpoint(run_or_checkpoint)
    meta = read_checkpoint_config(checkpoint)
    tok = load_chat_tokenizer(tokenizer_path or find_tokenizer(checkpoint, meta))
    if tok.base_size > meta["model"]["vocab_size"]:
        raise UserError(
            f"{tok.path} has {tok.base_size} pieces but {checkpoint} only {meta['model']['vocab_size']} "
            "token rows: not the tokenizer it was trained with"
        )
    model = load_model(checkpoint, device=pick_device(device))
    return LoadedRun(model, tok, checkpoint, meta)
