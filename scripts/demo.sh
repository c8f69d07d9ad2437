#!/usr/bin/env bash
# Set up (idempotent) and run the main job offline on the project's own sample books.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
source scripts/env.sh
exec .venv/bin/ptgpt demo "$@"
