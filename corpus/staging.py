"""Staging and the swap: only a complete corpus ever replaces OUT, and only a corpus is rebuilt.

A build writes into a hidden folder next to OUT (`.OUT.building`), manifest last; two renames then
put it in place. A build that fails (bad input, full disk, a bug, a kill) leaves the previous corpus
byte-identical, and a crash between the two renames is undone by the next build.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from common import corpus_format as fmt


def inside(path: Path, folder: Path) -> bool:
    """Whether `path` is `folder` or lies inside it (links resolved)."""
    path, folder = path.resolve(), folder.resolve()
    return path == folder or folder in path.parents


_CORPUS_ENTRIES = {fmt.MANIFEST_FILE, fmt.TOKENIZER_FILE, fmt.README_FILE, fmt.CACHE_DIR, *fmt.SPLITS}


def is_corpus_folder(out_dir: str | Path) -> bool:
    """Whether OUT may be (re)built: missing, empty, a ptgpt corpus, or what an unfinished build left."""
    out_dir = Path(out_dir)
    if not out_dir.exists():
        return True
    if not out_dir.is_dir():
        return False
    names = {p.name for p in out_dir.iterdir()}
    if fmt.MANIFEST_FILE in names:
        return True
    if not names <= _CORPUS_ENTRIES:
        return False
    readme = out_dir / fmt.README_FILE
    return not readme.exists() or readme.read_text(encoding="utf-8", errors="replace").startswith(
        "---\nlanguage:\n- pt\npretty_name: ptgpt"
    )


def _inside(path: Path, folder: Path) -> bool:
    path, folder = path.resolve(), folder.resolve()
    return path == folder or folder in path.parents


def staging_dir(out_dir: Path) -> Path:
    """Where a build writes: a hidden folder next to OUT, on the same file system (renames are atomic)."""
    return out_dir.with_name(f".{out_dir.name}.building")


def _previous_dir(out_dir: Path) -> Path:
    return out_dir.with_name(f".{out_dir.name}.previous")


def swap_in(staging: Path, out_dir: Path) -> None:
    """Replace OUT by the finished corpus in `staging`; OUT's other entries (.cache, ...) move over.

    Two renames: OUT -> .OUT.previous, staging -> OUT. A crash between them leaves the old corpus
    whole in .OUT.previous, and `finish_interrupted_swap` (run by every build) puts it back.
    """
    previous = _previous_dir(out_dir)
    if out_dir.exists():
        os.rename(out_dir, previous)
    os.rename(staging, out_dir)
    finish_interrupted_swap(out_dir)


def finish_interrupted_swap(out_dir: Path) -> None:
    """Complete or undo a swap that a crash cut short, so OUT is one whole corpus again."""
    previous = _previous_dir(out_dir)
    if not previous.exists():
        return
    if not out_dir.exists():  # cut between the two renames: the old corpus comes back
        os.rename(previous, out_dir)
        return
    for entry in previous.iterdir():  # the new corpus is in place: keep what is not replaced
        if not (out_dir / entry.name).exists():
            os.rename(entry, out_dir / entry.name)
    shutil.rmtree(previous)
