"""Model checkpoints on disk: `model.safetensors` (weights) + `config.json` (the ModelConfig and extras).

A checkpoint folder:

    DIR/model.safetensors   tensors only (safe to load: no pickle), tied weights stored once
    DIR/config.json         {"format": "ptgpt-model", "format_version": 1, "model": {...ModelConfig...}, ...extras}

Extras are free-form top-level keys the trainer adds (e.g. "tokenizer_path", "step"). A run folder
keeps its checkpoints as RUN/checkpoints/step_NNNNNNN/.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from common.errors import UserError
from common.files import atomic_write, sha256_file, write_text_atomic
from training.model import GPT, ModelConfig

WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "config.json"
FORMAT = "ptgpt-model"
FORMAT_VERSION = 1


class CheckpointNotFound(UserError, FileNotFoundError):
    """No usable checkpoint where one was expected (a run that never saved, a wrong folder)."""


def unwrap_model(model: torch.nn.Module) -> GPT:
    """The GPT inside torch.compile (`_orig_mod`) and DDP (`module`) wrappers."""
    while not isinstance(model, GPT):
        if hasattr(model, "_orig_mod"):
            model = model._orig_mod
        elif hasattr(model, "module"):
            model = model.module
        else:
            raise TypeError(f"expected a GPT (possibly compiled or DDP-wrapped), got {type(model).__name__}")
    return model


def save_tensors(tensors: dict[str, torch.Tensor], path: str | Path) -> None:
    """safetensors' save_file, its I/O failures raised as OSError (errno, path) like Python's own writes,
    so that a full or read-only disk is reported as such (the CLI names the path and the free space)."""
    try:
        save_file(tensors, str(path), metadata={"format": "pt"})
    except SafetensorError as e:
        found = re.search(r"os error (\d+)", str(e))
        if found is None:
            raise
        code = int(found.group(1))
        raise OSError(code, os.strerror(code), str(path)) from e


def save_model(model: torch.nn.Module, directory: str | Path, extra: dict | None = None) -> Path:
    """Write the weights and config of `model` into `directory` (created if needed); returns it."""
    gpt = unwrap_model(model)
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().contiguous().cpu() for k, v in gpt.state_dict().items()}
    if gpt.config.tie_embeddings:
        del state["lm_head.weight"]  # same tensor as tok_emb.weight; safetensors refuses shared storage
    meta = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "model": gpt.config.to_dict(),
        **(extra or {}),
    }
    atomic_write(directory / WEIGHTS_FILE, lambda tmp: save_tensors(state, tmp))
    write_text_atomic(directory / CONFIG_FILE, json.dumps(meta, indent=2) + "\n")
    return directory


def read_checkpoint_config(directory: str | Path) -> dict:
    """config.json of a checkpoint folder, checked to be one of ours."""
    path = Path(directory) / CONFIG_FILE
    if not path.is_file():
        raise CheckpointNotFound(
            f"no {CONFIG_FILE} in {directory}: not a model checkpoint; give a RUN/checkpoints/step_N folder"
        )
    meta = json.loads(path.read_text())
    if meta.get("format") != FORMAT or "model" not in meta:
        raise ValueError(f"{path} is not a ptgpt model config (format={meta.get('format')!r})")
    if meta.get("format_version", 0) > FORMAT_VERSION:
        raise ValueError(
            f"{path} has format_version {meta['format_version']}, newer than this code ({FORMAT_VERSION})"
        )
    return meta


def load_model(directory: str | Path, device: str | torch.device = "cpu") -> GPT:
    """Rebuild the GPT saved by save_model (strict: every weight present, none unexpected)."""
    directory = Path(directory)
    config = ModelConfig.from_dict(read_checkpoint_config(directory)["model"])
    weights = directory / WEIGHTS_FILE
    if not weights.is_file():
        raise CheckpointNotFound(f"no {WEIGHTS_FILE} in {directory}: the checkpoint is incomplete")
    with torch.device(device):
        model = GPT(config)
    load_weights(model, load_file(weights, device=str(device)))
    return model


def load_weights(model: GPT, state: dict[str, torch.Tensor]) -> None:
    """Load saved weights into `model` (strict); a tied lm_head, stored once, is tied again here."""
    if model.config.tie_embeddings:
        state = {**state, "lm_head.weight": state["tok_emb.weight"]}
    model.load_state_dict(state, strict=True)


_STEP_DIR = re.compile(r"^step_(\d+)$")


def latest_checkpoint(run_dir: str | Path) -> Path:
    """The complete checkpoint with the highest step under RUN/checkpoints/step_NNNNNNN/."""
    root = Path(run_dir) / "checkpoints"
    steps = []
    if root.is_dir():
        for d in root.iterdir():
            m = _STEP_DIR.match(d.name)
            if m and d.is_dir() and (d / WEIGHTS_FILE).is_file() and (d / CONFIG_FILE).is_file():
                steps.append((int(m.group(1)), d))
    if not steps:
        raise CheckpointNotFound(
            f"no complete checkpoint (step_N/ with {WEIGHTS_FILE} and {CONFIG_FILE}) under {root}: "
            "train the run first (ptgpt train), or pass --checkpoint"
        )
    return max(steps)[1]


# -----------------------------------------------------------------------------------------------
# Full training checkpoints (added for training/train.py; the functions above are unchanged)
#
# A training checkpoint is a model checkpoint (the two files above, so load_model and export-hf work on
# it) plus the state needed to continue exactly where training stopped:
#
#     step_NNNNNNN/optimizer.safetensors   AdamW moments and step counts, "state.<param index>.<name>"
#     step_NNNNNNN/trainer.safetensors     RNG states and the data loaders' numpy arrays
#     step_NNNNNNN/trainer.json            step, optimizer param groups, schedule, loader JSON values
#     step_NNNNNNN/checksums.json          sha256 of every file above; written last
#
# No pickle anywhere: everything loads with safetensors or json. The folder is written under a temporary
# name and renamed, and checksums.json lets a reader tell a complete folder from a damaged one.

OPTIMIZER_FILE = "optimizer.safetensors"
TRAINER_TENSORS_FILE = "trainer.safetensors"
TRAINER_JSON_FILE = "trainer.json"
CHECKSUMS_FILE = "checksums.json"


def optimizer_state_to_tensors(optimizer: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict]:
    """Split `optimizer.state_dict()` into flat tensors (for safetensors) and JSON (the param groups).

    Non-tensor per-parameter values (rare; e.g. a Python int step) go to the JSON side.
    """
    sd = optimizer.state_dict()
    tensors, scalars = {}, {}
    for index, state in sd["state"].items():
        for name, value in state.items():
            if isinstance(value, torch.Tensor):
                tensors[f"state.{index}.{name}"] = value.detach().contiguous().cpu()
            else:
                scalars[f"{index}.{name}"] = value
    groups = [{k: (list(v) if isinstance(v, tuple) else v) for k, v in g.items()} for g in sd["param_groups"]]
    return tensors, {"param_groups": groups, "scalars": scalars}


def optimizer_state_from_tensors(tensors: dict[str, torch.Tensor], meta: dict) -> dict:
    """The inverse of optimizer_state_to_tensors: a dict for `optimizer.load_state_dict`."""
    state: dict[int, dict] = {}
    for key, value in tensors.items():
        _, index, name = key.split(".", 2)
        state.setdefault(int(index), {})[name] = value
    for key, value in meta.get("scalars", {}).items():
        index, name = key.split(".", 1)
        state.setdefault(int(index), {})[name] = value
    groups = [{k: (tuple(v) if k == "betas" else v) for k, v in g.items()} for g in meta["param_groups"]]
    return {"state": state, "param_groups": groups}


def save_training_checkpoint(
    run_dir: str | Path,
    step: int,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    trainer_state: dict,
    trainer_tensors: dict[str, torch.Tensor],
    extra: dict | None = None,
    keep_last: int | None = None,
) -> Path:
    """Write RUN/checkpoints/step_NNNNNNN/ atomically; keep the newest `keep_last` step folders.

    trainer_state is JSON (step, loader positions...), trainer_tensors are tensors (RNG states, loader
    buffers). extra goes into config.json next to the model config (e.g. tokenizer_path).
    """
    import shutil

    root = Path(run_dir) / "checkpoints"
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"step_{step:07d}"
    tmp = Path(tempfile.mkdtemp(dir=root, prefix=f".tmp-step_{step:07d}-"))
    try:
        save_model(model, tmp, extra={**(extra or {}), "step": step})
        opt_tensors, opt_meta = optimizer_state_to_tensors(optimizer)
        save_tensors(opt_tensors, tmp / OPTIMIZER_FILE)
        save_tensors(
            {k: v.detach().contiguous().cpu() for k, v in trainer_tensors.items()}, tmp / TRAINER_TENSORS_FILE
        )
        payload = {"step": step, "optimizer": opt_meta, **trainer_state}
        (tmp / TRAINER_JSON_FILE).write_text(json.dumps(payload, indent=1) + "\n")
        files = [WEIGHTS_FILE, CONFIG_FILE, OPTIMIZER_FILE, TRAINER_TENSORS_FILE, TRAINER_JSON_FILE]
        sums = {"step": step, "files": {name: sha256_file(tmp / name) for name in files}}
        for name in files:  # data on disk before the folder appears under its final name
            with open(tmp / name, "rb") as f:
                os.fsync(f.fileno())
        (tmp / CHECKSUMS_FILE).write_text(json.dumps(sums, indent=1) + "\n")
        if final.exists():  # the same step saved again (e.g. interrupted right after resuming)
            old = root / f".old-{final.name}-{os.getpid()}"
            os.replace(final, old)
            os.replace(tmp, final)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if keep_last is not None and keep_last > 0:
        for old_step, old_dir in list_step_dirs(run_dir)[:-keep_last]:
            if old_step != step:
                shutil.rmtree(old_dir, ignore_errors=True)
    return final


def list_step_dirs(run_dir: str | Path) -> list[tuple[int, Path]]:
    """(step, folder) of every RUN/checkpoints/step_N/, valid or not, oldest first."""
    root = Path(run_dir) / "checkpoints"
    if not root.is_dir():
        return []
    found = [(int(m.group(1)), d) for d in root.iterdir() if (m := _STEP_DIR.match(d.name)) and d.is_dir()]
    return sorted(found)


def verify_training_checkpoint(directory: str | Path) -> str | None:
    """None when the folder is a complete training checkpoint, else what is wrong with it.

    Complete: checksums.json parses and every file it lists exists with that sha256, the JSON files parse
    and the safetensors headers read.
    """
    from safetensors import safe_open

    directory = Path(directory)
    try:
        sums = json.loads((directory / CHECKSUMS_FILE).read_text())
    except FileNotFoundError:
        return f"{CHECKSUMS_FILE} is missing (the checkpoint was not finished)"
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        return f"{CHECKSUMS_FILE} does not parse: {e}"
    needed = {WEIGHTS_FILE, CONFIG_FILE, OPTIMIZER_FILE, TRAINER_TENSORS_FILE, TRAINER_JSON_FILE}
    files = sums.get("files") if isinstance(sums, dict) else None
    if not isinstance(files, dict) or not needed <= set(files):
        return f"{CHECKSUMS_FILE} does not list {sorted(needed)}"
    for name, digest in files.items():
        path = directory / name
        if not path.is_file():
            return f"{name} is missing"
        if sha256_file(path) != digest:
            return f"{name} does not match its sha256 in {CHECKSUMS_FILE} (truncated or modified)"
    try:
        read_checkpoint_config(directory)
        json.loads((directory / TRAINER_JSON_FILE).read_text())
        for name in (WEIGHTS_FILE, OPTIMIZER_FILE, TRAINER_TENSORS_FILE):
            with safe_open(directory / name, framework="pt") as f:
                f.keys()
    except Exception as e:  # noqa: BLE001 - any failure to read means "not usable"
        return f"unreadable: {e}"
    return None


def latest_valid_training_checkpoint(run_dir: str | Path) -> Path | None:
    """The newest training checkpoint that verifies; warns about each newer one skipped. None if none."""
    import warnings

    for _step, directory in reversed(list_step_dirs(run_dir)):
        problem = verify_training_checkpoint(directory)
        if problem is None:
            return directory
        warnings.warn(
            f"checkpoint {directory} is not usable ({problem}); falling back to the previous one",
            stacklevel=2,
        )
    return None


def newest_valid_checkpoint(run_dir: str | Path) -> Path:
    """The checkpoint to read weights from: the newest that verifies, else the newest complete one.

    For generate, eval and export: a run whose latest folder is damaged still yields the previous one.
    """
    return latest_valid_training_checkpoint(run_dir) or latest_checkpoint(run_dir)


def load_training_checkpoint(
    directory: str | Path, model: GPT, device: str | torch.device = "cpu"
) -> tuple[dict, dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """Load a training checkpoint's weights into `model` and return the rest, for the trainer to restore:
    (trainer JSON, optimizer tensors, trainer tensors). Never unpickles."""
    directory = Path(directory)
    load_weights(model, load_file(directory / WEIGHTS_FILE, device=str(device)))
    trainer = json.loads((directory / TRAINER_JSON_FILE).read_text())
    optimizer = load_file(directory / OPTIMIZER_FILE, device=str(device))
    tensors = load_file(directory / TRAINER_TENSORS_FILE, device="cpu")
    return trainer, optimizer, tensors
