"""The books-only corpus of the sample books, fingerprinted: sha256 of tokenizer.model and every shard.

A refactor of corpus/ must leave a books-only corpus byte-identical; `test_corpus_golden.py` builds
it and compares with `golden_corpus.json`. When the output changes on purpose (a new filter, a
cleaning fix), regenerate the recorded values with one command, and say why in the commit:

    python tests/golden_corpus.py --write
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import tempfile
from pathlib import Path

GOLDEN = Path(__file__).with_name("golden_corpus.json")
VOCAB = 500
REPRINT_OF, REPRINT_ID = 91001, 91901  # a reprint under another ebook number: a near-duplicate book


def write_raw_store(raw: Path) -> None:
    """The sample books, plus a reprint of one of them, so near-duplicate books are part of the build."""
    from fakegutenberg.books import sample_books, write_sample_books

    books = sample_books(extra=6, extra_kb=8)
    write_sample_books(raw, books)
    original = next(b for b in books if b.id == REPRINT_OF).raw_bytes()
    (raw / f"{REPRINT_ID}.txt").write_bytes(
        original.replace(str(REPRINT_OF).encode(), str(REPRINT_ID).encode())
    )


def corpus_digests(out: Path) -> dict[str, str]:
    """sha256 of the tokenizer and of every shard, by path inside the corpus folder."""
    files = [out / "tokenizer.model", *sorted(out.glob("*/*.parquet"))]
    return {str(p.relative_to(out)): hashlib.sha256(p.read_bytes()).hexdigest() for p in files}


def build_sample_corpus(root: Path) -> dict[str, str]:
    """Build through the real CLI command (its defaults are part of what is pinned)."""
    from click.testing import CliRunner

    from ptgpt.cli.corpus import corpus

    raw, out = root / "raw", root / "corpus"
    raw.mkdir()
    write_raw_store(raw)
    args = ["build", "--raw", str(raw), "--out", str(out), "--quiet"]
    args += ["--vocab-size", str(VOCAB), "--workers", "2"]
    result = CliRunner().invoke(corpus, args)
    if result.exit_code != 0:
        raise RuntimeError(f"the sample build failed:\n{result.output}")
    return corpus_digests(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--write", action="store_true", help=f"record the digests in {GOLDEN.name}")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        digests = build_sample_corpus(Path(tmp))
    if args.write:
        GOLDEN.write_text(json.dumps({"vocab_size": VOCAB, "sha256": digests}, indent=2) + "\n")
        print(f"wrote {len(digests)} digests to {GOLDEN}")
        return
    golden = json.loads(GOLDEN.read_text())["sha256"]
    same = golden == digests
    print("identical" if same else f"differs:\nrecorded {golden}\nnow      {digests}")
    sys.exit(0 if same else 1)


if __name__ == "__main__":
    main()
