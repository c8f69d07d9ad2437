"""Where an export may be written: only into nothing, an empty folder, or an earlier export.

`--overwrite` once deleted whatever folder it was pointed at (a corpus, a run, notes). Every export
folder now carries MARKER, a file only the exporter writes, and only such a folder may be replaced; a
GGUF file may only replace a GGUF file. What is written is readable by others (tempfile makes 0700
folders and 0600 files), like any file the user writes with their umask.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

from common.errors import UserError

MARKER = "ptgpt-export.json"
GGUF_MAGIC = b"GGUF"


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def make_readable(path: Path) -> None:
    """Give path (and, for a folder, all in it) the modes a plain write would have: 0777/0666 & ~umask."""
    mask = _umask()
    paths = [path, *path.rglob("*")] if path.is_dir() else [path]
    for p in paths:
        p.chmod((0o777 if p.is_dir() else 0o666) & ~mask)


def write_marker(folder: Path, kind: str, source: str | Path) -> None:
    (folder / MARKER).write_text(json.dumps({"kind": kind, "source": str(source)}, indent=2) + "\n")


def check_folder_target(out: Path, overwrite: bool, option: str = "--out") -> None:
    """Refuse (one line) an --out that is neither absent, empty, nor an earlier export (with --overwrite)."""
    if out.is_symlink():
        raise UserError(f"{option} {out} is a symbolic link: give the real folder")
    if not out.exists() or (out.is_dir() and not any(out.iterdir())):
        return
    if not out.is_dir():
        raise UserError(f"{option} {out} is a file, not an export folder: choose another path")
    if not (out / MARKER).is_file():
        raise UserError(
            f"{option} {out} is a folder that no ptgpt export wrote (no {MARKER}): it is never replaced, "
            "even with --overwrite; choose a new or empty folder"
        )
    if not overwrite:
        raise UserError(f"{option} {out} holds an earlier export: pass --overwrite to replace it")


def check_file_target(out: Path, overwrite: bool) -> None:
    """Refuse an --out file that exists and is not a GGUF file, or is one and overwrite is not given."""
    if out.is_symlink() or (out.exists() and not out.is_file()):
        raise UserError(f"--out {out} is not a plain file: choose a new .gguf path")
    if not out.exists():
        return
    with open(out, "rb") as f:
        is_gguf = f.read(4) == GGUF_MAGIC
    if not is_gguf:
        raise UserError(
            f"--out {out} exists and is not a GGUF file: it is never replaced, choose another path"
        )
    if not overwrite:
        raise UserError(f"--out {out} exists: pass --overwrite to replace it")


def replace_folder(tmp: Path, out: Path) -> None:
    """Put the finished temporary folder at out (replacing an earlier export there) with plain modes."""
    make_readable(tmp)
    if out.exists():
        old = out.with_name(f".{out.name}.old")
        shutil.rmtree(old, ignore_errors=True)
        out.rename(old)  # the new folder is in place before the old one goes
        tmp.rename(out)
        shutil.rmtree(old, ignore_errors=True)
    else:
        tmp.rename(out)
