#!/usr/bin/env bash
# Creates (or refreshes) the Python virtual environment of the reference pipeline in
# .deps/reference-venv (git-ignored) and installs scripts/reference/requirements.txt into it.
#
# Idempotent: a marker file in the venv holds the sha256 of requirements.txt; when it matches,
# the script prints nothing and does nothing. Prints the venv's python path with --print-python.
# Environment: PYTHON (default python3) is the interpreter the venv is created from.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
REQ="$ROOT/scripts/reference/requirements.txt"
VENV="$ROOT/.deps/reference-venv"
MARKER="$VENV/.requirements.sha256"
PYTHON=${PYTHON:-python3}

say() { printf 'reference-venv: %s\n' "$*" >&2; }
die() { printf 'reference-venv: ERROR: %s\n' "$*" >&2; exit 1; }

sha256_of() {
  if command -v sha256sum >/dev/null 2>&1; then sha256sum "$1" | cut -d' ' -f1
  else shasum -a 256 "$1" | cut -d' ' -f1; fi
}

want=$(sha256_of "$REQ")
if [ ! -x "$VENV/bin/python" ] || [ "$(cat "$MARKER" 2>/dev/null)" != "$want" ]; then
  command -v "$PYTHON" >/dev/null 2>&1 || die "$PYTHON not found (Python >= 3.11 is needed)"
  "$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 11))' \
    || die "$PYTHON is $("$PYTHON" -V 2>&1); mlx-lm 0.32 needs Python >= 3.11"
  if [ ! -x "$VENV/bin/python" ]; then
    say "creating ${VENV#"$ROOT"/}"
    mkdir -p "$(dirname "$VENV")"
    "$PYTHON" -m venv "$VENV" || die "python -m venv failed (Debian: apt-get install python3-venv)"
  fi
  say "installing scripts/reference/requirements.txt"
  log=$(mktemp)
  if ! { "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check --upgrade pip \
      && "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check -r "$REQ"; } \
      >"$log" 2>&1; then
    cat "$log" >&2
    rm -f "$log"
    die "pip install failed"
  fi
  rm -f "$log"
  if "$VENV/bin/python" -c 'import importlib.util, sys; sys.exit(importlib.util.find_spec("torch") is None)'; then
    say "warning: torch ended up in the venv; the pipeline does not need it"
  fi
  printf '%s\n' "$want" > "$MARKER"
fi

if [ "${1:-}" = --print-python ]; then
  printf '%s\n' "$VENV/bin/python"
fi
