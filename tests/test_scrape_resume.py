"""An interrupted scrape (SIGKILL mid-body) leaves only whole books, and a rerun completes the store."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from fakegutenberg.mirror import Fault
from scraping.store import RawStore, sha256_file


def store_snapshot(root: Path) -> tuple[dict[str, bytes], list[dict]]:
    files = {p.name: p.read_bytes() for p in root.glob("*.txt")}
    lines = [json.loads(x) for x in (root / "manifest.jsonl").read_text().splitlines()]
    for rec in lines:
        rec.pop("fetched_at")
    return files, lines


def scrape_cmd(url: str, out: Path) -> list[str]:
    return [
        sys.executable,
        "-m",
        "ptgpt",
        "scrape",
        "--source",
        url,
        "--out",
        str(out),
        "--rate",
        "0",
        "--timeout",
        "60",
        "--quiet",
    ]


def test_killed_scrape_resumes_to_identical_store(mirror_factory, tmp_path):
    m = mirror_factory()
    ids = sorted(b.id for b in m.site.books.values() if "pt" in b.language)
    victim = m.site.books[ids[3]]
    m.inject(victim.path(), Fault.stall(seconds=60, fraction=0.5))

    out = tmp_path / "interrupted"
    proc = subprocess.Popen(scrape_cmd(m.url, out), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 60
        while not m.requests_to(victim.path()):  # the victim's body is half sent, then stalls
            assert time.monotonic() < deadline and proc.poll() is None, proc.stderr.read().decode()
            time.sleep(0.05)
        time.sleep(0.3)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    finally:
        if proc.poll() is None:
            proc.kill()

    # Only whole, verified books are in the store; the one caught mid-body is not.
    store = RawStore.__new__(RawStore)  # read without the constructor's cleanup
    store.root, store.manifest_path = out, out / "manifest.jsonl"
    records = store._read_manifest()
    present = {int(p.stem) for p in out.glob("*.txt")}
    assert victim.id not in present
    assert present == set(records) and present == set(ids[:3])
    for book_id, rec in records.items():
        assert sha256_file(out / f"{book_id}.txt") == rec["sha256"]

    rerun = subprocess.run(scrape_cmd(m.url, out), capture_output=True, text=True, timeout=120)
    assert rerun.returncode == 0, rerun.stderr
    assert "skipped 3" in rerun.stdout
    assert not (out / ".partial").exists()

    fresh = tmp_path / "fresh"
    assert subprocess.run(scrape_cmd(m.url, fresh), capture_output=True, timeout=120).returncode == 0
    assert store_snapshot(out) == store_snapshot(fresh)
