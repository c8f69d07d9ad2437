"""The raw store: one file per book with the exact bytes served, plus `manifest.jsonl`.

A book file is written to a temporary file next to it, fsynced and renamed into place
(common.files.atomic_write), so a `<id>.txt` that exists is complete; its manifest line is appended
(and fsynced) only after the rename, so a book without a line is simply fetched again. The format is described in docs/formats.md.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections.abc import Callable, Iterator
from datetime import datetime, timezone
from pathlib import Path
from typing import IO, Any

from common.errors import explain_disk_errors
from common.files import atomic_write, sha256_file

MANIFEST = "manifest.jsonl"
PARTIAL_DIR = ".partial"


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def utc_now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _durably(write_to: Callable[[IO], None]) -> Callable[[str], None]:
    """A writer for atomic_write that fsyncs the file before it is renamed into place."""

    def write(tmp: str) -> None:
        with open(tmp, "wb") as f:
            write_to(f)
            f.flush()
            os.fsync(f.fileno())

    return write


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class RawStore:
    """A folder of `<id>.txt` books and their manifest (last line per id wins)."""

    def __init__(self, root: Path | str):
        self.root = Path(root)
        with explain_disk_errors(self.root):  # a folder we cannot write fails here, before any download
            self.root.mkdir(parents=True, exist_ok=True)
            os.close(os.open(self.root / ".write-test", os.O_CREAT | os.O_WRONLY, 0o644))
            (self.root / ".write-test").unlink()
        self.manifest_path = self.root / MANIFEST
        # Leftovers of a killed run are never read; clear them so the store holds only whole books.
        shutil.rmtree(self.root / PARTIAL_DIR, ignore_errors=True)  # older versions wrote there
        for tmp in self.root.glob(".*.tmp"):
            tmp.unlink(missing_ok=True)
        self._records = self._read_manifest()

    def _read_manifest(self) -> dict[int, dict[str, Any]]:
        records: dict[int, dict[str, Any]] = {}
        if not self.manifest_path.exists():
            return records
        with open(self.manifest_path, encoding="utf-8") as f:
            for line in f:
                line = line.strip()
                if not line:
                    continue
                try:
                    rec = json.loads(line)
                except json.JSONDecodeError:
                    continue  # a line cut by a crash: its book is fetched again
                records[int(rec["id"])] = rec
        return records

    def path(self, book_id: int) -> Path:
        return self.root / f"{book_id}.txt"

    def record(self, book_id: int) -> dict[str, Any] | None:
        return self._records.get(book_id)

    def records(self) -> Iterator[dict[str, Any]]:
        for book_id in sorted(self._records):
            yield self._records[book_id]

    def is_verified(self, book_id: int) -> bool:
        """True when the book file exists and matches the sha256 its manifest line recorded."""
        rec = self._records.get(book_id)
        p = self.path(book_id)
        if rec is None or not p.exists() or p.stat().st_size != rec.get("bytes"):
            return False
        return sha256_file(p) == rec.get("sha256")

    def put(self, book_id: int, data: bytes, **meta: Any) -> dict[str, Any]:
        """Store `data` byte for byte and append its manifest line; returns the line."""
        with explain_disk_errors(self.path(book_id)):
            atomic_write(self.path(book_id), _durably(lambda f: f.write(data)))
            _fsync_dir(self.root)
        rec = {
            "id": book_id,
            "title": meta.get("title"),
            "authors": list(meta.get("authors") or []),
            "language": meta.get("language"),
            "source_url": meta.get("source_url"),
            "sha256": sha256_hex(data),
            "bytes": len(data),
            "fetched_at": meta.get("fetched_at") or utc_now(),
        }
        with explain_disk_errors(self.manifest_path), open(self.manifest_path, "a", encoding="utf-8") as f:
            f.write(json.dumps(rec, ensure_ascii=False) + "\n")
            f.flush()
            os.fsync(f.fileno())
        self._records[book_id] = rec
        return rec

    def compact(self) -> None:
        """Rewrite the manifest with one line per book, sorted by id (atomically)."""
        lines = [json.dumps(rec, ensure_ascii=False) + "\n" for rec in self.records()]
        with explain_disk_errors(self.manifest_path):
            atomic_write(self.manifest_path, _durably(lambda f: f.write("".join(lines).encode("utf-8"))))
        shutil.rmtree(self.root / PARTIAL_DIR, ignore_errors=True)
