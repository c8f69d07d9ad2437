#!/usr/bin/env bash
# Set up (idempotent) and run the lint and the whole test suite. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh --dev
source scripts/env.sh
export PATH="$PWD/.venv/bin:$PATH"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
export HF_HOME="$tmp/hf" TORCHINDUCTOR_CACHE_DIR="$tmp/inductor"
ruff check .
set +e
pytest -q --timeout 600 "$@"
rc=$?
set -e
if [ "$rc" -eq 5 ]; then echo "no tests collected" >&2; exit 1; fi
exit "$rc"
