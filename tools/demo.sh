#!/usr/bin/env bash
# Install the library and run its demo: a FastHTML app on http://127.0.0.1:5001/ that
# archives a real folder (default: the Python standard library) with a plugin worker.
#
# Usage: tools/demo.sh [DEMO_OPTIONS...]    (see: tools/demo.sh --help)
# Installs, when missing: a Python 3.12 virtual environment in .venv with the package,
# and the pinned front-end files in .cache/assets (npm), which the page loads from the
# app itself, so the demo also works on a machine without internet. Ctrl-C stops it.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

venv=.venv
if [ ! -x "$venv/bin/python" ]; then
    python=""
    for candidate in "${PYENV_ROOT:-$HOME/.pyenv}"/versions/3.12*/bin/python3.12 "$(command -v python3.12 || true)"; do
        if [ -x "$candidate" ]; then python="$candidate"; fi
    done
    [ -n "$python" ] || { echo "tools/demo.sh: Python 3.12 not found; install it (pyenv install 3.12) and rerun." >&2; exit 1; }
    "$python" -m venv "$venv"
fi
"$venv/bin/python" -m pip install --quiet --upgrade pip
"$venv/bin/python" -m pip install --quiet -e .
command -v npm >/dev/null || { echo "tools/demo.sh: npm not found; install Node.js and npm, then rerun." >&2; exit 1; }
"$venv/bin/python" tools/assets.py
exec "$venv/bin/python" -m cjm_fasthtml_job_monitor.demo --assets .cache/assets "$@"
