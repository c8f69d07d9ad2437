#!/usr/bin/env bash
# Set up ptgpt on a fresh Debian machine: Chromium for the browser path, a venv with the project.
# Idempotent: a second run only checks. Pass --dev for the test tools (pytest, ruff, transformers).
set -euo pipefail
cd "$(dirname "$0")/.."
export DEBIAN_FRONTEND=noninteractive PIP_DISABLE_PIP_VERSION_CHECK=1

if ! [ -x /usr/bin/chromium ] || ! [ -x /usr/bin/chromedriver ]; then
  if [ "$(id -u)" -eq 0 ]; then SUDO=""; elif command -v sudo >/dev/null; then SUDO="sudo"; else SUDO="none"; fi
  if [ "$SUDO" = "none" ]; then
    echo "warning: Debian chromium/chromium-driver missing and no root: the --browser path will not work" >&2
  else
    echo "installing Debian chromium and chromium-driver..."
    $SUDO apt-get update -qq
    $SUDO apt-get install -y -qq chromium chromium-driver >/dev/null
  fi
fi

extras="." mode=run
[ "${1:-}" = "--dev" ] && extras=".[dev,interop]" mode=dev
hash=$(cat pyproject.toml constraints.txt | sha256sum | cut -c1-16)
# A dev install also serves a plain run; either is redone when pyproject or constraints change.
if [ -x .venv/bin/python ] && { [ -f ".venv/.ptgpt-$hash-dev" ] || [ -f ".venv/.ptgpt-$hash-$mode" ]; }; then
  exit 0
fi
[ -x .venv/bin/python ] || python3 -m venv .venv
echo "installing ptgpt into .venv (torch CPU build pinned by constraints.txt; a few minutes on a fresh machine)..."
log=$(mktemp)
# The machine's extra local index makes pip print ~175 harmless "Location ... is ignored" lines.
if ! .venv/bin/pip install -c constraints.txt -e "$extras" >"$log" 2>&1; then
  tail -40 "$log"; exit 1
fi
rm -f "$log"
.venv/bin/pip check >/dev/null || { .venv/bin/pip check; exit 1; }
rm -f .venv/.ptgpt-*
touch ".venv/.ptgpt-$hash-$mode"
