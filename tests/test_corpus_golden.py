"""A books-only corpus is byte-identical to the one recorded in golden_corpus.json.

The recorded values come from the code at commit 7730e1b (before the extra sources were made
readers of the one build). Regenerate them, when the output changes on purpose, with
`python tests/golden_corpus.py --write`.
"""

from __future__ import annotations

import json

import pytest
from golden_corpus import GOLDEN, build_sample_corpus


@pytest.mark.slow
def test_books_only_corpus_matches_the_recorded_digests(tmp_path) -> None:
    recorded = json.loads(GOLDEN.read_text())["sha256"]
    assert build_sample_corpus(tmp_path) == recorded
