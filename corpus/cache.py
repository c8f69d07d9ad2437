"""What the per-item caches under OUT/.cache are keyed by: JSON digests and the code's version.

A cached book or chunk of documents is valid for one input, one configuration and one version of
the code that produced it. The version is a hash of the source of every module a cached result
depends on (books and documents alike), taken once at import: pool workers are forked and inherit
it, so a file edited during a build does not mix two versions in one corpus.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

# The cached results depend on these modules' code: their bytes are part of every cache key.
CACHED_CODE = ("decode", "boilerplate", "normalize", "filters", "clean", "dedup", "doc_filters", "documents")


def plain(obj):
    """JSON-safe copy of a config dict (tuples -> lists, sets -> sorted lists, paths -> str)."""
    if isinstance(obj, dict):
        return {str(k): plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [plain(v) for v in obj]
    if isinstance(obj, (set, frozenset)):
        return sorted(plain(v) for v in obj)
    if isinstance(obj, Path):
        return str(obj)
    return obj


def digest(obj) -> str:
    """sha256 of the canonical JSON of `obj`."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, ensure_ascii=False).encode()).hexdigest()


def _hash_code() -> str:
    h = hashlib.sha256()
    here = Path(__file__).parent
    for name in CACHED_CODE:
        p = here / f"{name}.py"
        h.update(name.encode() + b"\0" + (p.read_bytes() if p.exists() else b"") + b"\0")
    return h.hexdigest()[:16]


_CODE_VERSION = _hash_code()


def code_version() -> str:
    """Hash of the cleaning, filtering and signature code, so a code change invalidates cached results."""
    return _CODE_VERSION
